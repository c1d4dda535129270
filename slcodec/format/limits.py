"""Resource caps of the format, in one place (no torch, no numpy: the container layer imports it).

NOTE to every module that bounds what a file may ask for: import the number from here
(``from .limits import MAX_CLASSES``) instead of restating it, and keep FORMAT.md's table of
caps in step (tests/test_codec_configs.py checks the codec ones against FORMAT.md).

A cap is a rule of the format where a file can exceed it (a reader MUST reject such a file);
the per-call decode cap bounds a request, not a file (a caller asks for fewer labels at a time).
"""

#: labels.classes: above any real vocabulary (the largest language-model vocabularies are ~2**18
#: tokens); one float32 label is 4 MiB at the cap, so a 16-row chunk of float32 labels fits the
#: container's 64 MiB chunk cap.  (slcodec.format.schema's header rule uses the same number.)
MAX_CLASSES = 1 << 20

#: bytes of the float32 ``[n, C]`` result of one decode call (``Codec.decode``, ``Reader.decode``):
#: a larger request is refused (ConfigError), it is not a damaged file
MAX_DECODE_BYTES = 1 << 32

#: codecs compute their ``[rows, C]`` float32 temporaries in row blocks of at most this many
#: bytes, so a decode call needs its result plus a bounded working set
DECODE_BLOCK_BYTES = 64 << 20

# ---- the vq codec's decoder (FORMAT.md, section vq): what a file may make a reader build
#: float32 bytes of the first-layer table a vq reader builds (``M * K * hidden * 4``)
VQ_MAX_CODE_TABLE_BYTES = 1 << 30
#: largest |logit| the decoder's weights may allow (FORMAT.md gives the bound a reader computes);
#: far inside float32 (3.4e38), so neither the decoder nor a softmax after it overflows
VQ_MAX_LOGIT_BOUND = 1e30
