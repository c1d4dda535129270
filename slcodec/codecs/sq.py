"""``sq``: companded scalar quantisation of every log-probability, for small label spaces.

At small C (Fashion-MNIST, C = 10) a label is ten numbers; a learned decoder costs more than it
saves, and a few bits per class value do better.  Each class value of a label is its
log-probability at T = 1, ``l = log_softmax(x)``, quantised through the compander
``s = sqrt(-l)`` into one of ``L = 2 ** bits_per_class`` levels: the square root spends the levels
on the probable classes (a level spans ``2 s ds`` nats of ``l``), where KL at T = 1 is decided,
while still separating the deep tail that KL at higher T sees.

Fitting (on the fit sample, all class values pooled): the ``L - 1`` bin edges in ``s`` are the
quantiles ``j / L`` (``quantiser="quantile"``), or (``"lloyd"``, the default) a Lloyd-Max
quantiser in ``s`` started from them (bins' mean ``s`` and the midpoints between them, iterated).
The file stores only what decoding needs: each level's centroid, the mean log-probability of the
fit values in that bin (``params/centroids`` float32 ``[L]``, non-increasing: level 0 is the most
probable).  The edges live in the fitted object (encode with the object that was fitted, as ``vq``).

Streams (one row per label)
    ``levels`` uint8 ``[n, C]``: each class's level, one byte each.  Not bit-packed: the container
    stores the stream column-major (one class's levels of consecutive views side by side) and
    zstd-codes it, which on Fashion-MNIST labels (IPC 10 x 300 views) gives 16.1 / 26.6 / 38.5
    bits per label at 3 / 4 / 5 bits per class against 16.9 / 29.4 / 44.2 for bit-packed rows
    (only at 2 bits are packed rows smaller: 7.9 against 8.4).
    ``top1`` (see :mod:`slcodec.codecs.argmax_fix`): the teacher's top class where the decoded
    maximum is not clearly it - the quantiser is monotone, so the top class is always on the
    row's lowest level, and a symbol is needed only where another class shares that level.

Decoding: ``z[c] = centroids[level[c]]``, then the top-1 fix; logits (the reader's softmax
normalises them).
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError, FormatError
from ..format import rules
from ..lazy_torch import lazy_import
from .argmax_fix import apply_top1, check_top1, top1_dtype, top1_symbols
from .base import Codec, Context, Option, block_rows, check_classes, check_decode_size, register
from .rules import Choice, Float, Int

torch = lazy_import("torch", globals())  # imported on first use: file checks need no torch

LOG_FLOOR = -1e4            # log-probabilities are clamped here (masked logits, zero probabilities)
FIT_MAX_VALUES = 1 << 21    # class values the quantiser is fitted on (evenly spaced rows)
LLOYD_ITERS = 30
MIN_BITS, MAX_BITS = 2, 6
MAX_MARGIN = 16.0


def _log_probs(labels: torch.Tensor, source_kind: str) -> torch.Tensor:
    x = labels.detach().to(torch.float32)
    if source_kind == "probs":
        x = torch.log(x.clamp_min(1e-30))
    return torch.log_softmax(x, dim=1).clamp_min(LOG_FLOOR)


def fit_edges(s: np.ndarray, levels: int, method: str) -> np.ndarray:
    """``levels - 1`` increasing bin edges for the values ``s`` (float64, any order)."""
    s = np.sort(np.asarray(s, dtype=np.float64))
    edges = np.quantile(s, np.arange(1, levels) / levels, method="linear")
    if method == "lloyd":
        csum = np.concatenate([[0.0], np.cumsum(s)])
        for _ in range(LLOYD_ITERS):
            cuts = np.concatenate([[0], np.searchsorted(s, edges, side="left"), [s.size]])
            counts = np.diff(cuts)
            sums = csum[cuts[1:]] - csum[cuts[:-1]]
            lo = np.concatenate([[s[0]], edges])
            hi = np.concatenate([edges, [s[-1]]])
            means = np.where(counts > 0, sums / np.maximum(counts, 1), (lo + hi) / 2)
            new = (means[:-1] + means[1:]) / 2
            if np.array_equal(new, edges):
                break
            edges = new
    return np.maximum.accumulate(edges)


def bin_centroids(s: np.ndarray, logp: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each bin's mean log-probability (an empty bin: the log-probability of its middle)."""
    idx = np.searchsorted(edges, s, side="right")
    L = edges.size + 1
    counts = np.bincount(idx, minlength=L)
    sums = np.bincount(idx, weights=logp, minlength=L)
    lo = np.concatenate([[0.0], edges])
    hi = np.concatenate([edges, [edges[-1] + 1.0 if edges.size else 1.0]])
    middle = -((lo + hi) / 2) ** 2
    cent = np.where(counts > 0, sums / np.maximum(counts, 1), middle)
    # bins are ordered in s, so their means are too; the accumulate guards float ties
    return np.minimum.accumulate(np.clip(cent, LOG_FLOOR, 0.0)).astype(np.float32)


