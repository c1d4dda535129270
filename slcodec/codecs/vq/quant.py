"""vq's int8 parameters (format 1.5): the decoder's weight matrices and the codebooks stored as int8
with one float32 scale per output channel; biases (and an image_bias table) stay float16.

Torch-free: a reader checks and dequantises the stored arrays with numpy alone.  Dequantising is
one float32 multiplication per value (``float32(q) * scale``), so every reader gets the same
float32 weights bit for bit, and the encoder - which computes the ``top1`` stream from exactly
these weights - keeps the argmax guarantee.
"""
from __future__ import annotations

import numpy as np

#: suffix of the scale array of a quantised parameter (``w_out`` -> ``w_out_scale``)
SCALE_SUFFIX = "_scale"
INT8_MAX = 127            # symmetric: the writer uses -127 .. 127 (a reader accepts any int8)
#: clip ratios tried per output channel (fraction of its max |w|); the one with the least squared
#: error is kept.  1.0 alone is plain round-to-nearest on max-abs.
CLIP_RATIOS = tuple(np.round(np.linspace(1.0, 0.5, 26), 4))
SCALE_DTYPE = np.dtype(np.float32)
SMALL_DTYPE = np.dtype(np.float16)   # biases (and image_bias) of an int8 file


#: stored param_dtype values (a file never stores "auto": the fit resolves it)
PARAM_DTYPES = ("auto", "float16", "float32", "int8")
#: param_dtype="auto": int8 when its mean KL at each of these temperatures, on at most
#: INT8_CHECK_ROWS rows of the fit sample, is at most INT8_MAX_KL_RATIO x float16's
INT8_CHECK_TEMPERATURES = (1.0, 4.0)
INT8_CHECK_ROWS = 20000
INT8_MAX_KL_RATIO = 1.02


def is_quantised(name: str) -> bool:
    """The parameters stored as int8: every weight matrix and the codebooks (biases are not)."""
    return not name.endswith(SCALE_SUFFIX) and (name == "codebooks" or name.startswith("w_"))


def scale_shape(name: str, shape: tuple) -> tuple:
    """Output channels of a parameter: the columns of ``w [in, out]``; for ``codebooks [M, K, d]``
    each codebook's d coordinates (``[M, d]``: the inputs of ``w_in`` its entries feed)."""
    if name == "codebooks":
        return (shape[0], shape[2])
    return (shape[-1],)


def with_scales(shapes: dict) -> dict:
    """The float layout ``shapes`` (name -> shape of the decoder's tensors) with the
    ``<name>_scale`` array of each int8 parameter added: the names and shapes of an int8 file."""
    out = {}
    for name, shp in shapes.items():
        out[name] = tuple(shp)
        if is_quantised(name):
            out[name + SCALE_SUFFIX] = scale_shape(name, shp)
    return out


def table_dtype(param_dtype: str) -> np.dtype:
    """dtype of the float arrays that are not weights (biases, an image prior): float32 in float32
    files, float16 in the others."""
    return np.dtype(np.float32) if param_dtype == "float32" else SMALL_DTYPE


def stored_dtype(name: str, param_dtype: str) -> np.dtype:
    """The dtype parameter ``name`` has in a file of ``param_dtype`` (FORMAT.md, section vq)."""
    if param_dtype != "int8":
        return np.dtype(param_dtype)
    if name.endswith(SCALE_SUFFIX):
        return SCALE_DTYPE
    return np.dtype(np.int8) if is_quantised(name) else SMALL_DTYPE


def _channels_last(name: str, a: np.ndarray) -> np.ndarray:
    """``a`` viewed as [rows, channels] (codebooks [M, K, d] -> [K, M * d])."""
    if name == "codebooks":
        return a.transpose(1, 0, 2).reshape(a.shape[1], -1)
    return a.reshape(-1, a.shape[-1])


def _from_channels_last(name: str, a: np.ndarray, shape: tuple) -> np.ndarray:
    if name == "codebooks":
        M, K, d = shape
        return np.ascontiguousarray(a.reshape(K, M, d).transpose(1, 0, 2))
    return a.reshape(shape)


def _quantise_matrix(w: np.ndarray, clip: bool):
    """w [rows, channels] float32 -> (q int8, scale float32 [channels]): per channel the scale
    ``ratio * max|w| / 127`` whose round-to-nearest codes give the least squared error over the
    ratios of CLIP_RATIOS (only 1.0 without ``clip``).  All-zero channels get scale 1 (codes 0)."""
    w = np.asarray(w, dtype=np.float32)
    amax = np.abs(w).max(axis=0) if w.shape[0] else np.zeros(w.shape[1], np.float32)
    best_s = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    if clip and w.shape[0]:
        best_err = np.full(w.shape[1], np.inf)
        step = max(1, (1 << 22) // max(1, w.shape[0]))          # channels per block: ~16 MiB of float32
        for j in range(0, w.shape[1], step):
            wb, ab = w[:, j:j + step], amax[j:j + step]
            for r in CLIP_RATIOS:
                s = np.where(ab > 0, np.float32(r) * ab / INT8_MAX, 1.0).astype(np.float32)
                q = np.clip(np.rint(wb / s), -INT8_MAX, INT8_MAX)
                err = ((q * s - wb) ** 2).sum(axis=0, dtype=np.float64)
                better = err < best_err[j:j + step]
                best_err[j:j + step][better] = err[better]
                best_s[j:j + step][better] = s[better]
    q = np.clip(np.rint(w / best_s), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, best_s


def quantise(params: dict, clip: bool = True) -> dict:
    """Float decoder parameters (name -> array) -> the stored arrays of an int8 file: each weight
    matrix and the codebooks as int8 + ``<name>_scale`` (float32), every other array float16."""
    out = {}
    for name, a in params.items():
        a = np.asarray(a, dtype=np.float32)
        if not is_quantised(name):
            out[name] = a.astype(SMALL_DTYPE)
            continue
        q, s = _quantise_matrix(_channels_last(name, a), clip)
        out[name] = _from_channels_last(name, q, a.shape)
        out[name + SCALE_SUFFIX] = s.reshape(scale_shape(name, a.shape)).astype(SCALE_DTYPE)
    return out


def dequantise(stored: dict) -> dict:
    """The stored arrays of a file (int8 or not) -> the float32 parameters decoding uses:
    ``float32(q) * scale`` per output channel for an int8 parameter, a plain cast otherwise."""
    out = {}
    # a hostile (finite) scale can overflow the product to inf: that is the logit bound's to
    # reject with its rule, so numpy's overflow warning would only be noise on stderr
    with np.errstate(over="ignore", invalid="ignore"):
        for name, a in stored.items():
            if name.endswith(SCALE_SUFFIX) and name[:-len(SCALE_SUFFIX)] in stored:
                continue
            s = stored.get(name + SCALE_SUFFIX)
            if s is None:
                out[name] = a.astype(np.float32)
            elif name == "codebooks":
                out[name] = a.astype(np.float32) * s.astype(np.float32)[:, None, :]
            else:
                out[name] = a.astype(np.float32) * s.astype(np.float32)
    return out
