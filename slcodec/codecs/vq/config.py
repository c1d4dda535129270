"""vq's constants, bounds and rate control (bits -> M codes of K entries); torch-free."""
from __future__ import annotations

import math

from ...errors import ConfigError

ARGMAX_BITS = 2.0          # nominal budget of the top1 stream inside `bits`
LOG_CLAMP = 1e-30          # probs sources: log(max(p, LOG_CLAMP))
DENSE_MAX_CLASSES = 4096   # encoder_input="auto": dense first layer up to this many classes
FIT_MAX_ELEMENTS = 1 << 29 # fit sample capped at this many values (2 GiB float32): 10,737 rows at C=50k
DEFAULT_HIDDEN = 256        # decoder width when C >= SMALL_C
SMALL_C, SMALL_C_HIDDEN = 256, 64
TOP1_RANKS = 16            # top1 stream: values < 16 are ranks in the decoded logits, else 16 + class
TOP1_EPS = 2e-4            # a rank is used only when no other decoded logit is within eps*(1+|z_c|)
TOP1_HINGE = 0.05          # rank_weight: margin (nats) the hinge asks of the true class
IMAGE_BIAS_MAX_BITS = 1.0  # image_bias="auto": on when the [images, C] table costs <= this per label
SPARSE_PRIOR_DEPTH = 64.0  # image_bias="sparse": nats below an image's top class its uint8 levels span
SPARSE_PRIOR_LIMIT = 1e4   # ... and |profile|, |offset| (log-probabilities below -1e4 are zero in any float)
# image_bias="auto": sparse when its params cost <= this per label.  On the 1,000-class corpus
# (BENCHMARKS.md section 14, "cheap image priors") 5.2 bits of k = 64 cut KL at T = 1 by 25-42% where
# 48 more bits of codes cut nothing; 8 bits is a sixth of the default rate.
SPARSE_PRIOR_MAX_BITS = 8.0
DECODE_TABLE_MAX_BYTES = 64 << 20  # decode by a logits table of all K**M code combinations up to this size
DECODE_TABLE_MAX_MACS = 1 << 33    # ... and when building it (K**M rows through the decoder) costs at most this
# config bounds (FORMAT.md, section vq)
MAX_CODES, MAX_CODEBOOK = 4096, 65536   # M and K; K = 65536 keeps uint16 codes
MAX_HIDDEN = 16384
MAX_DECODER_LAYERS = 8     # the logit bound grows ~10x per trained layer (H = 256): 8 stay far inside it
MAX_MARGIN = 100.0         # nats: beyond ~100 the other classes' probabilities are already 0 in float32


def _opt_int(s):
    return None if s in (None, "", "auto", "none", "None") else int(s)


def _bool(s):
    if isinstance(s, bool):
        return s
    return str(s).lower() in ("1", "true", "yes", "on")


def rate_for_bits(bits: float, codes=None, codebook_size=None) -> tuple[int, int]:
    """(M, K) for a nominal target of ``bits`` marginal bits per label (see module docstring)."""
    bits = float(bits)
    if not math.isfinite(bits):
        raise ConfigError(f"vq: bits must be a finite number, got {bits!r}")
    idx_bits = max(1.0, bits - ARGMAX_BITS)
    # 2 ** (bits per code) beyond 17 is past the largest K anyway: capped before the power
    # so that no bits value overflows
    if codes is None and codebook_size is None:
        m = max(1, round(idx_bits / 8.0))
        k = round(2.0 ** min(idx_bits / m, 17.0))
    elif codes is None:
        m = max(1, round(idx_bits / math.log2(codebook_size)))
        k = codebook_size
    elif codebook_size is None:
        m = codes
        k = round(2.0 ** min(idx_bits / m, 17.0))
    else:
        m, k = codes, codebook_size
    return int(m), int(min(max(k, 2), MAX_CODEBOOK))


def nominal_bits(m: int, k: int) -> float:
    return m * math.log2(k) + ARGMAX_BITS
