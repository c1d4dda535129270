"""``imgprior``: each image's mean log-probabilities stored once, and per view the few classes
where the view differs from its image most.

In dataset distillation every image has hundreds of views, and they share most of their label
(most of the logit variance is between images on the benchmark sets).  This
codec stores, for every image g, its mean log-probabilities over all its views ``m_g`` ``[C]``
(one byte per class), and for every view the ``residual_k`` classes whose log-probability the
prior gets most wrong, each as a one-byte step from the prior, plus one byte that shifts every
other class so that together they carry the view's own tail mass.  With ``residual_k = 0`` a
view decodes to its image's mean label (plus the top-1 fix): the smallest files.

The prior needs the labels' image structure, ``[images, views, C]``, and every image's mean
over all its views before fitting (:func:`slcodec.encode` computes it in one extra pass over the
input, as for ``vq``'s ``image_bias``; a :class:`slcodec.Writer` user calls ``set_image_means``).
A flat ``[N, C]`` set has no images: it gets one prior for all labels, the mean of the fit sample.

Parameters (``G`` = images, or 1 for a flat set)
    ``prior`` uint8 ``[G, C]`` and ``prior_range`` float32 ``[G, 2]`` = ``(top, step)`` per image:
    the companded levels ``q = round(sqrt(top - m) / step)`` with ``top = max_c m`` and
    ``step = sqrt(min(top - min_c m, PRIOR_DEPTH)) / 255``; the prior decodes as
    ``a = top - (q * step) ** 2``.  The square root spends the levels near the image's top
    classes (0.06 nats apart 1 nat below the top) rather than in its deep tail (0.4 nats apart
    40 nats below); classes deeper than ``PRIOR_DEPTH`` = 64 nats get level 255.

Streams (one row per label)
    ``ids`` ``[n, k]`` (uint16; uint32 when C > 65536): the stored classes, no class twice, any
    order (this encoder: the k of largest ``|log p_c - a_c| * max(p_c, softmax(a)_c)``, ties to the
    lower id, written in increasing id order, which zstd codes in fewer bits);
    ``residuals`` int8 ``[n, k]`` in -127..127: ``round((log p_c - a_c) / residual_step)``;
    ``tail`` int8 ``[n, 1]`` in -127..127: ``round(log(P / Q) / residual_step)`` with ``P`` the
    view's probability outside the stored classes and ``Q`` the sum of ``exp(a_c)`` over them
    (the tail mass is stored, not derived as ``1 - sum(stored)``: that difference amplifies the
    stored values' rounding - on the fixture it doubled KL at T = 4 for k = 20);
    ``top1`` (see :mod:`slcodec.codecs.argmax_fix`).  With ``residual_k = 0`` only ``top1``.

Decoding label i of image g (float32): every class c decodes to ``a_c + tail * residual_step``,
then each stored class to ``a[ids_j] + residuals_j * residual_step``; then the top-1 fix.
Logits (the reader's softmax normalises them); only additions and products, so every device
decodes the same values.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..format import limits, rules
from ..errors import ConfigError, FormatError
from ..lazy_torch import lazy_import
from .argmax_fix import apply_top1, check_top1, top1_dtype, top1_symbols
from .base import Codec, Context, Option, block_rows, check_classes, check_decode_size, register
from .residual import decode_logits, encode_residual
from .rules import Float, Int

torch = lazy_import("torch", globals())  # imported on first use: file checks need no torch

LOG_FLOOR = -1e4        # log-probabilities are clamped here (masked logits, zero probabilities)
PRIOR_DEPTH = 64.0      # nats below an image's top class that the prior's levels span
MAX_STEP = 4.0
MAX_MARGIN = 16.0
MAX_PRIOR_STEP = math.sqrt(PRIOR_DEPTH) / 255   # the largest step a fit writes


def _ids_dtype(classes: int) -> np.dtype:
    return np.dtype(np.uint16) if classes <= 2**16 else np.dtype(np.uint32)


def _log_probs(labels: torch.Tensor, source_kind: str) -> torch.Tensor:
    x = labels.detach().to(torch.float32)
    if source_kind == "probs":
        x = torch.log(x.clamp_min(1e-30))
    return torch.log_softmax(x, dim=1).clamp_min(LOG_FLOOR)


def quantise_prior(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean log-probabilities ``[G, C]`` -> (``prior`` uint8 ``[G, C]``, ``prior_range`` float32 ``[G, 2]``)."""
    m = np.maximum(np.asarray(means, dtype=np.float64), LOG_FLOOR)
    top = m.max(axis=1, keepdims=True).astype(np.float32).astype(np.float64)
    depth = np.minimum(top - m.min(axis=1, keepdims=True), PRIOR_DEPTH)
    step = (np.sqrt(np.maximum(depth, 0.0)) / 255).astype(np.float32).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step > 0, np.sqrt(np.maximum(top - m, 0.0)) / np.where(step > 0, step, 1.0), 0.0)
    levels = np.clip(np.rint(q), 0, 255).astype(np.uint8)
    return levels, np.concatenate([top, step], axis=1).astype(np.float32)


