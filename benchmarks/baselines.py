#!/usr/bin/env python3
"""Baseline label-storage methods for the slcodec benchmarks, with exact byte counts.

Every method is a function ``method(logits, **params) -> (nbytes_total, decoded)``:

* ``logits``: float32 ``[N, C]`` teacher logits (or log-probabilities: only the softmax of a
  row matters, so both are accepted);
* ``nbytes_total``: the length of a real serialised blob that the method writes (a 16-byte
  header + every array it needs: codebooks, scales, index tables, compressed payloads);
* ``decoded``: float32 ``[N, C]`` logits or log-probabilities decoded *from that blob*
  (``softmax(decoded / T)`` is the label a student would use at temperature T).

Each method encodes to ``bytes`` and decodes from those bytes only, so the count cannot miss
anything the decoder needs. Methods that fit a codebook take ``fit=`` (the rows to fit on;
default: the rows being encoded) and store the codebook in every blob they write; pass
``info={}`` to any method to get the split into ``fixed`` bytes (header, codebooks, scales
stored once) and ``per_label`` bytes.

Methods (``METHODS``):

``fp32``, ``fp16``
    raw little-endian values.
``zstd_fp16(level)``
    zstd (python-zstandard) of the FP16 array, levels 3 and 19.
``shuffle_zstd_fp16(level)``
    byte-shuffle (all low bytes, then all high bytes, blosc SHUFFLE with typesize 2 over
    the whole array) then zstd.
``fkd_topk(k, zstd_level)``
    FKD: the k most probable class ids (uint16) and their probabilities (FP16, softmax at
    T=1); decoding spreads ``max(0, 1 - sum)`` evenly over the other C - k classes.
    ``zstd_level=None`` gives the uncompressed size; FKD itself pickles float tensors, which
    is larger still.
``lpqld_topk(k, zstd_level, refill)``
    LPQLD: the k largest logits (FP16) and their class ids (int16), zstd; the other classes
    get the row minimum. ``refill="stored_min"`` (default, nothing else stored) uses the
    smallest stored logit; ``refill="row_min"`` also stores each row's true minimum (FP16).
``uint8_probs(scale, zstd_level)``
    probabilities at T=1 quantised to 256 levels, ``scale="row"`` (each row's max stored as
    FP16) or ``"global"`` (one float32); zero codes share the left-over mass evenly, as FKD's
    top-k does (so that no class gets probability 0).
``uint8_logprobs(scale, zstd_level)``
    log-probabilities (T=1) quantised linearly between a minimum and a maximum, per row (two
    FP16 per row) or global (two float32), + zstd.
``kmeans_vq(K, iters, seed, fit)``
    one codebook of K log-probability vectors (Lloyd's algorithm in torch, k-means++ seeding
    from ``np.random.default_rng(seed)``, Euclidean on log-probs), stored as FP16; the index
    of the nearest entry per label, uint8/uint16, zstd level 19.
``pq(M, K, iters, seed, fit, backend)``
    product quantisation of the log-probabilities: C padded with zeros to a multiple of M,
    M subspaces with K=256 centroids each (faiss ``ProductQuantizer`` when ``faiss`` is
    importable, else our own per-subspace k-means in torch); codebooks stored as FP16, codes
    uint8 [N, M] + zstd level 19.

``metrics(p_logits, q_logits, temps=(1, 4, 20))`` gives mean KL(p||q) (nats) at each T with
p, q = softmax(x / T), top-1 agreement and top-5 overlap.

``python benchmarks/baselines.py`` runs every method at a couple of settings on
``benchmarks/.cache/lite0_40x300.npy`` (EfficientNet-Lite0, 40 images x 300 views x 1000
classes), fitting VQ/PQ on the first 30 images and reporting on the fitted part and on the
held-out last 10 images.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zstandard

HEADER = struct.Struct("<4sIIf")  # method tag, rows N, classes C, one float parameter
CACHE = Path(__file__).resolve().parent / ".cache"


# --------------------------------------------------------------------------- helpers
def _header(tag: bytes, n: int, c: int, param: float = 0.0) -> bytes:
    return HEADER.pack(tag, n, c, param)


def _read_header(blob: bytes, tag: bytes):
    t, n, c, param = HEADER.unpack_from(blob, 0)
    if t != tag:
        raise ValueError(f"blob is {t!r}, expected {tag!r}")
    return n, c, param, HEADER.size


def _zc(data: bytes, level) -> bytes:
    return data if level is None else zstandard.ZstdCompressor(level=int(level)).compress(data)


def _zd(data: bytes, level) -> bytes:
    return data if level is None else zstandard.ZstdDecompressor().decompress(data)


def _frames(*parts: bytes) -> bytes:
    """Length-prefixed parts (uint32 each): a real, parseable layout."""
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


def _unframes(blob: bytes, offset: int, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        (ln,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        out.append(blob[offset:offset + ln])
        offset += ln
    return out


def _arr(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected [N, C], got shape {x.shape}")
    x = np.ascontiguousarray(x)
    return x if x.flags.writeable else x.copy()


def log_softmax(x: np.ndarray) -> np.ndarray:
    return torch.log_softmax(torch.from_numpy(np.asarray(x, np.float32)), dim=1).numpy()


def softmax(x: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.asarray(x, np.float32)), dim=1).numpy()


def _id_dtype(c: int):
    return np.dtype("<u2") if c <= 65536 else np.dtype("<u4")


def _index_dtype(k: int):
    return np.dtype("u1") if k <= 256 else np.dtype("<u2") if k <= 65536 else np.dtype("<u4")


def _fill(info, fixed: int, total: int, n: int):
    if info is not None:
        info.update({"fixed_bytes": int(fixed), "per_label_bytes": int(total - fixed), "labels": int(n),
                     "total_bytes": int(total)})


def _spread_log(probs: np.ndarray, known: np.ndarray) -> np.ndarray:
    """log of probs where ``known``; the left-over mass spread evenly over the other classes."""
    p = probs.astype(np.float64)
    p = np.where(known, p, 0.0)
    n_rest = (~known).sum(1, keepdims=True)
    rest = np.clip(1.0 - p.sum(1, keepdims=True), 0.0, None) / np.maximum(n_rest, 1)
    out = np.where(known, p, rest)
    return np.log(np.maximum(out, 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------- raw
def fp32(logits, info=None):
    x = _arr(logits)
    blob = _header(b"FP32", *x.shape) + x.astype("<f4").tobytes()
    n, c, _, off = _read_header(blob, b"FP32")
    out = np.frombuffer(blob, "<f4", n * c, off).reshape(n, c).copy()
    _fill(info, HEADER.size, len(blob), n)
    return len(blob), out


def fp16(logits, info=None):
    x = _arr(logits)
    blob = _header(b"FP16", *x.shape) + x.astype("<f2").tobytes()
    n, c, _, off = _read_header(blob, b"FP16")
    out = np.frombuffer(blob, "<f2", n * c, off).reshape(n, c).astype(np.float32)
    _fill(info, HEADER.size, len(blob), n)
    return len(blob), out


def zstd_fp16(logits, level=19, info=None):
    x = _arr(logits)
    blob = _header(b"ZF16", *x.shape, level) + _zc(x.astype("<f2").tobytes(), level)
    n, c, lv, off = _read_header(blob, b"ZF16")
    out = np.frombuffer(_zd(blob[off:], lv), "<f2").reshape(n, c).astype(np.float32)
    _fill(info, HEADER.size, len(blob), n)
    return len(blob), out


def shuffle_zstd_fp16(logits, level=19, info=None):
    x = _arr(logits)
    raw = np.frombuffer(x.astype("<f2").tobytes(), np.uint8).reshape(-1, 2)
    blob = _header(b"SZ16", *x.shape, level) + _zc(np.ascontiguousarray(raw.T).tobytes(), level)
    n, c, lv, off = _read_header(blob, b"SZ16")
    planes = np.frombuffer(_zd(blob[off:], lv), np.uint8).reshape(2, -1)
    out = np.ascontiguousarray(planes.T).view("<f2").reshape(n, c).astype(np.float32)
    _fill(info, HEADER.size, len(blob), n)
    return len(blob), out


# --------------------------------------------------------------------------- top-k
def _topk(values: np.ndarray, k: int):
    """Top-k (descending, ties: lower class id) of float32 rows."""
    v, i = torch.sort(torch.from_numpy(values), dim=1, descending=True, stable=True)
    return v[:, :k].numpy(), i[:, :k].numpy()


def fkd_topk(logits, k=5, zstd_level=19, info=None):
    x = _arr(logits)
    n, c = x.shape
    vals, ids = _topk(softmax(x), k)
    idt = _id_dtype(c)
    payload = ids.astype(idt).tobytes() + vals.astype("<f2").tobytes()
    blob = _header(b"FKDK", n, c, -1 if zstd_level is None else zstd_level) + struct.pack("<I", k) + \
        _zc(payload, zstd_level)
    # decode
    n, c, lv, off = _read_header(blob, b"FKDK")
    (k,) = struct.unpack_from("<I", blob, off)
    data = _zd(blob[off + 4:], None if lv < 0 else lv)
    ids = np.frombuffer(data, idt, n * k).reshape(n, k).astype(np.int64)
    vals = np.frombuffer(data, "<f2", n * k, n * k * idt.itemsize).reshape(n, k).astype(np.float32)
    probs = np.zeros((n, c), np.float32)
    known = np.zeros((n, c), bool)
    np.put_along_axis(probs, ids, vals, 1)
    np.put_along_axis(known, ids, True, 1)
    _fill(info, HEADER.size + 4, len(blob), n)
    return len(blob), _spread_log(probs, known)


def lpqld_topk(logits, k=10, zstd_level=19, refill="stored_min", info=None):
    x = _arr(logits)
    n, c = x.shape
    if refill not in ("stored_min", "row_min"):
        raise ValueError("refill must be 'stored_min' or 'row_min'")
    vals, ids = _topk(x, k)
    parts = ids.astype("<i2" if c <= 32768 else "<i4").tobytes() + vals.astype("<f2").tobytes()
    if refill == "row_min":
        parts += x.min(1).astype("<f2").tobytes()
    blob = _header(b"LPQK", n, c, zstd_level) + struct.pack("<IB", k, refill == "row_min") + _zc(parts, zstd_level)
    n, c, lv, off = _read_header(blob, b"LPQK")
    k, has_min = struct.unpack_from("<IB", blob, off)
    data = _zd(blob[off + 5:], lv)
    idt = np.dtype("<i2" if c <= 32768 else "<i4")
    ids = np.frombuffer(data, idt, n * k).reshape(n, k).astype(np.int64)
    vals = np.frombuffer(data, "<f2", n * k, n * k * idt.itemsize).reshape(n, k).astype(np.float32)
    if has_min:
        fill = np.frombuffer(data, "<f2", n, n * k * (idt.itemsize + 2)).astype(np.float32)
    else:
        fill = vals.min(1)
    out = np.repeat(fill[:, None], c, axis=1)
    np.put_along_axis(out, ids, vals, 1)
    _fill(info, HEADER.size + 5, len(blob), n)
    return len(blob), out


# --------------------------------------------------------------------------- scalar quantisation
def uint8_probs(logits, scale="row", zstd_level=19, info=None):
    x = _arr(logits)
    n, c = x.shape
    p = softmax(x)
    if scale == "row":
        s = p.max(1).astype("<f2")
        sf = s.astype(np.float32)[:, None]
        scales = s.tobytes()
    elif scale == "global":
        sf = np.float32(p.max())
        scales = struct.pack("<f", float(sf))
    else:
        raise ValueError("scale must be 'row' or 'global'")
    q = np.clip(np.rint(p / sf * 255.0), 0, 255).astype(np.uint8)
    blob = _header(b"U8PR", n, c, zstd_level) + struct.pack("<B", scale == "row") + \
        _frames(scales, _zc(q.tobytes(), zstd_level))
    n, c, lv, off = _read_header(blob, b"U8PR")
    (per_row,) = struct.unpack_from("<B", blob, off)
    sc, qb = _unframes(blob, off + 1, 2)
    q = np.frombuffer(_zd(qb, lv), np.uint8).reshape(n, c)
    s = np.frombuffer(sc, "<f2").astype(np.float32)[:, None] if per_row else np.frombuffer(sc, "<f4")[0]
    probs = q.astype(np.float32) * (s / 255.0)
    fixed = HEADER.size + 1 + 8 + (0 if per_row else 4)
    _fill(info, fixed, len(blob), n)
    return len(blob), _spread_log(probs, q > 0)


def uint8_logprobs(logits, scale="row", zstd_level=19, info=None):
    x = _arr(logits)
    n, c = x.shape
    lp = log_softmax(x)
    if scale == "row":
        lo, hi = lp.min(1).astype("<f2"), lp.max(1).astype("<f2")
        lof, hif = lo.astype(np.float32)[:, None], hi.astype(np.float32)[:, None]
        ranges = lo.tobytes() + hi.tobytes()
    elif scale == "global":
        lof, hif = np.float32(lp.min()), np.float32(lp.max())
        ranges = struct.pack("<ff", float(lof), float(hif))
    else:
        raise ValueError("scale must be 'row' or 'global'")
    width = np.maximum(hif - lof, 1e-6)
    q = np.clip(np.rint((lp - lof) / width * 255.0), 0, 255).astype(np.uint8)
    blob = _header(b"U8LP", n, c, zstd_level) + struct.pack("<B", scale == "row") + \
        _frames(ranges, _zc(q.tobytes(), zstd_level))
    n, c, lv, off = _read_header(blob, b"U8LP")
    (per_row,) = struct.unpack_from("<B", blob, off)
    rb, qb = _unframes(blob, off + 1, 2)
    q = np.frombuffer(_zd(qb, lv), np.uint8).reshape(n, c).astype(np.float32)
    if per_row:
        r = np.frombuffer(rb, "<f2").astype(np.float32)
        lo, hi = r[:n, None], r[n:, None]
    else:
        lo, hi = (np.float32(v) for v in struct.unpack("<ff", rb))
    out = lo + q / 255.0 * np.maximum(hi - lo, 1e-6)
    fixed = HEADER.size + 1 + 8 + (0 if per_row else 8)
    _fill(info, fixed, len(blob), n)
    return len(blob), out.astype(np.float32)


# --------------------------------------------------------------------------- k-means / VQ / PQ
def _kmeans(data: torch.Tensor, k: int, iters: int, seed: int) -> torch.Tensor:
    """Lloyd's algorithm with k-means++ seeding; float32 [k, d] centroids."""
    n, d = data.shape
    rng = np.random.default_rng(seed)
    if k >= n:  # every distinct row its own centroid (padded by repeats)
        return data[np.arange(k) % n].clone()
    sq = (data * data).sum(1)
    first = int(rng.integers(n))
    cent = [data[first]]
    dmin = (sq - 2 * data @ data[first] + sq[first]).clamp_min(0)
    # k-means++ in chunks of candidates: pick proportional to squared distance
    for _ in range(1, k):
        w = dmin.double().numpy()
        tot = w.sum()
        j = int(rng.integers(n)) if not tot > 0 else int(np.searchsorted(np.cumsum(w), rng.random() * tot))
        j = min(j, n - 1)
        cent.append(data[j])
        dmin = torch.minimum(dmin, (sq - 2 * data @ data[j] + sq[j]).clamp_min(0))
    cent = torch.stack(cent)
    for _ in range(iters):
        assign = _assign(data, cent)
        sums = torch.zeros_like(cent).index_add_(0, assign, data)
        counts = torch.bincount(assign, minlength=k).to(data.dtype)
        empty = counts == 0
        cent = torch.where(empty[:, None], cent, sums / counts.clamp_min(1)[:, None])
        if bool(empty.any()):  # re-seed empty clusters at the points farthest from their centroid
            d = ((data - cent[assign]) ** 2).sum(1)
            far = torch.argsort(d, descending=True)[: int(empty.sum())]
            cent[empty] = data[far]
    return cent


