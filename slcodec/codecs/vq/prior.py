"""vq's image prior: a per-image row of log-probabilities stored once, subtracted before encoding
and added back after decoding, so the codes describe only what a view adds.  ``image_bias="on"``
(format 1.2) stores each image's exact mean log-probabilities (``[images, C]`` in param_dtype);
``image_bias="sparse"`` (format 1.7) stores only each image's k most likely classes at uint8 levels
and one offset of a set-wide profile for the rest, a few bits per label where the exact table costs
tens (C = 1000, 300 views: 5.2 against 53 bits for the default k = 64)."""
from __future__ import annotations

import numpy as np

from ...lazy_torch import lazy_import

torch = lazy_import("torch", globals())
F = lazy_import("torch.nn.functional", globals(), "F")

from ...errors import ConfigError, FormatError
from ...format import rules
from ..base import Context
from .config import IMAGE_BIAS_MAX_BITS, SPARSE_PRIOR_DEPTH, SPARSE_PRIOR_LIMIT, SPARSE_PRIOR_MAX_BITS

#: step of a sparse prior's uint8 levels: level q decodes to -(q * step) ** 2 nats below the image's
#: top class (square-root companding: 0.06 nats apart 1 nat below the top, 0.5 nats 64 nats below)
SPARSE_PRIOR_STEP = np.float32(np.sqrt(SPARSE_PRIOR_DEPTH) / 255)


def sparse_prior_ids_dtype(classes: int) -> np.dtype:
    return np.dtype(np.uint16) if classes <= 1 << 16 else np.dtype(np.uint32)


def quantise_sparse_prior(means: np.ndarray, k: int, param_dtype: str = "float16") -> dict:
    """Per-image mean log-probabilities ``[I, C]`` -> the stored sparse prior (FORMAT.md, ``vq``,
    format 1.7): for each image its ``k`` most likely classes (``image_prior_ids`` ``[I, k]``, in
    increasing order) at uint8 companded levels below the image's top (``image_prior_levels``), every
    other class at ``image_prior_profile[c] + image_prior_offset[g]``: one profile of the whole set
    (its mean log-probabilities, top at 0) shifted per image by the mean gap between the image's
    unlisted classes and the profile (least squares in log space, the space the codes describe)."""
    m = np.maximum(np.asarray(means, dtype=np.float64), -SPARSE_PRIOR_LIMIT)
    I, C = m.shape
    if not 1 <= k < C:
        raise ConfigError(f"vq: image_bias_k={k} must be in 1 .. C - 1 = {C - 1}")
    r = m - m.max(axis=1, keepdims=True)                         # <= 0, top at 0
    # k largest per row, ties to the lower id (stable sort of the negated values)
    ids = np.sort(np.argsort(-r, axis=1, kind="stable")[:, :k], axis=1)
    listed = np.take_along_axis(r, ids, axis=1)
    q = np.clip(np.rint(np.sqrt(-listed) / float(SPARSE_PRIOR_STEP)), 0, 255).astype(np.uint8)
    profile = r.mean(axis=0)
    profile = np.maximum(profile - profile.max(), -SPARSE_PRIOR_LIMIT)
    pdt = np.dtype(param_dtype)
    profile_st = profile.astype(pdt)
    rest = np.ones((I, C), dtype=bool)
    np.put_along_axis(rest, ids, False, axis=1)
    gap = np.where(rest, r - profile_st.astype(np.float64)[None], 0.0).sum(axis=1) / (C - k)
    offset = np.clip(gap, -SPARSE_PRIOR_LIMIT, SPARSE_PRIOR_LIMIT).astype(pdt)
    return {"image_prior_ids": ids.astype(sparse_prior_ids_dtype(C)), "image_prior_levels": q,
            "image_prior_offset": offset, "image_prior_profile": profile_st}


def sparse_prior_table(params: dict) -> np.ndarray:
    """The prior rows ``[I, C]`` (float32) a reader builds from a sparse prior's params (numpy; the
    same float32 operations as :func:`sparse_prior_rows`)."""
    ids = params["image_prior_ids"].astype(np.int64)
    prof = params["image_prior_profile"].astype(np.float32)
    off = params["image_prior_offset"].astype(np.float32)
    table = prof[None, :] + off[:, None]
    d = params["image_prior_levels"].astype(np.float32) * SPARSE_PRIOR_STEP
    np.put_along_axis(table, ids, -(d * d), axis=1)
    return table


