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

Parameters (fixed part, ``param_dtype``, float16 by default)
-------------------------------------------------------------
``codebooks [M, K, d]`` and a small decoder: ``h = GELU(concat_m codebook_m[i_m] @ w_in + b_in)``,
``decoder_layers`` residual blocks ``h += GELU(h @ w_h{i} + b_h{i})``, ``logits = h @ w_out + b_out``.
Only what decoding needs is stored; the encoder lives in memory after :meth:`fit`
(encode new batches with the object that was fitted).

Decoded logits keep the argmax (100% top-1 agreement by construction): where the decoder's own
first maximum is not c (rank > 0 or escape symbols), ``top1_rule="lift"`` (the default, and the
rule of files written before the option existed) sets ``logit[c] = max(logits) + margin``;
``top1_rule="swap"`` instead exchanges ``logit[c]`` with the decoder's maximum (keeping the
decoder's confidence, now on c) and then lifts ``logit[c]`` to at least the largest other
logit + ``margin``.  Measured on the 12,000 ImageNet labels, swap was slightly worse (KL 0.0559 /
0.00445 at T=1/4 against 0.0497 / 0.00423, 45.4 against 43.2 bits), so lift stays the default;
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
Views of one image share most of their label (Fashion-MNIST IPC 10: 93% of the logit variance
is between images; ImageNet crops: 76%).  With ``image_bias="on"`` the file stores each image's
mean log-probabilities ``image_bias [images, C]`` (param_dtype); the encoder sees a label minus
its image's row and the decoder's logits get that row added back, so the codes only describe
the view.  The table costs ``16 * C / A`` bits per label (A views per image): ``auto`` (the
default) turns it on for ``[images, A, C]`` sets where that is <= 1 bit (C = 10, A = 300:
0.53 bits), off otherwise and for flat ``[N, C]`` sets.  It needs every image's mean over *all*
its labels before fitting: :func:`slcodec.encode` makes one extra pass over the input for it;
a :class:`slcodec.Writer` user calls ``set_image_means`` (``slcodec.pipeline.writer.image_mean_log_probs``).
Encoding and decoding need the labels' global indices (``Context.rows``; Writer and Reader pass them).

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
Measured on the 2 shared CPU cores with synthetic C=50,000 labels, hidden=128 (both dominated by
O(C) passes per label - topk, the output GEMM, the top-1 check): encode ~600 labels/s, decode
~2,000 labels/s, fit ~1.8 s per step at batch 256, fixed part 13 MB (float16); encode/decode
batches are capped at 64 MiB of float32 logits.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from ..lazy_torch import lazy_import, no_grad

from ..format import limits
from ..errors import ConfigError, FormatError
from .base import Codec, Context, Option, check_classes, check_decode_size, register
from .rules import Choice, Float, FloatList, Int

# imported on first use: the options, config rules and file checks need no torch
torch = lazy_import("torch", globals())
F = lazy_import("torch.nn.functional", globals(), "F")

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


def _gelu(x):
    return F.gelu(x, approximate="tanh")


def _to_logits(labels, source_kind):
    x = labels.float()
    if source_kind == "probs":
        x = torch.log(torch.clamp(x, min=LOG_CLAMP))
    elif source_kind != "logits":
        raise ConfigError(f"vq: unknown source kind {source_kind!r}")
    return x


