"""Codecs: one module per codec behind :class:`slcodec.codecs.base.Codec`."""
from .base import Codec, Context, Option, codec_ids, get_codec_class, register

__all__ = ["Codec", "Context", "Option", "codec_ids", "get_codec_class", "register"]
