"""Argument checks shared by every layer (numpy-free and torch-free, so the format layer may use them)."""
from __future__ import annotations

import numbers

from .errors import ConfigError


def check_int(value, what: str, lo: int = 1, hi: int | None = None) -> int:
    """``value`` as a plain int in ``[lo, hi]`` (a bool is not an integer here), else a
    ConfigError naming ``what``: ``check_int(batch_size, "batch_size")`` for a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or value < lo or (hi is not None and value > hi):
        if lo == 1 and hi is None:
            want = "a positive integer"
        elif hi is None:
            want = f"an integer >= {lo:,}"
        else:
            want = f"an integer in {lo:,} .. {hi:,}"
        raise ConfigError(f"{what} must be {want}, got {value!r}")
    return int(value)
