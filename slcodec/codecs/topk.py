"""``topk``: FKD-style storage - the k most probable class ids and their FP16 probabilities.

Decoding puts the stored probabilities back at their classes and spreads the left-over
mass ``max(0, 1 - sum(top-k values))`` evenly over the other ``C - k`` classes, as FKD
does.  Probabilities are taken at temperature 1 (softmax of the logits); among equal
probabilities the lower class id is kept.
"""
from __future__ import annotations

import numpy as np

from ..lazy_torch import lazy_import

from ..format import limits, rules
from ..errors import ConfigError, FormatError
from .base import Codec, Option, all_finite, check_classes, check_decode_size, register
from .rules import Int

torch = lazy_import("torch", globals())  # imported on first use: file checks need no torch


@register
class TopK(Codec):
    codec_id = "topk"
    decode_owns_output = True
    options = (Option("k", int, 5, "topk: number of classes kept per label (FKD uses 5)",
                      rule=Int(1, limits.MAX_CLASSES)),)

    def _k(self, classes):
        check_classes(self.codec_id, classes)
        k = self.config["k"]
        if k > classes:
            raise ConfigError(f"topk: k={k} exceeds the number of classes ({classes})")
        return k

    @staticmethod
    def _id_dtype(classes):
        return np.dtype(np.uint16) if classes <= 2**16 else np.dtype(np.uint32)

    def encode(self, labels, ctx):
        k = self._k(labels.shape[1])
        labels = labels.detach().to(torch.float32)
        probs = torch.softmax(labels, dim=1) if ctx.source_kind == "logits" else labels
        # Select on a unique integer key so that ties go to the lower class id on every device
        # (torch.topk's order among equal values is unspecified): the bits of a non-negative
        # float32 order like the float, and the low word ranks lower ids higher.
        bits = probs.clamp_min(0.0).contiguous().view(torch.int32).to(torch.int64)
        key = (bits << 32) | (0xFFFFFFFF - torch.arange(probs.shape[1], device=probs.device))
        ids = torch.topk(key, k, dim=1, largest=True, sorted=True).indices
        with np.errstate(over="ignore"):   # an overflow is refused just below
            values = torch.gather(probs, 1, ids).cpu().numpy().astype(np.float16)
        if not np.isfinite(values).all():
            raise ConfigError("topk: a kept probability is NaN or beyond the float16 range "
                              "(probabilities must be finite numbers <= 65504)")
        return {"ids": ids.cpu().numpy().astype(self._id_dtype(labels.shape[1])),
                "values": values}

    def decode(self, streams, ctx):
        ids = streams["ids"].to(ctx.device).long()
        values = streams["values"].to(ctx.device, torch.float32)
        classes, k = ctx.classes, ids.shape[1]
        check_decode_size(self.codec_id, ids.shape[0], classes)
        if not ctx.streams_checked and ids.numel() and (
                int(ids.min()) < 0 or int(ids.max()) >= classes or not bool(torch.isfinite(values).all())):
            raise FormatError("topk: a class id out of range or a value NaN or infinite", rule=rules.CODEC_STREAMS)
        rest = (1.0 - values.sum(dim=1, keepdim=True)).clamp_min(0.0) / max(classes - k, 1)
        probs = rest.expand(ids.shape[0], classes).clone()
        probs.scatter_(1, ids, values)
        return probs

    def validate_streams(self, streams, classes):
        ids = streams["ids"]
        if ids.size and int(ids.max()) >= classes:
            raise FormatError(f"topk: class id {int(ids.max())} out of range (classes={classes})",
                              rule=rules.CODEC_STREAMS)
        if not all_finite(np.asarray(streams["values"])):
            raise FormatError("topk: a stored probability is NaN or infinite", rule=rules.CODEC_STREAMS)

    def decoded_kind(self, source_kind):
        return "probs"

    def stream_specs(self, classes):
        k = self._k(classes)
        return {"ids": (self._id_dtype(classes).name, k), "values": ("float16", k)}
