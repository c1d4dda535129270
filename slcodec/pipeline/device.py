"""The choices every encode and decode makes first: the codec when none is named, and the torch device."""
from __future__ import annotations

from ..errors import ConfigError

#: codecs tried in this order when none is named
DEFAULT_CODECS = ("vq", "fp16")


def default_codec() -> str:
    """The first of DEFAULT_CODECS that is registered."""
    from ..codecs.base import codec_ids
    known = codec_ids()
    return next(c for c in DEFAULT_CODECS if c in known)


def resolve_device(device) -> str:
    """``device`` (``"auto"``, ``"cpu"``, ``"cuda[:i]"``, ``"mps"``, or None for cpu) as a torch
    device string; a CUDA device without CUDA is a ConfigError."""
    import torch
    device = str(device or "cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {device!r} (use auto, cpu or cuda)")
    return device


__all__ = ["DEFAULT_CODECS", "default_codec", "resolve_device"]