@register
class ScalarQuantCodec(Codec):
    """Companded scalar quantisation of log-probabilities (module docstring)."""

    codec_id = "sq"
    decode_owns_output = True
    options = (
        Option("bits_per_class", int, 3, f"bits per class value ({MIN_BITS}-{MAX_BITS}): "
               f"2**bits levels of sqrt(-log p)", rule=Int(MIN_BITS, MAX_BITS)),
        Option("quantiser", str, "lloyd", "how the level edges are fitted: 'lloyd' (Lloyd-Max in "
               "sqrt(-log p), from the quantiles) or 'quantile' (equally filled levels)",
               choices=("lloyd", "quantile"), rule=Choice(("lloyd", "quantile"))),
        Option("top1_margin", float, 0.1, "where the top-1 class is stored, its decoded logit "
               "exceeds the others by at least this (nats)", rule=Float(0.0, MAX_MARGIN, lo_open=True)),
        Option("fit_sample", int, 100_000, "labels the fit uses (evenly spaced)", rule=Int(1, 1 << 40)),
    )

    def validate_config(self):
        # each value was checked by its option's rule (FORMAT.md, section sq); no combination rules
        self._edges = None       # float64 numpy [L - 1] (in memory after fit)
        self._centroids = None   # float32 numpy [L] (the param)
        self._cent_dev = {}

    @property
    def levels(self) -> int:
        return 1 << self.config["bits_per_class"]

    def format_minor(self):
        return 4   # the codec was added in format 1.4

    def decoded_kind(self, source_kind):
        return "logits"

    def stream_specs(self, classes):
        check_classes(self.codec_id, classes)
        return {"levels": ("uint8", classes),
                "top1": (top1_dtype(classes).name, 1)}

    # ------------------------------------------------------------------ fit / params
    def fit(self, labels, ctx: Context):
        labels = torch.as_tensor(labels)
        n, C = labels.shape
        if n < 1:
            raise ConfigError("sq: cannot fit on zero labels")
        take = max(1, min(n, FIT_MAX_VALUES // C))
        rows = np.unique(np.linspace(0, n - 1, take).round().astype(np.int64))
        # the quantiser is fitted on the CPU in float64: the same parameters from any device
        lp = _log_probs(labels[torch.from_numpy(rows).to(labels.device)].cpu(), ctx.source_kind)
        lp = lp.double().numpy().reshape(-1)
        s = np.sqrt(-np.minimum(lp, 0.0))
        edges = fit_edges(s, self.levels, self.config["quantiser"])
        self._set_centroids(bin_centroids(s, lp, edges))
        self._edges = edges
        used = np.unique(np.searchsorted(edges, s, side="right")).size
        self.fit_info = {"fit_rows": int(rows.size), "levels_used": int(used)}

    def _set_centroids(self, cent: np.ndarray):
        self._centroids = cent
        self._cent_dev = {}

    def get_params(self):
        return {} if self._centroids is None else {"centroids": self._centroids.copy()}

    def set_params(self, params, ctx: Context):
        if set(params) != {"centroids"}:
            raise FormatError(f"sq: parameters {sorted(params)} do not match the config (expected ['centroids'])",
                              rule=rules.CODEC_PARAMS)
        a = params["centroids"]
        L = self.levels
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != (L,):
            got = (getattr(a, "dtype", type(a).__name__), getattr(a, "shape", None))
            raise FormatError(f"sq: parameter 'centroids' is {got}, expected float32 ({L},)", rule=rules.CODEC_PARAMS)
        if not np.isfinite(a).all() or float(a.max()) > 0.0 or float(a.min()) < LOG_FLOOR:
            raise FormatError(f"sq: 'centroids' must be finite log-probabilities in [{LOG_FLOOR:g}, 0]",
                              rule=rules.CODEC_PARAMS)
        if L > 1 and bool((np.diff(a) > 0).any()):
            raise FormatError("sq: 'centroids' must be non-increasing (level 0 the most probable)",
                              rule=rules.CODEC_PARAMS)
        self._set_centroids(np.array(a, dtype=np.float32, order="C"))   # our own, writable copy
        self._edges = None

    # ------------------------------------------------------------------ streams
    def encode(self, labels, ctx: Context):
        if self._edges is None:
            raise ConfigError("sq: encode needs a fit() in this process (the file stores only the centroids)")
        labels = torch.as_tensor(labels)
        dev = labels.device
        lp = _log_probs(labels, ctx.source_kind)
        s = torch.sqrt(-lp.clamp_max(0.0)).double()
        levels = torch.bucketize(s, torch.from_numpy(self._edges).to(dev), right=True)
        z = self._centroids_on(dev)[levels]
        # the top class (first maximum) is on the row's lowest level: the quantiser is monotone
        top1 = top1_symbols(z, lp.argmax(dim=1))
        return {"levels": levels.to(torch.uint8).cpu().numpy(),
                "top1": top1.cpu().numpy().astype(top1_dtype(labels.shape[1])).reshape(-1, 1)}

    def _centroids_on(self, dev) -> torch.Tensor:
        key = str(dev)
        t = self._cent_dev.get(key)
        if t is None:
            t = self._cent_dev[key] = torch.from_numpy(self._centroids).to(dev)
        return t

    def validate_streams(self, streams, classes):
        levels = np.asarray(streams["levels"])
        if levels.size and int(levels.max()) >= self.levels:
            raise FormatError(f"sq: level {int(levels.max())} out of range ({self.levels} levels)",
                              rule=rules.CODEC_STREAMS)
        check_top1(streams["top1"], classes, "sq")

    def decode(self, streams, ctx: Context):
        if self._centroids is None:
            raise ConfigError("sq: decode needs parameters (fit or set_params first)")
        dev = torch.device(ctx.device)
        levels = streams["levels"].to(dev)
        v = streams["top1"].to(dev).reshape(-1).long()
        C = ctx.classes
        n = levels.shape[0]
        if levels.shape != (n, C) or v.shape != (n,):
            raise FormatError("sq: stream shapes do not match the config", rule=rules.CODEC_STREAMS)
        if n and not ctx.streams_checked:
            self.validate_streams({"levels": levels.cpu().numpy(), "top1": v.cpu().numpy()}, C)
        check_decode_size(self.codec_id, n, C)
        out = torch.empty((n, C), dtype=torch.float32, device=dev)
        cent = self._centroids_on(dev)
        br = block_rows(C * 2)    # the int64 level indices, a block at a time
        for s in range(0, n, br):
            torch.index_select(cent, 0, levels[s:s + br].reshape(-1).long(), out=out[s:s + br].view(-1))
        apply_top1(out, v, self.config["top1_margin"])
        return out
