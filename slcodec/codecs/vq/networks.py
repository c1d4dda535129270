"""vq's networks: the in-memory encoder, the stored decoder (and the bound on its logits), the
nearest-code search."""
from __future__ import annotations

import math

import numpy as np

from ...lazy_torch import lazy_import, no_grad

torch = lazy_import("torch", globals())
F = lazy_import("torch.nn.functional", globals(), "F")

from ...errors import ConfigError
from .config import LOG_CLAMP
from .quant import SCALE_SUFFIX, dequantise


def _gelu(x):
    return F.gelu(x, approximate="tanh")


def _to_logits(labels, source_kind):
    x = labels.float()
    if source_kind == "probs":
        x = torch.log(torch.clamp(x, min=LOG_CLAMP))
    elif source_kind != "logits":
        raise ConfigError(f"vq: unknown source kind {source_kind!r}")
    return x


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
    if "w_out" + SCALE_SUFFIX in params:   # int8 (format 1.5): the bound of the weights decoding uses
        params = dequantise(params)
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