def sparse_prior_rows(t: dict, img):
    """Prior rows ``[n, C]`` (float32 torch) of images ``img`` (int64 tensor) from the sparse prior's
    float32 tensors ``t`` (ids int64, levels, offset, profile): ``profile[c] + offset[g]`` for every
    class, then ``-(level * step) ** 2`` at the image's listed classes."""
    rows = t["profile"].unsqueeze(0) + t["offset"][img].unsqueeze(1)
    d = t["levels"][img] * float(SPARSE_PRIOR_STEP)
    return rows.scatter_(1, t["ids"][img], -(d * d))


def sparse_prior_abs_bound(params: dict) -> float:
    """A bound on |entry| of every row of a sparse prior: ``max|profile| + max|offset|``, or the
    deepest level (255 * step) ** 2 = 64 nats (what a reader adds to the decoder's logit bound)."""
    return max(float(np.abs(params["image_prior_profile"]).max(initial=0.0))
               + float(np.abs(params["image_prior_offset"]).max(initial=0.0)), SPARSE_PRIOR_DEPTH)


def sparse_prior_bits(images: int, augs: int, classes: int, k: int, param_bytes: int = 2) -> float:
    """Bits per label of a sparse prior's params for ``[images, augs, classes]`` labels."""
    per_image = k * 8 * (sparse_prior_ids_dtype(classes).itemsize + 1) + 8 * param_bytes
    return (images * per_image + 8 * param_bytes * classes) / max(1, images * augs)


def check_sparse_prior(params: dict, images: int, classes: int, k: int, pdt) -> None:
    """FormatError (``codec-params``) unless the sparse prior's arrays are exactly as FORMAT.md, ``vq``
    (format 1.7) says: names, dtypes, shapes, ids strictly increasing in each row and < C, offset
    and profile finite and within +-SPARSE_PRIOR_LIMIT."""
    want = {"image_prior_ids": (sparse_prior_ids_dtype(classes), (images, k)),
            "image_prior_levels": (np.dtype(np.uint8), (images, k)),
            "image_prior_offset": (pdt, (images,)), "image_prior_profile": (pdt, (classes,))}
    for name, (dt, shape) in want.items():
        a = params.get(name)
        if not isinstance(a, np.ndarray) or a.dtype != dt or tuple(a.shape) != shape:
            got = (getattr(a, "dtype", type(a).__name__), getattr(a, "shape", None))
            raise FormatError(f"vq: parameter {name!r} is {got}, expected {dt} {shape}", rule=rules.CODEC_PARAMS)
    ids = params["image_prior_ids"]
    if ids.size and int(ids.max()) >= classes:
        raise FormatError(f"vq: image_prior_ids holds class {int(ids.max())}, beyond C = {classes}",
                          rule=rules.CODEC_PARAMS)
    if k > 1 and bool((ids[:, 1:] <= ids[:, :-1]).any()):
        raise FormatError("vq: image_prior_ids must be strictly increasing in each row (a class listed twice "
                          "or out of order)", rule=rules.CODEC_PARAMS)
    for name in ("image_prior_offset", "image_prior_profile"):
        a = params[name]
        if not np.isfinite(a).all() or (a.size and float(np.abs(a).max()) > SPARSE_PRIOR_LIMIT):
            raise FormatError(f"vq: parameter {name!r} must be finite and within +-{SPARSE_PRIOR_LIMIT:g}",
                              rule=rules.CODEC_PARAMS)


