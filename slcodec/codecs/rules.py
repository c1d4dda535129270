"""Type and range rules of codec config values: one table per codec (its ``options``), checked
before a codec builds anything, whether the config comes from a file or from a caller.

Each :class:`~slcodec.codecs.base.Option` carries a rule; :func:`check_options` applies them
all and returns the normalised values (plain ``int``/``float``/``str``/``list``).  The rules
print themselves as the rows of FORMAT.md's per-codec bounds tables (:func:`bounds_table`), and
a test checks that FORMAT.md holds exactly those rows, so the documented bounds are the checked ones.
No torch here: the container layer and ``slcodec stats`` import the codec registry without it.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

from ..errors import ConfigError


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(v) -> str:
    """A bound as FORMAT.md writes it: integers with thousands separators, floats as %g."""
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


@dataclasses.dataclass(frozen=True)
class Int:
    """An integer (not a bool) in ``[lo, hi]``; ``None`` too when ``optional``."""

    lo: int
    hi: int
    optional: bool = False

    def check(self, value):
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError
        value = int(value)
        if not self.lo <= value <= self.hi:
            raise ValueError
        return value

    def describe(self) -> str:
        return ("null or " if self.optional else "") + f"integer, {_num(self.lo)} .. {_num(self.hi)}"


@dataclasses.dataclass(frozen=True)
class Float:
    """A finite number (int or float, not a bool) between ``lo`` and ``hi`` (each end open or closed)."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError
        value = float(value)       # an int beyond the float range raises OverflowError: rejected too
        if not math.isfinite(value):
            raise ValueError
        if value < self.lo or value > self.hi or (self.lo_open and value == self.lo) \
                or (self.hi_open and value == self.hi):
            raise ValueError
        return value

    def describe(self) -> str:
        return (f"finite number, {'(' if self.lo_open else '['}{_num(self.lo)}, "
                f"{_num(self.hi)}{')' if self.hi_open else ']'}")


@dataclasses.dataclass(frozen=True)
class FloatList:
    """A list of ``min_items .. max_items`` numbers, each by ``item`` (a bare number is a list of one)."""

    item: Float
    min_items: int = 1
    max_items: int = 16

    def check(self, value):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not self.min_items <= len(value) <= self.max_items:
            raise ValueError
        return [self.item.check(v) for v in value]

    def describe(self) -> str:
        return f"list of {self.min_items} .. {self.max_items} items, each a {self.item.describe()}"


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of the given strings."""

    values: tuple

    def check(self, value):
        if not isinstance(value, str) or value not in self.values:
            raise ValueError
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(f'`"{v}"`' for v in self.values)


def check_options(codec_id: str, options, config: dict) -> dict:
    """``config`` (every option present) with each value checked by its option's rule and
    normalised; ConfigError naming the key, the bound and the value on the first violation."""
    out = dict(config)
    for opt in options:
        if opt.rule is None:
            continue
        try:
            out[opt.name] = opt.rule.check(config[opt.name])
        except (ValueError, TypeError, OverflowError):
            raise ConfigError(f"{codec_id}: {opt.name} must be: {opt.rule.describe()} "
                              f"(got {_short(config[opt.name])})") from None
    return out


def check_stored(codec_id: str, options, config: dict) -> None:
    """The rules of a config read from a file, where FORMAT.md's tables hold exactly: a list
    option is a list (a caller may pass a bare number for a list of one; a writer always stores
    the list, so a bare number in a file is a value of another type)."""
    for opt in options:
        if isinstance(opt.rule, FloatList) and opt.name in config and not isinstance(config[opt.name], list):
            raise ConfigError(f"{codec_id}: {opt.name} must be: {opt.rule.describe()} "
                              f"(got {_short(config[opt.name])})")


def bounds_table(codec_cls) -> list[str]:
    """The rows of FORMAT.md's bounds table of ``codec_cls``: ``| `key` | rule |``."""
    return [f"| `{o.name}` | {o.rule.describe()} |" for o in codec_cls.options if o.rule is not None]