def top1_symbols(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Symbols of the ``top1`` stream: the rank of the true class ``c`` in decoded logits ``z``
    when it is < TOP1_RANKS and robust (no other logit within TOP1_EPS*(1+|z_c|) of z_c),
    else TOP1_RANKS + c (escape)."""
    c = c.long().view(-1, 1)
    zc = z.gather(1, c)
    eps = TOP1_EPS * (1.0 + zc.abs())
    gt = (z > zc + eps).sum(1)
    ge = (z >= zc - eps).sum(1)
    ok = (ge - gt == 1) & (gt < TOP1_RANKS)
    return torch.where(ok, gt, TOP1_RANKS + c.view(-1))


def _class_at_rank(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """For each row, the class at position ``v`` (1..15) of ``z`` sorted in decreasing order.

    Rank 1 (the most common symbol after 0) is the maximum once the first maximum is removed -
    valid because the encoder writes a rank only where exactly ``v`` logits lie above the class
    (by more than TOP1_EPS), so which of tied larger logits is removed does not matter; higher
    ranks use a top-(max rank + 1) selection, ranks 2-3 apart from deeper ones."""
    out = torch.empty_like(v)
    one = v == 1
    if bool(one.any()):
        w = z[one]
        w[torch.arange(w.shape[0], device=z.device), w.argmax(dim=1)] = float("-inf")
        out[one] = w.argmax(dim=1)
    # a top-k selection costs about k: small ranks (the bulk) are selected apart from the rare deep ones
    for sel in (~one & (v <= 3), v > 3):
        if bool(sel.any()):
            vm = v[sel]
            top = torch.topk(z[sel], int(vm.max()) + 1, dim=1).indices
            out[sel] = top.gather(1, vm.view(-1, 1)).view(-1)
    return out


def _apply_top1_lift_cpu(z: torch.Tensor, v: torch.Tensor, margin: float) -> None:
    """:func:`apply_top1` with rule ``lift`` on a CPU tensor, in numpy (in place, same result):
    a batch has few rows to fix, and on those few a handful of numpy calls cost a fraction of
    the equivalent torch operations."""
    zn, vn = z.numpy(), v.numpy()
    fix = np.flatnonzero(vn)
    if not fix.size:
        return
    zf, vf = zn[fix], vn[fix]
    rows = np.arange(fix.size)
    top = zf.argmax(axis=1)
    mx = zf[rows, top]
    c = top.copy()
    esc = vf >= TOP1_RANKS
    c[esc] = vf[esc] - TOP1_RANKS
    one = vf == 1
    if one.any():      # the maximum once the (unique: the rank is robust) first maximum is removed
        w = zf[one]
        w[np.arange(w.shape[0]), top[one]] = -np.inf
        c[one] = w.argmax(axis=1)
    deep = (vf > 1) & (vf < TOP1_RANKS)
    if deep.any():     # the top 16 of each row (unordered), then sorted: the class at rank v
        w = -zf[deep]
        kk = min(TOP1_RANKS, w.shape[1]) - 1
        cand = np.argpartition(w, kk, axis=1)[:, :kk + 1]
        order = np.argsort(np.take_along_axis(w, cand, axis=1), axis=1, kind="stable")
        ranked = np.take_along_axis(cand, order, axis=1)
        c[deep] = ranked[np.arange(ranked.shape[0]), vf[deep]]
    new = mx + np.float32(margin)
    new = np.where(new > mx, new, np.nextafter(mx, np.float32(np.inf)))
    cur = zn[fix, c]
    zn[fix, c] = np.maximum(new, cur) if margin > 0 else new


def apply_top1(z: torch.Tensor, v: torch.Tensor, margin: float, rule: str = "swap",
               return_classes: bool = True) -> torch.Tensor | None:
    """Decode the ``top1`` symbols ``v`` against logits ``z`` and make that class the strict
    argmax of ``z`` (in place).  Where it is not already the decoder's first maximum, or the
    symbol is an escape: rule ``swap`` exchanges ``z[c]`` with the decoder's maximum (so the
    label keeps the decoder's confidence, now on the right class), rule ``lift`` (files
    written before ``top1_rule`` existed) sets ``z[c] = max(z)``; then ``z[c]`` is raised to at
    least the largest other logit + ``margin``.  Returns the classes (``return_classes``).

    Rows with symbol 0 are left untouched, so only the rows to fix (a few percent) are searched."""
    v = v.long().view(-1)
    fix = (v != 0).nonzero().view(-1)
    classes = z.argmax(dim=1) if return_classes else None
    if not fix.numel():
        return classes
    zf, vf = z[fix], v[fix]
    mxf, topf = zf.max(dim=1)
    cf = topf.clone()
    rk = vf < TOP1_RANKS
    if bool(rk.any()):
        cf[rk] = _class_at_rank(zf[rk], vf[rk])
    esc = ~rk
    if bool(esc.any()):
        cf[esc] = vf[esc] - TOP1_RANKS
    if classes is not None:
        classes[fix] = cf
    if rule == "lift":  # exactly as format-1.0 files were decoded
        m = mxf
        new = m + margin
        new = torch.where(new > m, new, torch.nextafter(m, torch.full_like(m, float("inf"))))
        z[fix, cf] = torch.maximum(new, z[fix, cf]) if margin > 0 else new
    else:
        m, tf = mxf, topf
        zc = z[fix, cf].clone()
        z[fix, tf] = zc
        z[fix, cf] = m
        others = z[fix].clone()
        others[torch.arange(fix.numel(), device=z.device), cf] = float("-inf")
        om = others.max(dim=1).values
        new = om + margin
        new = torch.where(new > om, new, torch.nextafter(om, torch.full_like(om, float("inf"))))
        z[fix, cf] = torch.maximum(z[fix, cf], new)
    return classes


def train_top1(z: torch.Tensor, c: torch.Tensor, margin: float, rule: str = "swap") -> torch.Tensor:
    """Differentiable training counterpart of :func:`apply_top1` with the true classes c."""
    mx, am = z.max(dim=1, keepdim=True)
    c = c.long().view(-1, 1)
    wrong = am != c
    zc = z.gather(1, c)
    out = z.scatter(1, c, torch.where(wrong, mx + (margin if rule == "lift" else 0.0), zc))
    if rule == "swap":
        out = out.scatter(1, am, torch.where(wrong, zc, mx))
    return out


class _Encoder:
    """In-memory encoder (never stored): label logits -> [n, M, d] latents."""

    def __init__(self, C, M, d, hidden, mode, topk, g, device):
        self.C, self.M, self.d, self.mode, self.topk = C, M, d, mode, min(topk, C)
        H = hidden

        def lin(i, o, gain=1.0):
            w = torch.randn(i, o, generator=g, device=device) * (gain / math.sqrt(i))
            return w.requires_grad_(), torch.zeros(o, device=device, requires_grad=True)

        self.p = {}
        if mode == "dense":
            self.p["w0"], self.p["b0"] = lin(C, H)
        else:
            self.p["emb"] = (torch.randn(C, H, generator=g, device=device) * 0.1).requires_grad_()
            self.p["wv"], self.p["b0"] = lin(self.topk, H)
        self.p["w1"], self.p["b1"] = lin(H, H)
        self.p["w2"], self.p["b2"] = lin(H, M * d)
        self.mu = torch.zeros(C if mode == "dense" else self.topk, device=device)
        self.sd = torch.ones_like(self.mu)

    def features(self, x):
        """Log-probabilities up to a per-row constant: x - max(x) (dense) or the top-k of it."""
        if self.mode == "dense":
            return x - x.max(dim=1, keepdim=True).values
        vals, idx = torch.topk(x, self.topk, dim=1)
        return vals - vals[:, :1], idx

    def set_norm(self, x):
        f = self.features(x)
        v = f if self.mode == "dense" else f[0]
        self.mu = v.mean(0)
        self.sd = v.std(0).clamp(min=1e-3) if v.shape[0] > 1 else torch.ones_like(self.mu)

    def __call__(self, x):
        p = self.p
        f = self.features(x)
        if self.mode == "dense":
            h = ((f - self.mu) / self.sd) @ p["w0"] + p["b0"]
        else:
            vals, idx = f
            w = vals - vals[:, -1:]
            h = F.embedding_bag(idx, p["emb"], per_sample_weights=w, mode="sum")
            h = h + ((vals - self.mu) / self.sd) @ p["wv"] + p["b0"]
        h = _gelu(h)
        h = h + _gelu(h @ p["w1"] + p["b1"])
        z = h @ p["w2"] + p["b2"]
        return z.view(-1, self.M, self.d)

    def params(self):
        return list(self.p.values())

    @no_grad
    def freeze(self):
        """Inference weights: the input standardisation folded into the first layer."""
        p = {k: v.detach() for k, v in self.p.items()}
        key = "w0" if self.mode == "dense" else "wv"
        p[key] = (p[key] / self.sd.unsqueeze(1)).contiguous()
        p["b0"] = p["b0"] - (self.mu / self.sd) @ self.p[key].detach()
        self.frozen = p

    @no_grad
    def infer(self, x, xmax=None):
        p = self.frozen
        if self.mode == "dense":
            if xmax is None:
                xmax = x.max(dim=1, keepdim=True).values
            # (x - xmax) @ w0 + b0 == x @ w0 - xmax * colsum(w0) + b0
            h = torch.addmm(p["b0"], x, p["w0"]) - xmax.view(-1, 1) * p["w0"].sum(0)
        else:
            vals, idx = self.features(x)
            w = vals - vals[:, -1:]
            h = F.embedding_bag(idx, p["emb"], per_sample_weights=w, mode="sum")
            h = h + torch.addmm(p["b0"], vals, p["wv"])
        h = _gelu(h)
        h = h + _gelu(torch.addmm(p["b1"], h, p["w1"]))
        return torch.addmm(p["b2"], h, p["w2"]).view(-1, self.M, self.d)


def _rows_ctx(ctx: Context, start: int, n: int) -> Context:
    """``ctx`` with ``rows`` cut to the batch ``[start, start + n)`` of the call's rows."""
    if ctx.rows is None:
        return ctx
    return dataclasses.replace(ctx, rows=np.asarray(ctx.rows)[start:start + n])


def _nearest(z, cb):
    """z [n, M, d], cb [M, K, d] -> indices [n, M] (long) of the nearest entries (squared L2)."""
    zt = z.transpose(0, 1)                                     # [M, n, d]
    d2 = torch.baddbmm((cb * cb).sum(-1).unsqueeze(1), zt, cb.transpose(1, 2), alpha=-2.0)
    return d2.argmin(dim=2).transpose(0, 1)                    # [n, M]