class ImagePriorMixin:
    """The image-prior part of :class:`~slcodec.codecs.vq.codec.VQCodec` (state set up by its validate_config)."""

    @staticmethod
    def _image_bias_worth(label_shape, classes) -> bool:
        return (label_shape is not None and len(label_shape) == 2
                and 16.0 * classes / int(label_shape[1]) <= IMAGE_BIAS_MAX_BITS)

    def _sparse_worth(self, label_shape, classes) -> bool:
        """``auto``: the sparse prior where the exact table costs more than IMAGE_BIAS_MAX_BITS, its k
        classes are at most a quarter of C (a list, not a table) and its params cost at most
        SPARSE_PRIOR_MAX_BITS per label (C = 1000, k = 64: from 196 views per image)."""
        if label_shape is None or len(label_shape) != 2:
            return False
        k = self.config["image_bias_k"]
        pb = np.dtype(self._table_dtype()).itemsize
        return (4 * k <= classes
                and sparse_prior_bits(int(label_shape[0]), int(label_shape[1]), classes, k, pb) <= SPARSE_PRIOR_MAX_BITS)

    def _auto_prior(self, label_shape, classes) -> str:
        if self._image_bias_worth(label_shape, classes):
            return "on"
        return "sparse" if self._sparse_worth(label_shape, classes) else "off"

    def fit_statistics(self, label_shape, classes):
        return ("image_mean_log_probs",) if self.wants_image_means(label_shape, classes) else ()

    def set_fit_statistic(self, name, value):
        if name != "image_mean_log_probs":
            return super().set_fit_statistic(name, value)
        self.set_image_means(value)

    def wants_image_means(self, label_shape, classes):
        m = self.config["image_bias"]
        return m in ("on", "sparse") or (m == "auto" and self._auto_prior(label_shape, classes) != "off")

    def set_image_means(self, means):
        means = np.asarray(means, dtype=np.float32)
        if means.ndim != 2 or means.shape[0] < 1 or not np.isfinite(means).all():
            raise ConfigError(f"vq: image means must be a finite [images, C] array, got shape {list(means.shape)}")
        # log-probabilities below -1e4 are zero probabilities in any float; the clamp keeps the
        # stored table finite in float16 (masked logits of -1e5 would overflow it)
        self._image_means = np.maximum(means, np.float32(-1e4))

    def _resolve_image_bias(self, ctx: Context, C: int, n_rows: int) -> bool:
        """Resolve ``image_bias`` for a fit (stored as on/sparse/off) and set up the prior."""
        cfg = self.config
        mode, shape = cfg["image_bias"], ctx.label_shape
        if mode == "auto":
            mode = self._auto_prior(shape, C) if self._image_means is not None else "off"
        if mode in ("on", "sparse"):
            if shape is None or len(shape) != 2:
                raise ConfigError("vq: image_bias needs labels shaped [images, augmentations, C]")
            if self._image_means is None:
                raise ConfigError(f"vq: image_bias={mode} needs the per-image mean log-probabilities of the whole set "
                                  "(slcodec.encode computes them; with a Writer, call set_image_means first)")
            if self._image_means.shape != (int(shape[0]), C):
                raise ConfigError(f"vq: image means are {list(self._image_means.shape)}, "
                                  f"expected [{int(shape[0])}, {C}]")
            if ctx.rows is None or len(ctx.rows) != n_rows:
                raise ConfigError("vq: image_bias needs the label indices of the fit sample (ctx.rows)")
            if mode == "on":
                self._set_bias(self._image_means.astype(self._table_dtype()), int(shape[1]))
            else:
                # quantised here, and the fit, the encoder and a reader all use the dequantised rows
                self._set_sparse(quantise_sparse_prior(self._image_means, cfg["image_bias_k"], self._table_dtype()),
                                 int(shape[1]))
        else:
            self._set_bias(None, None)
        cfg["image_bias"] = mode
        return mode != "off"

    def _set_bias(self, table_np, augs):
        self._bias_np = table_np
        self._sparse_np = None
        self._bias_t = None
        self._bias_dev = {}
        self._augs = augs

    def _set_sparse(self, params_np, augs):
        self._set_bias(None, augs)
        self._sparse_np = params_np

    @property
    def _prior_on(self) -> bool:
        return self._bias_np is not None or self._sparse_np is not None

    def _prior_images(self) -> int:
        return (self._bias_np if self._bias_np is not None else self._sparse_np["image_prior_offset"]).shape[0]

    def _image_rows(self, img, dev):
        """The prior rows ``[n, C]`` (float32 on dev) of images ``img`` (int64 tensor on dev)."""
        key = str(dev)
        t = self._bias_dev.get(key)
        if t is None:
            if self._sparse_np is not None:
                s = self._sparse_np
                t = {"ids": torch.from_numpy(s["image_prior_ids"].astype(np.int64)),
                     "levels": torch.from_numpy(s["image_prior_levels"].astype(np.float32)),
                     "offset": torch.from_numpy(s["image_prior_offset"].astype(np.float32)),
                     "profile": torch.from_numpy(s["image_prior_profile"].astype(np.float32))}
                t = {k: v.to(dev) for k, v in t.items()}
            else:
                t = self._bias.to(dev)
            self._bias_dev[key] = t
        return sparse_prior_rows(t, img) if isinstance(t, dict) else t[img]

    def _bias_rows(self, ctx: Context, n: int, dev):
        """The prior rows [n, C] of the labels ``ctx.rows`` (float32 on dev), or None when off."""
        if not self._prior_on:
            return None
        rows = ctx.rows
        if rows is None or len(rows) != n:
            raise ConfigError("vq: a file with image_bias decodes only with the labels' indices (ctx.rows)")
        img = torch.as_tensor(np.asarray(rows, dtype=np.int64) // self._augs)
        if img.numel() and (int(img.min()) < 0 or int(img.max()) >= self._prior_images()):
            raise FormatError("vq: label index outside the image_bias table", rule=rules.CODEC_PARAMS)
        return self._image_rows(img.to(dev), dev)