def prior_logits(levels: torch.Tensor, rng: torch.Tensor) -> torch.Tensor:
    """``a = top - (q * step) ** 2`` for prior rows ``levels`` [n, C] and their ``rng`` [n, 2]."""
    d = levels.to(torch.float32) * rng[:, 1:2]
    return rng[:, 0:1] - d * d


def _rows_ctx(ctx: Context, start: int, stop: int) -> Context:
    """``ctx`` for rows ``start:stop`` of the block it describes (``ctx.rows`` sliced)."""
    return dataclasses.replace(ctx, rows=None if ctx.rows is None else np.asarray(ctx.rows)[start:stop])


@register
class ImagePriorCodec(Codec):
    """Per-image mean log-probabilities plus a per-view top-k residual (module docstring)."""

    codec_id = "imgprior"
    decode_owns_output = True
    options = (
        Option("residual_k", int, 4, "classes corrected per view (0: each view decodes to its "
               "image's mean label)", rule=Int(0, limits.MAX_CLASSES)),
        Option("residual_step", float, 0.125, "step of the stored residual log-probabilities (nats; "
               "int8, so +-127 steps)", rule=Float(0.0, MAX_STEP, lo_open=True)),
        Option("top1_margin", float, 0.1, "where the top-1 class is stored, its decoded logit "
               "exceeds the others by at least this (nats)", rule=Float(0.0, MAX_MARGIN, lo_open=True)),
        Option("fit_sample", int, 100_000, "labels the fit uses (evenly spaced)", rule=Int(1, 1 << 40)),
    )

    def validate_config(self):
        # each value was checked by its option's rule (FORMAT.md, section imgprior); residual_k < C
        # is checked where C is known
        self._image_means = None   # float32 numpy [images, C] from set_image_means
        self._levels = None        # uint8 numpy [G, C] (param "prior")
        self._range = None         # float32 numpy [G, 2] (param "prior_range")
        self._augs = None          # views per image; None: one prior for every label
        self._dev = {}

    def _k(self, classes: int) -> int:
        check_classes(self.codec_id, classes)
        k = self.config["residual_k"]
        if k >= classes:
            raise ConfigError(f"imgprior: residual_k={k} must be smaller than the number of classes ({classes})")
        return k

    def format_minor(self):
        return 4   # the codec was added in format 1.4

    def decoded_kind(self, source_kind):
        return "logits"

    def stream_specs(self, classes):
        k = self._k(classes)
        specs = {"top1": (top1_dtype(classes).name, 1)}
        if k:
            specs.update(ids=(_ids_dtype(classes).name, k), residuals=("int8", k), tail=("int8", 1))
        return specs

    # ------------------------------------------------------------------ the image structure
    @staticmethod
    def _groups(label_shape) -> tuple[int, int | None]:
        """(number of prior rows G, views per image or None for one prior)."""
        if label_shape is not None and len(label_shape) == 2:
            return int(label_shape[0]), int(label_shape[1])
        return 1, None

    def fit_statistics(self, label_shape, classes):
        return ("image_mean_log_probs",) if label_shape is not None and len(label_shape) == 2 else ()

    def set_fit_statistic(self, name, value):
        if name != "image_mean_log_probs":
            return super().set_fit_statistic(name, value)
        self.set_image_means(value)

    def set_image_means(self, means):
        means = np.asarray(means, dtype=np.float32)
        if means.ndim != 2 or means.shape[0] < 1 or not np.isfinite(means).all():
            raise ConfigError(f"imgprior: image means must be a finite [images, C] array, got shape "
                              f"{list(means.shape)}")
        self._image_means = np.maximum(means, np.float32(LOG_FLOOR))

    # ------------------------------------------------------------------ fit / params
    def fit(self, labels, ctx: Context):
        labels = torch.as_tensor(labels)
        n, C = labels.shape
        self._k(C)
        G, augs = self._groups(ctx.label_shape)
        if augs is not None:
            if self._image_means is None:
                raise ConfigError("imgprior: labels shaped [images, views, C] need every image's mean "
                                  "log-probabilities first (slcodec.encode computes them; with a Writer, call "
                                  "set_image_means before the fit)")
            if self._image_means.shape != (G, C):
                raise ConfigError(f"imgprior: image means are {list(self._image_means.shape)}, expected [{G}, {C}]")
            means = self._image_means
        else:   # no images: one prior, the mean of the fit sample
            if n < 1:
                raise ConfigError("imgprior: cannot fit on zero labels")
            acc = torch.zeros(C, dtype=torch.float64)
            for s in range(0, n, 8192):
                acc += _log_probs(labels[s:s + 8192], ctx.source_kind).double().sum(0).cpu()
            means = (acc / n).float().numpy()[None]
        levels, rng = quantise_prior(means)
        self._set_prior(levels, rng, augs)
        self.fit_info = {"prior_rows": int(G), "prior_bytes": int(levels.nbytes + rng.nbytes),
                         "fit_rows": int(n)}

    def _set_prior(self, levels, rng, augs):
        self._levels, self._range, self._augs = levels, rng, augs
        self._dev = {}

    def _prior_on(self, dev):
        key = str(dev)
        t = self._dev.get(key)
        if t is None:
            t = self._dev[key] = (torch.from_numpy(self._levels).to(dev), torch.from_numpy(self._range).to(dev))
        return t

    def get_params(self):
        if self._levels is None:
            return {}
        return {"prior": self._levels.copy(), "prior_range": self._range.copy()}

    def set_params(self, params, ctx: Context):
        if set(params) != {"prior", "prior_range"}:
            raise FormatError(f"imgprior: parameters {sorted(params)} do not match the config "
                              f"(expected ['prior', 'prior_range'])", rule=rules.CODEC_PARAMS)
        C = ctx.classes
        try:
            self._k(C)
        except ConfigError as exc:
            raise FormatError(str(exc), rule=rules.CODEC) from None
        G, augs = self._groups(ctx.label_shape)
        for name, dtype, shape in (("prior", np.uint8, (G, C)), ("prior_range", np.float32, (G, 2))):
            a = params[name]
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
                got = (getattr(a, "dtype", type(a).__name__), getattr(a, "shape", None))
                raise FormatError(f"imgprior: parameter {name!r} is {got}, expected {np.dtype(dtype)} {shape}",
                                  rule=rules.CODEC_PARAMS)
        rng = params["prior_range"]
        top, step = rng[:, 0], rng[:, 1]
        if not (np.isfinite(rng).all() and (top <= 0).all() and (top >= LOG_FLOOR).all()
                and (step >= 0).all() and (step <= np.float32(MAX_PRIOR_STEP)).all()):
            raise FormatError(f"imgprior: 'prior_range' rows must be (top in [{LOG_FLOOR:g}, 0], "
                              f"step in [0, {MAX_PRIOR_STEP:.4g}])", rule=rules.CODEC_PARAMS)
        self._set_prior(np.array(params["prior"], order="C"), np.array(rng, order="C"), augs)

    # ------------------------------------------------------------------ streams
    def _prior_rows(self, ctx: Context, n: int, dev) -> torch.Tensor:
        """Prior logits ``a`` [n, C] of the labels ``ctx.rows`` (float32 on dev)."""
        levels, rng = self._prior_on(dev)
        if self._augs is None:
            return prior_logits(levels.expand(n, -1), rng.expand(n, -1))
        rows = ctx.rows
        if rows is None or len(rows) != n:
            raise ConfigError("imgprior: labels of an [images, views, C] set need their indices (ctx.rows)")
        img = np.asarray(rows, dtype=np.int64) // self._augs
        if img.size and (int(img.min()) < 0 or int(img.max()) >= levels.shape[0]):
            raise FormatError("imgprior: label index outside the prior table", rule=rules.CODEC_PARAMS)
        img = torch.from_numpy(img).to(dev)
        return prior_logits(levels[img], rng[img])

    def encode(self, labels, ctx: Context):
        if self._levels is None:
            raise ConfigError("imgprior: encode needs a fit first")
        labels = torch.as_tensor(labels)
        n, C = labels.shape
        k = self._k(C)
        dev = labels.device
        step = self.config["residual_step"]
        lp = _log_probs(labels, ctx.source_kind)
        a = self._prior_rows(ctx, n, dev)
        out = {}
        if k:
            ids, res, tail = encode_residual(lp, a, k, step)
            z = decode_logits(a, ids, res, tail, step)
            out["ids"] = ids.cpu().numpy().astype(_ids_dtype(C))
            out["residuals"] = res.cpu().numpy().astype(np.int8)
            out["tail"] = tail.cpu().numpy().astype(np.int8)
        else:
            z = a
        out["top1"] = top1_symbols(z, lp.argmax(dim=1)).cpu().numpy().astype(top1_dtype(C)).reshape(-1, 1)
        return out

    def validate_streams(self, streams, classes):
        check_top1(streams["top1"], classes, "imgprior")
        if "ids" not in streams:
            return
        ids = np.asarray(streams["ids"])
        if ids.size and int(ids.max()) >= classes:
            raise FormatError(f"imgprior: class id {int(ids.max())} out of range (classes={classes})",
                              rule=rules.CODEC_STREAMS)
        if ids.ndim == 2 and ids.shape[1] > 1 and bool((np.diff(np.sort(ids, axis=1), axis=1) == 0).any()):
            raise FormatError("imgprior: a label lists the same class twice", rule=rules.CODEC_STREAMS)
        for name in ("residuals", "tail"):
            v = np.asarray(streams[name])
            if v.size and int(v.min()) < -127:
                raise FormatError(f"imgprior: {name} value -128 is not a level (-127..127)", rule=rules.CODEC_STREAMS)

    def decode(self, streams, ctx: Context):
        if self._levels is None:
            raise ConfigError("imgprior: decode needs parameters (fit or set_params first)")
        dev = torch.device(ctx.device)
        v = streams["top1"].to(dev).reshape(-1).long()
        n, C = v.shape[0], ctx.classes
        k = self._k(C)
        if k:
            ids = streams["ids"].to(dev).long()
            res = streams["residuals"].to(dev, torch.float32)
            tail = streams["tail"].to(dev, torch.float32)
            if ids.shape != (n, k) or res.shape != (n, k) or tail.shape != (n, 1):
                raise FormatError("imgprior: stream shapes do not match the config", rule=rules.CODEC_STREAMS)
        else:
            ids = torch.zeros((n, 0), dtype=torch.long, device=dev)
            res, tail = torch.zeros((n, 0), device=dev), torch.zeros((n, 1), device=dev)
        if n and not ctx.streams_checked:
            self.validate_streams({name: t.cpu().numpy() for name, t in streams.items()}, C)
        check_decode_size(self.codec_id, n, C)
        out = torch.empty((n, C), dtype=torch.float32, device=dev)
        step = self.config["residual_step"]
        br = block_rows(C)     # the [rows, C] prior temporaries, a block at a time
        for s in range(0, n, br):
            e = min(n, s + br)
            sub = ctx if self._augs is None else _rows_ctx(ctx, s, e)
            out[s:e] = decode_logits(self._prior_rows(sub, e - s, dev), ids[s:e], res[s:e], tail[s:e], step)
        apply_top1(out, v, self.config["top1_margin"])
        return out
