"""``fp32`` and ``fp16``: the label values as they are (logits or probabilities)."""
from __future__ import annotations

import numpy as np

from ..lazy_torch import lazy_import

from ..errors import ConfigError, FormatError
from ..format import rules
from .base import Codec, all_finite, check_classes, check_decode_size, register

torch = lazy_import("torch", globals())  # imported on first use: file checks need no torch


class _RawCodec(Codec):
    dtype: np.dtype

    def encode(self, labels, ctx):
        with np.errstate(over="ignore"):
            values = labels.detach().to("cpu", torch.float32).numpy().astype(self.dtype)
        if not np.isfinite(values).all():
            raise ConfigError(f"labels exceed the {self.dtype.name} range; use a wider codec (fp32)")
        return {"values": values}

    def decode(self, streams, ctx):
        values = streams["values"]
        check_decode_size(self.codec_id, values.shape[0], values.shape[1])
        if not ctx.streams_checked and not bool(torch.isfinite(values).all()):
            raise FormatError(f"{self.codec_id}: a value is NaN or infinite", rule=rules.CODEC_STREAMS)
        return values.to(ctx.device, torch.float32)

    def validate_streams(self, streams, classes):
        # a writer never stores a non-finite value (encode refuses them), and a reader's softmax
        # would turn one into a row of NaN
        if not all_finite(np.asarray(streams["values"])):
            raise FormatError(f"{self.codec_id}: a value is NaN or infinite", rule=rules.CODEC_STREAMS)

    def stream_specs(self, classes):
        return {"values": (self.dtype.name, check_classes(self.codec_id, classes))}


@register
class FP32(_RawCodec):
    """FP32 copy of the labels: lossless for FP32 (and FP16) sources."""

    codec_id = "fp32"
    dtype = np.dtype(np.float32)


@register
class FP16(_RawCodec):
    """FP16 copy of the labels: lossless with respect to an FP16 source."""

    codec_id = "fp16"
    dtype = np.dtype(np.float16)
    decode_owns_output = True    # the cast to float32 always makes a new tensor (fp32 decodes alias their streams)
