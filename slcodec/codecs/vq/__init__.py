"""``vq``: a learned vector-quantized autoencoder for soft labels, with a guaranteed argmax.

Streams (marginal part, one row per label)
------------------------------------------
* ``codes`` ``[n, M]`` (``uint8`` when K <= 256, else ``uint16``): for each of the M latent
  vectors of the encoder, the index of its nearest entry in its own codebook of K entries
  (product quantization: the encoder output is split into M vectors of ``code_dim``).
* ``top1`` ``[n, 1]`` (``uint16``; ``uint32`` when C + 16 > 65536): the teacher's top-1 class
  ``c = argmax(label)`` (first maximum on ties), coded relative to the decoded logits ``z``:
  ``v = rank of c in z`` (0 = the decoder already puts c first) when that rank is < 16 and
  robust - no other decoded logit within ``2e-4 * (1 + |z_c|)`` of ``z_c``, so float noise of
  another device cannot change it - else ``v = 16 + c`` (escape).  Mostly zeros, so the
  container's zstd coding makes it cost ~1 bit per label instead of the ~6 bits of a plain
  class stream on real crops.  Decoding must therefore run in float32 (no AMP).

Parameters (fixed part, ``param_dtype``)
-----------------------------------------
``codebooks [M, K, d]`` and a small decoder: ``h = GELU(concat_m codebook_m[i_m] @ w_in + b_in)``,
``decoder_layers`` residual blocks ``h += GELU(h @ w_h{i} + b_h{i})``, ``logits = h @ w_out + b_out``.
Only what decoding needs is stored; the encoder lives in memory after :meth:`fit`
(encode new batches with the object that was fitted).  ``param_dtype``: ``float16``, ``float32``,
or ``int8`` (format 1.5, :mod:`.quant`): the codebooks and weight matrices as int8 with one float32
scale per output channel, biases float16 - about half the bytes of float16.  The default ``auto``
quantises after the fit and keeps int8 when the fit sample's mean KL at T = 1 and T = 4 with it
is within 2% of float16's, else float16; either way the top1 stream is computed with the decoder
the file stores.

Decoded logits keep the argmax (100% top-1 agreement by construction): where the decoder's own
first maximum is not c (rank > 0 or escape symbols), ``top1_rule="lift"`` (the default, and the
rule of files written before the option existed) sets ``logit[c] = max(logits) + margin``;
``top1_rule="swap"`` instead exchanges ``logit[c]`` with the decoder's maximum (keeping the
decoder's confidence, now on c) and then lifts ``logit[c]`` to at least the largest other
logit + ``margin``.  On real ImageNet labels swap was slightly worse on both bits and KL (BENCHMARKS.md, section 1),
so lift stays the default;
where it is (symbol 0), c already leads every other logit by at least ``2e-4 * (1 + |z_c|)``.
Training applies the same rule with the true classes, so the network learns what decoding does.

Decoding speed: when every combination of codes fits in a logits table of at most
``DECODE_TABLE_MAX_BYTES`` (K ** M * C * 4 bytes; e.g. the one-codebook configs that suit small
files: bits=8 at C=1000 is 64 rows, 256 KB) and building it costs at most
``DECODE_TABLE_MAX_MACS``, the decoder runs once per combination when a reader first decodes
(per process), and each label is then a row gather plus - on the rows whose ``top1`` symbol is
not 0 - a lookup of that row's precomputed ranking (int32, min(16, C) per row; on the CPU).
Larger code spaces run the network per batch (a [batch, hidden] x [hidden, C] GEMM).

Image prior (``image_bias``, format 1.2)
---------------------------------------
Views of one image share most of their label (most of the logit variance is between images
on the benchmark sets).  With ``image_bias="on"`` the file stores each image's
mean log-probabilities ``image_bias [images, C]`` (param_dtype); the encoder sees a label minus
its image's row and the decoder's logits get that row added back, so the codes only describe
the view.  The table costs ``16 * C / A`` bits per label (A views per image): ``auto`` (the
default) turns it on for ``[images, A, C]`` sets where that is <= 1 bit (C = 10, A = 300:
0.53 bits), off otherwise and for flat ``[N, C]`` sets.  It needs every image's mean over *all*
its labels before fitting: :func:`slcodec.encode` makes one extra pass over the input for it;
a :class:`slcodec.Writer` user calls ``set_image_means`` (``slcodec.pipeline.statistics.image_mean_log_probs``).
Encoding and decoding need the labels' global indices (``Context.rows``; Writer and Reader pass them).

``image_bias="sparse"`` (format 1.7) stores the prior in a few bits per label for any C: per image
its ``image_bias_k`` (default 64) most likely classes (uint16 ids, uint8 companded levels below the
image's top) and, for every other class, a set-wide FP16 profile plus one FP16 offset per image
(:mod:`.prior`).  It is quantised at fit time from the same per-image means, and the fit, the encoder
and a reader all add the dequantised rows, so the top1 stream is exact.  ``auto`` picks it where the
exact table costs more than 1 bit per label, ``image_bias_k <= C / 4`` and it costs at most 8 bits per
label (C = 1000, 300 views: 5.2 bits, against 53 for the exact table; BENCHMARKS.md section 14).

Rate control
------------
``bits`` (B) is the *nominal marginal bits per label*: ``B = M * log2(K) + ARGMAX_BITS``, where
``ARGMAX_BITS = 2`` is the budget reserved for the zstd-coded ``top1`` stream.  From B the codec
picks ``M = max(1, round((B - 2) / 8))`` and ``K = round(2 ** ((B - 2) / M))`` (so K <= 256
and ``uint8`` codes whenever ``B - 2 <= 8 M``).  ``codes`` (M) and ``codebook_size`` (K)
override either choice.  Default B = 48: M = 6, K = 203 (45.99 raw index bits).  The measured
file cost is the zstd-coded size of both streams (see ``benchmarks/vq_eval.py``).

Loss and temperatures
---------------------
Fitting minimises ``sum_T T^2 * KL(softmax(x / T) || softmax(decoded / T))`` over the
``temperature`` list (default ``[1, 4]``).  The T^2 factor is the usual distillation
scaling; it also equalises the default targets (0.08 at T=1 vs 0.005 * 16 at T=4).

Fitting on large sets
---------------------
``fit`` uses at most ``min(fit_sample, max(1024, 2**29 // C))`` labels (``fit_sample`` defaults
to 100,000; the second bound keeps the sample <= 2 GiB of float32 for large C): when given more,
it takes the rows ``sorted(randperm(n, generator=seed + 1)[:rows])``.  Training: ``warmup`` of the
plain autoencoder, k-means initialisation of each codebook on encoder outputs, VQ training
with straight-through gradients, EMA codebook updates and dead-code restarts (codes whose
EMA usage falls below 1/(20K) are re-seeded from encoder outputs of the batch), then a
``finetune`` phase with the indices frozen that refits decoder and stored codebook vectors
(the encoder keeps the pre-finetune copy of the codebooks for its nearest-entry search).
All randomness comes from a ``torch.Generator`` seeded with ``ctx.seed``; no global RNG.

Large vocabularies: ``encoder_input="topk"`` (the default ``auto`` picks it when
C > 4096) feeds the encoder an embedding-bag of the ``topk_input`` best classes weighted by
their log-probability above the k-th, plus their sorted values, so no dense C x hidden
matrix is multiplied per label.  The decoder's output layer is inherently ``hidden x C``.
Such sets are dominated by O(C) passes per label (the top-k, the output GEMM, the top-1 check); encode/decode
batches are capped at 64 MiB of float32 logits.
"""
# The package is split by concern: config (constants, rate control), top1 (the argmax guarantee),
# networks (encoder, decoder, logit bound), table (inference decoder), prior (image prior),
# fit (training), codec (the registered Codec).
from .codec import VQCodec  # noqa: F401,E402  (registers 'vq')
from .config import  (ARGMAX_BITS, DECODE_TABLE_MAX_BYTES, TOP1_EPS, TOP1_RANKS, nominal_bits,  # noqa: F401
                     rate_for_bits)
from .networks import  logit_bound  # noqa: F401
from .table import  _FastDecoder  # noqa: F401
from .top1 import  _apply_top1_lift_cpu, _class_at_rank, apply_top1, lift_reference, top1_symbols, train_top1  # noqa: F401