def _assign(data: torch.Tensor, cent: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    csq = (cent * cent).sum(1)
    out = torch.empty(data.shape[0], dtype=torch.int64)
    for s in range(0, data.shape[0], chunk):
        blk = data[s:s + chunk]
        out[s:s + chunk] = (csq[None, :] - 2 * blk @ cent.T).argmin(1)
    return out


def kmeans_vq(logits, K=256, iters=10, seed=0, fit=None, info=None):
    x = log_softmax(_arr(logits))
    n, c = x.shape
    f = x if fit is None else log_softmax(_arr(fit))
    book = _cached(("kmeans_vq", K, iters, seed), f, lambda: _kmeans(torch.from_numpy(f), K, iters, seed).numpy())
    book = book.astype("<f2")
    idx = _assign(torch.from_numpy(x), torch.from_numpy(book.astype(np.float32))).numpy()
    it = _index_dtype(K)
    blob = _header(b"KMVQ", n, c, 19) + struct.pack("<I", K) + _frames(book.tobytes(), _zc(idx.astype(it).tobytes(), 19))
    n, c, lv, off = _read_header(blob, b"KMVQ")
    (K,) = struct.unpack_from("<I", blob, off)
    bb, ib = _unframes(blob, off + 4, 2)
    book = np.frombuffer(bb, "<f2").reshape(K, c).astype(np.float32)
    idx = np.frombuffer(_zd(ib, lv), it).astype(np.int64)
    fixed = HEADER.size + 4 + 4 + len(bb) + 4
    _fill(info, fixed, len(blob), n)
    return len(blob), book[idx]


_FIT_CACHE: dict = {}


def _cached(key: tuple, fit: np.ndarray, train):
    """Codebooks fitted on the same rows with the same settings are fitted once per process
    (the fit and held-out parts of the benchmark share one codebook)."""
    full = key + (fit.shape, hashlib.sha1(np.ascontiguousarray(fit).view(np.uint8)).hexdigest())
    if full not in _FIT_CACHE:
        _FIT_CACHE.clear()  # keep at most one codebook alive
        _FIT_CACHE[full] = train()
    return _FIT_CACHE[full]


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
        return True
    except ImportError:
        return False


def pq(logits, M=50, K=256, iters=10, seed=0, fit=None, backend="auto", info=None):
    x = log_softmax(_arr(logits))
    n, c = x.shape
    f = x if fit is None else log_softmax(_arr(fit))
    d = -(-c // M)  # sub-dimension; C padded with zeros to M*d
    pad = M * d - c
    xp = np.pad(x, ((0, 0), (0, pad)))
    fp = np.ascontiguousarray(np.pad(f, ((0, 0), (0, pad))))
    if backend == "auto":
        backend = "faiss" if _faiss_available() else "torch"
    if K > 256:
        raise ValueError("pq: K <= 256 (uint8 codes)")
    if backend == "faiss":
        import faiss
        faiss.omp_set_num_threads(torch.get_num_threads())
        nbits = int(math.log2(K))
        if 2 ** nbits != K:
            raise ValueError("pq with faiss: K must be a power of two")
        quant = faiss.ProductQuantizer(M * d, M, nbits)
        quant.cp.niter = iters
        quant.cp.seed = seed
        quant.cp.max_points_per_centroid = max(256, fp.shape[0] // K + 1)
        quant.cp.min_points_per_centroid = 1  # small fit sets are the point of the held-out test
        quant.cp.verbose = False

        def train():
            quant.train(fp)
            return faiss.vector_to_array(quant.centroids).reshape(M, K, d)
    elif backend == "torch":
        def train():
            return np.stack([_kmeans(torch.from_numpy(np.ascontiguousarray(fp[:, m * d:(m + 1) * d])), K, iters,
                                     seed + m).numpy() for m in range(M)])
    else:
        raise ValueError("backend must be auto, faiss or torch")
    books = _cached(("pq", backend, M, K, iters, seed), fp, train)
    books16 = books.astype("<f2")
    b32 = torch.from_numpy(books16.astype(np.float32))
    codes = np.stack([_assign(torch.from_numpy(np.ascontiguousarray(xp[:, m * d:(m + 1) * d])), b32[m]).numpy()
                      for m in range(M)], axis=1).astype(np.uint8)
    blob = _header(b"PQ8B", n, c, 19) + struct.pack("<III", M, K, d) + \
        _frames(books16.tobytes(), _zc(codes.tobytes(), 19))
    n, c, lv, off = _read_header(blob, b"PQ8B")
    M, K, d = struct.unpack_from("<III", blob, off)
    bb, cb = _unframes(blob, off + 12, 2)
    books = np.frombuffer(bb, "<f2").reshape(M, K, d).astype(np.float32)
    codes = np.frombuffer(_zd(cb, lv), np.uint8).reshape(n, M).astype(np.int64)
    out = np.concatenate([books[m][codes[:, m]] for m in range(M)], axis=1)[:, :c]
    fixed = HEADER.size + 12 + 4 + len(bb) + 4
    if info is not None:
        info["backend"] = backend
    _fill(info, fixed, len(blob), n)
    return len(blob), np.ascontiguousarray(out)


METHODS = {"fp32": fp32, "fp16": fp16, "zstd_fp16": zstd_fp16, "shuffle_zstd_fp16": shuffle_zstd_fp16,
           "fkd_topk": fkd_topk, "lpqld_topk": lpqld_topk, "uint8_probs": uint8_probs,
           "uint8_logprobs": uint8_logprobs, "kmeans_vq": kmeans_vq, "pq": pq}
FITTED = ("kmeans_vq", "pq")


# --------------------------------------------------------------------------- metrics
def metrics(p_logits, q_logits, temps=(1, 4, 20), chunk: int = 16384) -> dict:
    """Mean KL(p||q) in nats at each temperature (p, q = softmax(x / T)), top-1 agreement,
    top-5 overlap (|top5(p) & top5(q)| / 5, averaged)."""
    p_all = torch.from_numpy(_arr(p_logits))
    q_all = torch.from_numpy(_arr(q_logits))
    if p_all.shape != q_all.shape:
        raise ValueError(f"shapes differ: {tuple(p_all.shape)} vs {tuple(q_all.shape)}")
    n, c = p_all.shape
    kl = {t: 0.0 for t in temps}
    top1 = top5 = 0.0
    k5 = min(5, c)
    for s in range(0, n, chunk):
        p, q = p_all[s:s + chunk].double(), q_all[s:s + chunk].double()
        for t in temps:
            lp, lq = torch.log_softmax(p / t, 1), torch.log_softmax(q / t, 1)
            kl[t] += float((lp.exp() * (lp - lq)).sum())
        top1 += float((p.argmax(1) == q.argmax(1)).sum())
        tp, tq = p.topk(k5, 1).indices, q.topk(k5, 1).indices
        top5 += float((tp[:, :, None] == tq[:, None, :]).any(2).sum()) / k5
    out = {f"kl_T{t:g}": kl[t] / n for t in temps}
    out.update({"top1": top1 / n, "top5": top5 / n})
    return out


# --------------------------------------------------------------------------- main
def settings(c: int) -> list[tuple[str, dict]]:
    """The settings run by ``__main__`` (a couple per method)."""
    return [
        ("fp32", {}), ("fp16", {}),
        ("zstd_fp16", {"level": 3}), ("zstd_fp16", {"level": 19}),
        ("shuffle_zstd_fp16", {"level": 3}), ("shuffle_zstd_fp16", {"level": 19}),
        ("fkd_topk", {"k": 5, "zstd_level": None}), ("fkd_topk", {"k": 5, "zstd_level": 19}),
        ("fkd_topk", {"k": 50, "zstd_level": None}), ("fkd_topk", {"k": 50, "zstd_level": 19}),
        ("lpqld_topk", {"k": 10, "refill": "stored_min"}), ("lpqld_topk", {"k": 10, "refill": "row_min"}),
        ("lpqld_topk", {"k": 50, "refill": "stored_min"}),
        ("uint8_probs", {"scale": "row"}), ("uint8_probs", {"scale": "global"}),
        ("uint8_logprobs", {"scale": "row"}), ("uint8_logprobs", {"scale": "global"}),
        ("kmeans_vq", {"K": 256}), ("kmeans_vq", {"K": 1024}),
        ("pq", {"M": 25}), ("pq", {"M": 100}),
    ]


def fmt_params(params: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items()) or "-"


def run_table(x: np.ndarray, fit_rows: int, temps=(1, 4, 20), only=None) -> list[dict]:
    fit_part, held = x[:fit_rows], x[fit_rows:]
    rows = []
    for name, params in settings(x.shape[1]):
        if only and name not in only:
            continue
        for part, data in (("fit", fit_part), ("held-out", held)):
            if not len(data):
                continue
            kw = dict(params)
            if name in FITTED:
                kw["fit"] = fit_part
            info = {}
            t0 = time.perf_counter()
            nbytes, dec = METHODS[name](data, info=info, **kw)
            dt = time.perf_counter() - t0
            m = metrics(data, dec, temps)
            row = {"method": name, "params": fmt_params(params), "part": part, "labels": len(data),
                   "bytes": nbytes, "bits_per_label": nbytes * 8 / len(data),
                   "fixed_bytes": info.get("fixed_bytes"), "per_label_bits": info.get("per_label_bytes", 0) * 8 / len(data),
                   "seconds": round(dt, 2), **m}
            if "backend" in info:
                row["backend"] = info["backend"]
            rows.append(row)
            print(f"  {name}({row['params']}) {part}: {row['bits_per_label']:.1f} bits/label, "
                  f"KL@T4 {m.get('kl_T4', float('nan')):.4f}, top1 {m['top1']:.4f} [{dt:.1f}s]",
                  file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict], temps=(1, 4, 20)) -> str:
    kl_cols = [f"kl_T{t:g}" for t in temps]
    head = ["method", "params", "part", "bits/label", "fixed bytes", "marginal bits", *[f"KL@T{t:g}" for t in temps],
            "top1", "top5"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r["method"], r["params"], r["part"], f"{r['bits_per_label']:.1f}", str(r["fixed_bytes"]),
                f"{r['per_label_bits']:.1f}", *[f"{r[k]:.4g}" for k in kl_cols],
                f"{100 * r['top1']:.2f}%", f"{100 * r['top5']:.2f}%"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", type=Path, default=CACHE / "lite0_40x300.npy",
                    help=".npy of [images, views, C] (or [N, C]) logits / log-probs")
    ap.add_argument("--fit-images", type=int, default=30, help="images (or rows for [N, C]) to fit VQ/PQ on")
    ap.add_argument("--temps", type=float, nargs="+", default=[1, 4, 20])
    ap.add_argument("--only", nargs="*", help="run only these methods")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    arr = np.load(args.labels, mmap_mode="r")
    if arr.ndim == 3:
        fit_rows = args.fit_images * arr.shape[1]
        x = np.asarray(arr, np.float32).reshape(-1, arr.shape[-1])
    else:
        fit_rows = args.fit_images
        x = np.asarray(arr, np.float32)
    temps = tuple(args.temps)
    print(f"{args.labels}: {tuple(arr.shape)} -> {x.shape[0]} labels x {x.shape[1]} classes; "
          f"fit part {fit_rows} labels, held-out {x.shape[0] - fit_rows}; faiss: {_faiss_available()}",
          file=sys.stderr)
    t0 = time.perf_counter()
    rows = run_table(x, fit_rows, temps, args.only)
    print(markdown(rows, temps))
    print(f"\n({time.perf_counter() - t0:.0f}s; bits/label = blob bytes * 8 / labels of that part, everything "
          "counted; fixed bytes = header + codebooks/scales stored once; marginal bits = the rest per label)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"labels_file": str(args.labels), "shape": list(arr.shape),
                                         "fit_rows": fit_rows, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