def _lookup(cb, idx):
    """cb [M, K, d], idx [n, M] -> [n, M, d]."""
    M, K, _ = cb.shape
    flat = cb.reshape(M * K, -1)
    offs = torch.arange(M, device=idx.device) * K
    return flat[idx.long() + offs]


def _abs_colsum_bound(h: float, w: np.ndarray, b: np.ndarray) -> float:
    """``max_j (h * sum_i |w[i, j]| + |b[j]|)`` in float64: a bound on ``|x @ w + b|`` for every
    input with ``max |x_i| <= h`` (row blocks, so no float64 copy of a large w is made)."""
    col = np.zeros(w.shape[1], dtype=np.float64)
    step = max(1, (1 << 22) // max(1, w.shape[1]))
    for i in range(0, w.shape[0], step):
        col += np.abs(w[i:i + step]).sum(axis=0, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return float((h * col + np.abs(b.astype(np.float64))).max())


def logit_bound(params: dict, layers: int, margin: float) -> float:
    """A bound on ``|z|`` for every decoded logit of a ``vq`` decoder (FORMAT.md, section vq): the
    largest |codebook entry| carried through each layer by :func:`_abs_colsum_bound` (the tanh
    GELU has ``|gelu(x)| <= |x|``; a residual block adds its output to its input), then the image
    prior's largest |entry| and the margin of the top-1 fix.  A file whose bound exceeds
    VQ_MAX_LOGIT_BOUND is rejected, so decoding in float32 can never overflow to inf or NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        h = _abs_colsum_bound(float(np.abs(params["codebooks"]).max()), params["w_in"], params["b_in"])
        for i in range(layers):
            h = h + _abs_colsum_bound(h, params[f"w_h{i}"], params[f"b_h{i}"])
        z = _abs_colsum_bound(h, params["w_out"], params["b_out"])
        if "image_bias" in params and params["image_bias"].size:
            z += float(np.abs(params["image_bias"]).max())
        return z + float(margin)


class _Decoder:
    """The stored part: codebooks + decoder weights (trainable tensors in fp32 while fitting)."""

    def __init__(self, tensors: dict):
        self.t = tensors

    @staticmethod
    def shapes(C, M, K, d, H, layers):
        s = {"codebooks": (M, K, d), "w_in": (M * d, H), "b_in": (H,), "w_out": (H, C), "b_out": (C,)}
        for i in range(layers):
            s[f"w_h{i}"] = (H, H)
            s[f"b_h{i}"] = (H,)
        return s

    @classmethod
    def init(cls, C, M, K, d, H, layers, g, device):
        t = {}
        for name, shp in cls.shapes(C, M, K, d, H, layers).items():
            if name.startswith("b_"):
                v = torch.zeros(shp, device=device)
            elif name == "codebooks":
                v = torch.randn(shp, generator=g, device=device)
            else:
                v = torch.randn(shp, generator=g, device=device) / math.sqrt(shp[0])
                if name == "w_out":
                    v = v * 0.5
            t[name] = v.requires_grad_()
        return cls(t)

    def layers(self):
        return sum(1 for k in self.t if k.startswith("w_h"))

    def forward(self, q_flat):
        t = self.t
        h = q_flat @ t["w_in"] + t["b_in"]
        return self._tail(_gelu(h))

    def _tail(self, h):
        t = self.t
        for i in range(self.layers()):
            h = h + _gelu(h @ t[f"w_h{i}"] + t[f"b_h{i}"])
        return h @ t["w_out"] + t["b_out"]


class _FastDecoder:
    """Inference-only decoder (float32, one device): the first layer fused into per-code tables,
    and - when every combination of codes fits in ``table_max_bytes`` of logits (K ** M rows,
    e.g. the one-codebook configs of small files) - the whole decoder evaluated once into a
    logits table, so decoding a label is a row gather instead of a GEMM."""

    def __init__(self, dec: _Decoder, device, table_max_bytes: int = DECODE_TABLE_MAX_BYTES):
        t = {k: v.detach().to(device=device, dtype=torch.float32) for k, v in dec.t.items()}
        M, K, d = t["codebooks"].shape
        w_in = t["w_in"].view(M, d, -1)
        self.code_tab = torch.bmm(t["codebooks"], w_in).reshape(M * K, -1).contiguous()   # [M*K, H]
        self.b_in = t["b_in"]
        self.M, self.K = M, K
        self.offs = torch.arange(M, device=device) * K
        self.hidden = [(t[f"w_h{i}"], t[f"b_h{i}"]) for i in range(dec.layers())]
        self.w_out, self.b_out = t["w_out"].contiguous(), t["b_out"]
        self.table = self.ranked_np = self.top_np = None
        C, H = self.w_out.shape[1], self.b_in.shape[0]
        build_macs = K ** M * (M * H + H * H * len(self.hidden) + H * C)
        if K ** M * C * 4 <= table_max_bytes and build_macs <= DECODE_TABLE_MAX_MACS:
            self.table = self._all_combinations(device)
            if self.table.device.type == "cpu":
                # each row's first TOP1_RANKS classes in decreasing order and its maximum, so a
                # top1 symbol is resolved by a lookup (ranks are robust: exactly v logits lie
                # above the class by more than TOP1_EPS, so ties among them do not matter)
                top = torch.topk(self.table, min(TOP1_RANKS, C), dim=1)
                self.ranked_np = top.indices.to(torch.int32).numpy()
                self.top_np = top.values[:, 0].numpy().copy()

    def _all_combinations(self, device):
        """Logits of every code combination, row ``sum_m idx_m * K ** (M - 1 - m)``."""
        M, K = self.M, self.K
        C, H = self.w_out.shape[1], self.b_in.shape[0]
        self.strides = K ** torch.arange(M - 1, -1, -1, device=device)
        table = torch.empty((K ** M, C), dtype=torch.float32, device=device)
        step = max(1, (1 << 22) // max(C, H))      # rows per chunk: ~16 MiB of activations
        for i in range(0, K ** M, step):
            combos = torch.arange(i, min(i + step, K ** M), device=device)
            self._mlp((combos.view(-1, 1) // self.strides) % K, out=table[i:i + step])
        return table

    @no_grad
    def _mlp(self, idx, out=None):
        flat = idx.long() + self.offs
        h = F.embedding_bag(flat, self.code_tab, mode="sum") + self.b_in
        h = _gelu(h)
        for w, b in self.hidden:
            h = h + _gelu(torch.addmm(b, h, w))
        return torch.addmm(self.b_out, h, self.w_out, out=out)

    def table_rows(self, idx):
        """The logits-table row of each label's codes ``idx [n, M]``."""
        return idx.long().view(-1) if self.M == 1 else (idx.long() * self.strides).sum(dim=1)

    @no_grad
    def __call__(self, idx, out=None, rows=None):
        """Logits of codes ``idx [n, M]`` (``rows``: their :meth:`table_rows`, if already known)."""
        if self.table is None:
            return self._mlp(idx, out=out)
        return torch.index_select(self.table, 0, self.table_rows(idx) if rows is None else rows, out=out)

    def lift_top1(self, z, rows, v, margin: float) -> None:
        """:func:`apply_top1` with rule ``lift`` for CPU logits ``z`` read from the table rows
        ``rows`` (no image prior added), in place: each fixed row's class and maximum are looked up."""
        zn, vn = z.numpy(), v.numpy()
        fix = np.flatnonzero(vn)
        if not fix.size:
            return
        vf = vn[fix]
        rows = rows.numpy()[fix]
        ranked = vf < TOP1_RANKS
        c = np.where(ranked, self.ranked_np[rows, np.where(ranked, vf, 0)], vf - TOP1_RANKS)
        mx = self.top_np[rows]
        new = mx + np.float32(margin)
        new = np.where(new > mx, new, np.nextafter(mx, np.float32(np.inf)))
        cur = zn[fix, c]
        zn[fix, c] = np.maximum(new, cur) if margin > 0 else new


@register
class VQCodec(Codec):
    """Learned product-VQ autoencoder with an argmax stream; see the module docstring."""

    codec_id = "vq"
    decode_owns_output = True
    options = (
        Option("bits", float, 48.0, "nominal marginal bits per label: M*log2(K) + 2 (argmax budget)",
               rule=Float(ARGMAX_BITS, MAX_CODES * 16 + ARGMAX_BITS, lo_open=True)),
        Option("codes", _opt_int, None, "number of codes M per label (overrides --bits)",
               rule=Int(1, MAX_CODES, optional=True)),
        Option("codebook_size", _opt_int, None, "entries K per codebook (overrides --bits)",
               rule=Int(2, MAX_CODEBOOK, optional=True)),
        Option("code_dim", int, 8, "dimension of each latent vector / codebook entry",
               rule=Int(1, 1024)),
        Option("hidden", _opt_int, None, "decoder (and encoder) hidden width (default: 256 for >= 256 "
               "classes, 64 below: measured on Fashion-MNIST, C=10, a 256-wide decoder costs more than the labels)",
               rule=Int(1, MAX_HIDDEN, optional=True)),
        Option("encoder_hidden", _opt_int, None, "encoder hidden width (not stored; default: hidden)",
               rule=Int(1, MAX_HIDDEN, optional=True)),
        Option("decoder_layers", int, 1, "residual hidden blocks of the decoder",
               rule=Int(0, MAX_DECODER_LAYERS)),
        Option("temperature", float, [1.0, 4.0], "training temperature(s) of the student; the loss is "
               "sum_T T^2 KL(p_T || q_T)", nargs="+",
               rule=FloatList(Float(1e-6, 1e6), 1, 16)),
        Option("margin", float, 0.01, "decoded logit[argmax] exceeds the others by at least this (nats)",
               rule=Float(0.0, MAX_MARGIN)),
        Option("top1_rule", str, "lift", "how decoding makes the stored top-1 class the argmax: lift its logit "
               "to the decoder's maximum + margin (default), or swap it with the maximum",
               choices=("swap", "lift"),
               rule=Choice(("swap", "lift"))),
        Option("fit_sample", int, 100_000, "fit on at most this many labels (deterministic subsample)",
               rule=Int(1, 1 << 40)),
        Option("steps", int, 3000, "training steps (warmup + VQ + finetune)",
               rule=Int(1, 1 << 30)),
        Option("train_batch", int, 512, "training batch size (labels per step)",
               rule=Int(1, 1 << 20)),
        Option("lr", float, 2e-3, "Adam learning rate (cosine decay)",
               rule=Float(0.0, 10.0, lo_open=True)),
        Option("warmup", float, 0.1, "fraction of steps as a plain autoencoder before k-means init",
               rule=Float(0.0, 1.0, hi_open=True)),
        Option("finetune", float, 0.25, "fraction of steps refitting the decoder on frozen indices",
               rule=Float(0.0, 1.0, hi_open=True)),
        Option("param_dtype", str, "float16", "dtype of stored codebooks/decoder", choices=("float16", "float32"),
               rule=Choice(("float16", "float32"))),
        Option("encoder_input", str, "auto", "encoder first layer: dense over C, or embedding-bag of top-k",
               choices=("auto", "dense", "topk"),
               rule=Choice(("auto", "dense", "topk"))),
        Option("topk_input", int, 64, "classes fed to a top-k encoder",
               rule=Int(1, 65536)),
        Option("batch_rows", int, 8192, "rows per batch when encoding/decoding",
               rule=Int(1, 1 << 24)),
        Option("image_bias", str, "auto", "per-image prior: store each image's mean log-probabilities "
               "([images, C], param_dtype) and code only what each view adds to it; auto: on when the "
               "labels are [images, augmentations, C] and the table costs <= 1 bit per label "
               "(16*C/augmentations, e.g. C=10 with 300 views); needs the per-image means of the whole set, "
               "which slcodec.encode computes (Writer users: Writer.set_image_means)",
               choices=("auto", "on", "off"),
               rule=Choice(("auto", "on", "off"))),
        Option("rank_weight", float, 0.0, "fitting only: weight of a hinge loss that ranks the teacher's top "
               "class first in the decoder's own logits (fewer top-1 fix-ups: smaller top1 stream, faster decode)",
               rule=Float(0.0, 1e6)),
        Option("fit_threads", int, 0, "torch CPU threads while fitting, restored after (0: torch's own "
               "count, normally one per core; 1 or 2 on a machine shared with other jobs)",
               rule=Int(0, 4096)),
    )

    # ------------------------------------------------------------------ config
    def validate_config(self):
        # each value was checked by its option's rule (FORMAT.md, section vq); the combinations here
        c = self.config
        if c["warmup"] + c["finetune"] >= 1:
            raise ConfigError("vq: warmup and finetune are fractions of steps with warmup + finetune < 1")
        self.M, self.K = rate_for_bits(c["bits"], c["codes"], c["codebook_size"])
        if not (1 <= self.M <= MAX_CODES and 2 <= self.K <= MAX_CODEBOOK):
            raise ConfigError(f"vq: bits {c['bits']:g} gives M={self.M} codes of K={self.K} entries "
                              f"(at most {MAX_CODES} codes of 2 .. {MAX_CODEBOOK} entries)")
        if c["hidden"] is not None:
            self._check_code_table(c["hidden"])
        self._params_np = None    # stored parameters (param_dtype numpy), decoder and codebooks
        self._dec_t = None        # _Decoder of them (float32 torch), built on first use
        self._fast = {}           # device -> _FastDecoder
        self._enc = None          # _Encoder (only after fit)
        self._assign_cb = None    # codebooks the encoder searches (float32)
        self._classes = None
        self._image_means = None  # [images, C] float32 given by set_image_means (before fit)
        self._bias_np = None      # stored image_bias (param_dtype numpy) when on
        self._bias_t = None       # that table as float32 torch [images, C], built on first use
        self._bias_dev = {}       # device -> that table
        self._augs = None         # augmentations per image (labels.shape[1]) when image_bias is on

    def _check_code_table(self, hidden):
        """The first-layer table a reader builds (``[M * K, hidden]`` float32) within its cap."""
        size = self.M * self.K * hidden * 4
        if size > limits.VQ_MAX_CODE_TABLE_BYTES:
            raise ConfigError(f"vq: M * K * hidden * 4 = {size:,} bytes (M={self.M}, K={self.K}, hidden={hidden}) "
                              f"exceeds the {limits.VQ_MAX_CODE_TABLE_BYTES:,}-byte limit of the decoder's code table")

    @property
    def nominal_bits(self) -> float:
        return nominal_bits(self.M, self.K)

    def _code_dtype(self):
        return "uint8" if self.K <= 256 else "uint16"

    def stream_specs(self, classes):
        check_classes(self.codec_id, classes)
        return {"top1": ("uint16" if classes + TOP1_RANKS <= 65536 else "uint32", 1),
                "codes": (self._code_dtype(), self.M)}

    def decoded_kind(self, source_kind):
        return "logits"

    # ------------------------------------------------------------------ image prior
    @staticmethod
    def _image_bias_worth(label_shape, classes) -> bool:
        return (label_shape is not None and len(label_shape) == 2
                and 16.0 * classes / int(label_shape[1]) <= IMAGE_BIAS_MAX_BITS)

    def wants_image_means(self, label_shape, classes):
        m = self.config["image_bias"]
        return m == "on" or (m == "auto" and self._image_bias_worth(label_shape, classes))

    def set_image_means(self, means):
        means = np.asarray(means, dtype=np.float32)
        if means.ndim != 2 or means.shape[0] < 1 or not np.isfinite(means).all():
            raise ConfigError(f"vq: image means must be a finite [images, C] array, got shape {list(means.shape)}")
        # log-probabilities below -1e4 are zero probabilities in any float; the clamp keeps the
        # stored table finite in float16 (masked logits of -1e5 would overflow it)
        self._image_means = np.maximum(means, np.float32(-1e4))

    def get_config(self):
        cfg = dict(self.config)
        if cfg.get("image_bias") != "on":   # files without the feature keep their format-1.0 config
            cfg.pop("image_bias", None)
        # fitting-only and added after 1.0: kept out of the stored config (a 1.1 reader rejects
        # unknown keys) and recorded in the fit info instead
        cfg.pop("rank_weight", None)
        return cfg

    def format_minor(self):
        return 2 if self.config["image_bias"] == "on" else 0

    def _resolve_image_bias(self, ctx: Context, C: int, n_rows: int) -> bool:
        """Resolve ``image_bias`` for a fit (stored as on/off) and set up the bias table."""
        cfg = self.config
        mode, shape = cfg["image_bias"], ctx.label_shape
        if mode == "auto":
            mode = "on" if self._image_means is not None and self._image_bias_worth(shape, C) else "off"
        if mode == "on":
            if shape is None or len(shape) != 2:
                raise ConfigError("vq: image_bias needs labels shaped [images, augmentations, C]")
            if self._image_means is None:
                raise ConfigError("vq: image_bias=on needs the per-image mean log-probabilities of the whole set "
                                  "(slcodec.encode computes them; with a Writer, call set_image_means first)")
            if self._image_means.shape != (int(shape[0]), C):
                raise ConfigError(f"vq: image means are {list(self._image_means.shape)}, "
                                  f"expected [{int(shape[0])}, {C}]")
            if ctx.rows is None or len(ctx.rows) != n_rows:
                raise ConfigError("vq: image_bias needs the label indices of the fit sample (ctx.rows)")
            pdt = getattr(np, cfg["param_dtype"])
            self._set_bias(self._image_means.astype(pdt), int(shape[1]))
        else:
            self._set_bias(None, None)
        cfg["image_bias"] = mode
        return mode == "on"

    def _set_bias(self, table_np, augs):
        self._bias_np = table_np
        self._bias_t = None
        self._bias_dev = {}
        self._augs = augs

    def _bias_rows(self, ctx: Context, n: int, dev):
        """The image_bias rows [n, C] of the labels ``ctx.rows`` (float32 on dev), or None when off."""
        if self._bias is None:
            return None
        rows = ctx.rows
        if rows is None or len(rows) != n:
            raise ConfigError("vq: a file with image_bias decodes only with the labels' indices (ctx.rows)")
        key = str(dev)
        table = self._bias_dev.get(key)
        if table is None:
            table = self._bias_dev[key] = self._bias.to(dev)
        img = torch.as_tensor(np.asarray(rows, dtype=np.int64) // self._augs)
        if img.numel() and (int(img.min()) < 0 or int(img.max()) >= table.shape[0]):
            raise FormatError("vq: label index outside the image_bias table", rule="codec-params")
        return table[img.to(dev)]

    # ------------------------------------------------------------------ fitting
    def _log(self, ctx, msg):
        if ctx.log:
            ctx.log(msg)

    def fit(self, labels, ctx: Context):
        threads = self.config["fit_threads"]
        prev = torch.get_num_threads()
        if threads and ctx.device == "cpu" and threads != prev:
            torch.set_num_threads(threads)     # restored below; fewer threads help only when other
            try:                               # jobs compete for the cores (BENCHMARKS.md: fit threads)
                return self._fit(labels, ctx)
            finally:
                torch.set_num_threads(prev)
        return self._fit(labels, ctx)

    def _fit(self, labels, ctx: Context):
        t0 = time.perf_counter()
        cfg = self.config
        dev = torch.device(ctx.device)
        g = torch.Generator(device=dev)
        g.manual_seed(int(ctx.seed))
        gc = torch.Generator()               # CPU generator for index sampling (device independent)
        gc.manual_seed(int(ctx.seed) + 1)
        labels = torch.as_tensor(labels)
        n_all, C = labels.shape
        if n_all < 1:
            raise ConfigError("vq: cannot fit on zero labels")
        if ctx.classes and ctx.classes != C:
            raise ConfigError(f"vq: labels have {C} classes, context says {ctx.classes}")
        fit_rows = min(cfg["fit_sample"], max(1024, FIT_MAX_ELEMENTS // C))
        if n_all > fit_rows:
            sel = torch.sort(torch.randperm(n_all, generator=gc)[:fit_rows]).values
            labels = labels[sel]
        bias_on = self._resolve_image_bias(ctx, C, n_all)
        rows = np.asarray(ctx.rows, dtype=np.int64) if bias_on else None
        if n_all > fit_rows and rows is not None:
            rows = rows[sel.numpy()]
        x = _to_logits(labels.to(dev), ctx.source_kind)
        n = x.shape[0]
        # with image_bias the encoder sees, and the decoder adds back, each image's mean log-probs
        b_all = None
        if bias_on:
            b_all = self._bias.to(dev)[torch.as_tensor(rows // self._augs, device=dev)]
            x_in = torch.log_softmax(x, dim=1) - b_all
        else:
            x_in = x
        if cfg["hidden"] is None:  # resolved here, so the stored config names the width decoding needs
            cfg["hidden"] = SMALL_C_HIDDEN if C < SMALL_C else DEFAULT_HIDDEN
            self._check_code_table(cfg["hidden"])
        M, K, d, H = self.M, self.K, cfg["code_dim"], cfg["hidden"]
        temps = cfg["temperature"]
        mode = cfg["encoder_input"]
        if mode == "auto":
            mode = "dense" if C <= DENSE_MAX_CLASSES else "topk"
        self._classes = C

        enc = _Encoder(C, M, d, cfg["encoder_hidden"] or H, mode, cfg["topk_input"], g, dev)
        enc.set_norm(x_in[: min(n, 20000)])
        dec = _Decoder.init(C, M, K, d, H, cfg["decoder_layers"], g, dev)
        cls_all = x.argmax(dim=1)
        # targets per temperature, computed per batch
        steps = cfg["steps"]
        n_warm = int(round(steps * cfg["warmup"]))
        n_ft = int(round(steps * cfg["finetune"]))
        n_vq = steps - n_warm - n_ft
        B = min(cfg["train_batch"], n)
        margin = cfg["margin"]
        beta, decay = 0.25, 0.99

        def kl_loss(z, xb):
            tot = 0.0
            parts = []
            for T in temps:
                lp = torch.log_softmax(xb / T, dim=1)
                lq = torch.log_softmax(z / T, dim=1)
                kl = (lp.exp() * (lp - lq)).sum(1).mean()
                parts.append(kl)
                tot = tot + T * T * kl
            return tot, parts

        rank_w = cfg["rank_weight"]

        def rank_loss(z, c):
            """Hinge pushing the true class above every other logit by TOP1_HINGE before the
            top-1 fix: rows the decoder already ranks right cost no top1 bits and no decode work."""
            if not rank_w:
                return 0.0
            zc = z.gather(1, c.view(-1, 1))
            other = z.scatter(1, c.view(-1, 1), float("-inf")).max(dim=1, keepdim=True).values
            return rank_w * F.relu(other - zc + TOP1_HINGE).mean()

        def batch_loss(q_flat, bi, xb, cls):
            """Decode a batch as a reader will (image prior added, top-1 rule applied) and score it."""
            out = dec.forward(q_flat)
            if b_all is not None:
                out = out + b_all[bi]
            rank = rank_loss(out, cls)
            loss, parts = kl_loss(train_top1(out, cls, margin, cfg["top1_rule"]), xb)
            return loss + rank, parts

        params = enc.params() + [v for k, v in dec.t.items() if k != "codebooks"]
        opt = torch.optim.Adam(params, lr=cfg["lr"], foreach=True)

        def lr_at(s, total, base):
            w = min(1.0, (s + 1) / 100.0)
            return base * w * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / max(1, total))))

        def batches():
            while True:
                perm = torch.randperm(n, generator=gc).to(dev)
                for i in range(0, n - B + 1, B):
                    yield perm[i:i + B]

        it = batches()
        cb = None
        ema_count = ema_sum = None
        history = []
        restarts = 0
        for s in range(n_warm + n_vq):
            for pg in opt.param_groups:
                pg["lr"] = lr_at(s, n_warm + n_vq, cfg["lr"])
            bi = next(it)
            xb, cb_cls = x[bi], cls_all[bi]
            z = enc(x_in[bi])
            if s == n_warm:
                cb = self._kmeans(enc, x_in, K, g, gc, dev)
                ema_count = torch.full((M, K), B / K, device=dev)
                ema_sum = cb * ema_count.unsqueeze(-1)
            if cb is None:
                q = z
                commit = torch.zeros((), device=dev)
            else:
                with torch.no_grad():
                    idx = _nearest(z.detach(), cb)
                    qv = _lookup(cb, idx)
                q = z + (qv - z).detach()
                commit = beta * ((z - qv) ** 2).sum(-1).mean()
            loss, parts = batch_loss(q.reshape(-1, M * d), bi, xb, cb_cls)
            opt.zero_grad(set_to_none=True)
            (loss + commit).backward()
            opt.step()
            if cb is not None:
                with torch.no_grad():
                    oh = F.one_hot(idx, K).float()                        # [B, M, K]
                    cnt = oh.sum(0)                                      # [M, K]
                    sm = torch.einsum("bmk,bmd->mkd", oh, z.detach())
                    ema_count.mul_(decay).add_(cnt, alpha=1 - decay)
                    ema_sum.mul_(decay).add_(sm, alpha=1 - decay)
                    tot = ema_count.sum(1, keepdim=True)
                    smooth = (ema_count + 1e-5) / (tot + K * 1e-5) * tot
                    cb = ema_sum / smooth.unsqueeze(-1)
                    if (s - n_warm) % 50 == 49 and s < n_warm + n_vq - 100:
                        dead = ema_count < (B / K) / 20.0
                        nd = int(dead.sum())
                        if nd:
                            restarts += nd
                            zd = z.detach()
                            pick = torch.randint(0, zd.shape[0], (nd,), generator=gc).to(dev)
                            mm = dead.nonzero()[:, 0]
                            newv = zd[pick, mm]
                            cb[dead] = newv
                            ema_count[dead] = B / K
                            ema_sum[dead] = newv * (B / K)
            if s % 100 == 0 or s == n_warm + n_vq - 1:
                history.append([s, loss.item()] + [p.item() for p in parts])
            if ctx.progress:   # the loss as last recorded: reading it every step would sync a GPU
                ctx.progress(s + 1, steps, f"vq fit: loss {history[-1][1]:.4f}")
        if cb is None:   # no VQ steps at all (tiny configs): initialise from k-means
            cb = self._kmeans(enc, x_in, K, g, gc, dev)

        # ---- finetune: freeze indices, refit decoder + stored codebook vectors
        self._assign_cb = cb.detach().clone()
        enc.freeze()
        self._enc = enc
        idx_all = self._assign(x_in, dev)
        with torch.no_grad():
            dec.t["codebooks"] = cb.detach().clone()
        dec.t["codebooks"].requires_grad_()
        dparams = list(dec.t.values())
        opt2 = torch.optim.Adam(dparams, lr=cfg["lr"] * 0.5, foreach=True)
        for s in range(n_ft):
            for pg in opt2.param_groups:
                pg["lr"] = lr_at(s, n_ft, cfg["lr"] * 0.5)
            bi = next(it)
            xb, cb_cls = x[bi], cls_all[bi]
            qv = _lookup(dec.t["codebooks"], idx_all[bi])
            loss, parts = batch_loss(qv.reshape(-1, M * d), bi, xb, cb_cls)
            opt2.zero_grad(set_to_none=True)
            loss.backward()
            opt2.step()
            if s % 100 == 0 or s == n_ft - 1:
                history.append([n_warm + n_vq + s, loss.item()] + [p.item() for p in parts])
            if ctx.progress:
                ctx.progress(n_warm + n_vq + s + 1, steps, f"vq fit: loss {history[-1][1]:.4f}")

        # round to the stored dtype so that the fitting process decodes exactly as a reader will
        pdt = getattr(np, cfg["param_dtype"])
        params_np = {k: v.detach().cpu().numpy().astype(pdt) for k, v in dec.t.items()}
        if not all(np.isfinite(a).all() for a in params_np.values()):
            raise ConfigError("vq: fitting diverged (non-finite decoder weights); try a smaller lr")
        pb = dict(params_np, **({} if self._bias_np is None else {"image_bias": self._bias_np}))
        bound = logit_bound(pb, cfg["decoder_layers"], cfg["margin"])
        if not bound <= limits.VQ_MAX_LOGIT_BOUND:   # a reader would reject the file (FORMAT.md, vq)
            raise ConfigError(f"vq: the fitted decoder's weights allow logits up to {bound:.3g}, beyond the "
                              f"{limits.VQ_MAX_LOGIT_BOUND:g} a reader accepts; use fewer decoder_layers")
        self._set_decoder(params_np)
        # fit statistics
        usage, ent = [], []
        cnt = torch.stack([torch.bincount(idx_all[:, m], minlength=K) for m in range(M)]).double()
        for m in range(M):
            pr = cnt[m] / cnt[m].sum()
            usage.append(float((cnt[m] > 0).double().mean()))
            nz = pr[pr > 0]
            ent.append(float(-(nz * nz.log2()).sum()))
        self.fit_info = {
            "M": M, "K": K, "code_dim": d, "encoder_input": mode,
            "nominal_bits": self.nominal_bits, "raw_index_bits": M * math.log2(K),
            "fit_rows": int(n), "input_rows": int(n_all), "steps": steps,
            "code_usage": usage, "code_usage_mean": float(np.mean(usage)),
            "index_entropy_bits": ent, "index_entropy_total": float(sum(ent)),
            "dead_code_restarts": int(restarts),
            "loss_history": history,  # [step, loss, KL@T for T in temperature]
            "fit_seconds": time.perf_counter() - t0,
            "param_bytes": int(sum(a.nbytes for a in params_np.values())),
            "image_bias": cfg["image_bias"],
            "rank_weight": cfg["rank_weight"],
            "image_bias_bytes": 0 if self._bias_np is None else int(self._bias_np.nbytes),
        }
        self._log(ctx, f"vq: fitted M={M} K={K} on {n} labels in {self.fit_info['fit_seconds']:.1f}s, "
                       f"usage {self.fit_info['code_usage_mean']:.3f}, "
                       f"entropy {self.fit_info['index_entropy_total']:.2f} bits")

    @no_grad
    def _kmeans(self, enc, x, K, g, gc, dev, iters=15, max_rows=16384):
        n = x.shape[0]
        rows = torch.randperm(n, generator=gc)[:max_rows].to(dev)
        z = torch.cat([enc(x[rows[i:i + 4096]]) for i in range(0, len(rows), 4096)])   # [N, M, d]
        N, M, d = z.shape
        if N >= K:
            init = torch.stack([torch.randperm(N, generator=gc)[:K] for _ in range(M)], 1).to(dev)
            cb = z[init, torch.arange(M, device=dev)].transpose(0, 1).contiguous()          # [M, K, d]
        else:
            pick = torch.randint(0, N, (K, M), generator=gc).to(dev)
            cb = z[pick, torch.arange(M, device=dev)].transpose(0, 1).contiguous()
            cb = cb + 0.01 * z.std() * torch.randn(cb.shape, generator=g, device=dev)
        for _ in range(iters):
            idx = _nearest(z, cb)                                      # [N, M]
            oh = F.one_hot(idx, K).float()
            cnt = oh.sum(0)                                            # [M, K]
            sm = torch.einsum("nmk,nmd->mkd", oh, z)
            upd = sm / cnt.clamp(min=1).unsqueeze(-1)
            cb = torch.where((cnt > 0).unsqueeze(-1), upd, cb)
        return cb

    @no_grad
    def _assign(self, x, dev):
        out = []
        br = self._batch_rows()
        for i in range(0, x.shape[0], br):
            z = self._enc.infer(x[i:i + br])
            out.append(_nearest(z, self._assign_cb))
        return torch.cat(out) if out else torch.zeros((0, self.M), dtype=torch.long, device=dev)

    # ------------------------------------------------------------------ params
    def get_params(self):
        if self._params_np is None:
            return {}
        out = {k: v.copy() for k, v in self._params_np.items()}
        if self._bias_np is not None:
            out["image_bias"] = self._bias_np.copy()
        return out

    def _set_decoder(self, params_np):
        self._params_np = params_np
        self._dec_t = None
        self._fast = {}

    # The torch forms of the stored arrays are built on first use, so that checking a file
    # (set_params, validate_streams: `slcodec verify`) needs no torch.
    @property
    def _dec(self):
        """The _Decoder of the stored parameters (param_dtype -> float32), or None before fit/set_params."""
        if self._dec_t is None and self._params_np is not None:
            self._dec_t = _Decoder({k: torch.from_numpy(v.astype(np.float32)) for k, v in self._params_np.items()})
        return self._dec_t

    @property
    def _bias(self):
        """The stored image_bias as float32 torch [images, C], or None when off."""
        if self._bias_t is None and self._bias_np is not None:
            self._bias_t = torch.from_numpy(self._bias_np.astype(np.float32))
        return self._bias_t

    def set_params(self, params, ctx: Context):
        cfg = self.config
        M, K, d, H, L = self.M, self.K, cfg["code_dim"], cfg["hidden"], cfg["decoder_layers"]
        if H is None:
            raise FormatError("vq: the config does not name the decoder's hidden width", rule="codec")
        if "b_out" not in params or not isinstance(params["b_out"], np.ndarray) or params["b_out"].ndim != 1:
            raise FormatError("vq: parameter 'b_out' is missing or not a vector", rule="codec-params")
        C = int(params["b_out"].shape[0])
        if ctx.classes and ctx.classes != C:
            raise FormatError(f"vq: parameters are for {C} classes, the file has {ctx.classes}",
                              rule="codec-params")
        check_classes(self.codec_id, C)
        # every bound of the config was checked already (decoder_layers <= 64: a few shapes to list)
        want = _Decoder.shapes(C, M, K, d, H, L)
        ib = cfg["image_bias"]
        if ib == "auto":   # a codec built in code (a file's config says on or nothing): the params tell
            ib = cfg["image_bias"] = "on" if "image_bias" in params else "off"
        augs = None
        if ib == "on":
            shape = ctx.label_shape
            if shape is None or len(shape) != 2:
                raise FormatError("vq: image_bias needs labels shaped [images, augmentations, C]",
                                  rule="codec-params")
            want = dict(want, image_bias=(int(shape[0]), C))
            augs = int(shape[1])
        if set(params) != set(want):
            raise FormatError(f"vq: parameters {sorted(params)} do not match the config "
                              f"(expected {sorted(want)})", rule="codec-params")
        pdt = np.dtype(cfg["param_dtype"])
        clean = {}
        for k, shp in want.items():
            a = params[k]
            if not isinstance(a, np.ndarray) or a.dtype != pdt or tuple(a.shape) != shp:
                got = (getattr(a, "dtype", type(a).__name__), getattr(a, "shape", None))
                raise FormatError(f"vq: parameter {k!r} is {got}, expected {pdt} {shp}", rule="codec-params")
            if not np.isfinite(a).all():
                raise FormatError(f"vq: parameter {k!r} has non-finite values", rule="codec-params")
            clean[k] = np.ascontiguousarray(a)
        bound = logit_bound(clean, L, cfg["margin"])
        if not bound <= limits.VQ_MAX_LOGIT_BOUND:   # also catches NaN from inf * 0
            raise FormatError(f"vq: the decoder's weights allow logits up to {bound:.3g}, beyond the "
                              f"{limits.VQ_MAX_LOGIT_BOUND:g} a reader accepts (float32 would overflow)",
                              rule="codec-params")
        self._classes = C
        bias = clean.pop("image_bias", None)
        self._set_decoder(clean)
        self._set_bias(bias, augs)

    # ------------------------------------------------------------------ streams
    def encode(self, labels, ctx: Context):
        if self._enc is None:
            raise ConfigError("vq: encode needs the encoder of a fit() in this process "
                              "(the file stores only what decoding needs)")
        dev = torch.device(ctx.device)
        labels = torch.as_tensor(labels)
        if labels.ndim != 2 or labels.shape[1] != self._classes:
            raise ConfigError(f"vq: labels must be [n, {self._classes}], got {list(labels.shape)}")
        n = labels.shape[0]
        top1 = np.empty((n, 1), dtype=self.stream_specs(self._classes)["top1"][0])
        codes = np.empty((n, self.M), dtype=self._code_dtype())
        br = self._batch_rows()
        fast = self._fast_for(dev)
        with torch.no_grad():
            for i in range(0, n, br):
                x = _to_logits(labels[i:i + br].to(dev), ctx.source_kind)
                xmax, c = x.max(dim=1, keepdim=True)
                b = self._bias_rows(_rows_ctx(ctx, i, x.shape[0]), x.shape[0], dev)
                if b is not None:
                    x = torch.log_softmax(x, dim=1) - b
                    xmax = x.max(dim=1, keepdim=True).values
                idx = _nearest(self._enc.infer(x, xmax), self._assign_cb)
                codes[i:i + br] = idx.cpu().numpy()
                z = fast(idx)
                if b is not None:
                    z += b
                top1[i:i + br, 0] = top1_symbols(z, c).cpu().numpy()
                if ctx.progress:
                    ctx.progress(min(n, i + br), n, "vq encode")
        return {"top1": top1, "codes": codes}

    def _batch_rows(self):
        """Rows per encode/decode batch: ``batch_rows``, capped so that a [rows, C] float32 block (and a
        [rows, hidden] one) is at most DECODE_BLOCK_BYTES."""
        widest = max(1, self._classes or 1, self.config["hidden"] or 1)
        return max(1, min(self.config["batch_rows"], limits.DECODE_BLOCK_BYTES // (4 * widest)))

    def _fast_for(self, dev):
        key = str(dev)
        if key not in self._fast:
            self._fast[key] = _FastDecoder(self._dec, dev)
        return self._fast[key]

    @classmethod
    def from_config(cls, config):
        # Files written before the top1_rule option existed were decoded with "lift"; keep that
        # even if the option's default ever changes.
        config = dict(config)
        config.setdefault("top1_rule", "lift")
        config.setdefault("image_bias", "off")   # absent before format 1.2: no image prior
        if config["image_bias"] == "auto":
            raise ConfigError("vq: a stored image_bias must be on or off, not auto")
        return cls(**config)

    def validate_streams(self, streams, classes):
        codes, v = np.asarray(streams["codes"]), np.asarray(streams["top1"]).reshape(-1)
        if codes.size and int(codes.max()) >= self.K:
            raise FormatError(f"vq: code {int(codes.max())} out of range (codebook size {self.K})",
                              rule="codec-streams")
        if v.size and (int(v.max()) >= TOP1_RANKS + classes
                       or bool(((v >= classes) & (v < TOP1_RANKS)).any())):
            raise FormatError("vq: top1 value out of range", rule="codec-streams")

    def decode(self, streams, ctx: Context):
        if self._dec is None:
            raise ConfigError("vq: decode needs parameters (fit or set_params first)")
        dev = torch.device(ctx.device)
        v = torch.as_tensor(streams["top1"]).to(dev).reshape(-1).long()
        idx = torch.as_tensor(streams["codes"]).to(dev).long()
        n = v.shape[0]
        check_decode_size(self.codec_id, n, self._classes)
        if idx.shape != (n, self.M):
            raise FormatError(f"vq: codes stream is {list(idx.shape)}, expected [{n}, {self.M}]",
                              rule="codec-streams")
        if n and not ctx.streams_checked and (int(idx.min()) < 0 or int(idx.max()) >= self.K
                  or int(v.min()) < 0 or int(v.max()) >= TOP1_RANKS + self._classes
                  or bool(((v >= self._classes) & (v < TOP1_RANKS)).any())):
            raise FormatError("vq: stream value out of range", rule="codec-streams")
        fast = self._fast_for(dev)
        out = torch.empty((n, self._classes), dtype=torch.float32, device=dev)
        br = self._batch_rows()
        margin = self.config["margin"]
        for i in range(0, n, br):
            rows = None if fast.table is None else fast.table_rows(idx[i:i + br])
            z = fast(idx[i:i + br], out=out[i:i + br], rows=rows)
            b = None if self._bias is None else self._bias_rows(_rows_ctx(ctx, i, z.shape[0]), z.shape[0], dev)
            if b is not None:
                z += b
            lift_cpu = dev.type == "cpu" and self.config["top1_rule"] == "lift" and z.is_contiguous()
            if lift_cpu and b is None and fast.ranked_np is not None:
                fast.lift_top1(z, rows, v[i:i + br], margin)
            elif lift_cpu:
                _apply_top1_lift_cpu(z, v[i:i + br], margin)
            else:
                apply_top1(z, v[i:i + br], margin, self.config["top1_rule"], return_classes=False)
        return out
