"""vq's image prior (format 1.2): each image's mean log-probabilities stored once, subtracted before
encoding and added back after decoding, so the codes describe only what a view adds."""
from __future__ import annotations

import numpy as np

from ...lazy_torch import lazy_import

torch = lazy_import("torch", globals())
F = lazy_import("torch.nn.functional", globals(), "F")

from ...errors import ConfigError, FormatError
from ...format import rules
from ..base import Context
from .config import IMAGE_BIAS_MAX_BITS


class ImagePriorMixin:
    """The image-prior part of :class:`~slcodec.codecs.vq.codec.VQCodec` (state set up by its validate_config)."""

    @staticmethod
    def _image_bias_worth(label_shape, classes) -> bool:
        return (label_shape is not None and len(label_shape) == 2
                and 16.0 * classes / int(label_shape[1]) <= IMAGE_BIAS_MAX_BITS)

    def fit_statistics(self, label_shape, classes):
        return ("image_mean_log_probs",) if self.wants_image_means(label_shape, classes) else ()

    def set_fit_statistic(self, name, value):
        if name != "image_mean_log_probs":
            return super().set_fit_statistic(name, value)
        self.set_image_means(value)

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
            raise FormatError("vq: label index outside the image_bias table", rule=rules.CODEC_PARAMS)
        return table[img.to(dev)]
