"""The ``top1`` stream of the ``sq`` and ``imgprior`` codecs: the teacher's top-1 class, stored only
where the decoded logits would not already give it.

One symbol per label (uint16; uint32 when C > 65535):

* ``0``: the decoded logits' maximum is the teacher's top-1 class, and it leads every other
  logit by more than ``TOP1_EPS * (1 + |z_c|)`` - the same robustness rule as ``vq``'s rank
  symbols, so float noise of another device (a GPU's ``exp``/``log``) cannot change the winner;
* ``1 + c``: class ``c`` is the top-1; decoding lifts it as ``vq``'s ``lift`` rule does:
  ``z[c] = max(max(z) + margin, z[c])`` (the next float above ``max(z)`` when the sum rounds to it).

Mostly zeros, so the container's zstd coding makes the stream cheap.  Unlike ``vq`` there are
no rank symbols: these codecs' decoded logits tie exactly (two classes on one quantisation
level), and a rank among tied values is not defined.
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError
from ..format import rules
from ..lazy_torch import lazy_import

torch = lazy_import("torch", globals())  # imported on first use: file checks need no torch

TOP1_EPS = 2e-4      # symbol 0 only when the top class leads every other logit by more than eps*(1+|z_c|)


def top1_dtype(classes: int) -> np.dtype:
    """The symbol dtype: the largest symbol is ``1 + (C - 1) = C``."""
    return np.dtype(np.uint16) if classes <= 0xFFFF else np.dtype(np.uint32)


def top1_symbols(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Symbols for decoded logits ``z`` [n, C] (before the fix) and true classes ``c`` [n]."""
    c = c.long().view(-1, 1)
    zc = z.gather(1, c)
    eps = TOP1_EPS * (1.0 + zc.abs())
    others = z.scatter(1, c, float("-inf"))
    clear = (others.max(dim=1, keepdim=True).values < zc - eps).view(-1)
    return torch.where(clear, torch.zeros_like(c.view(-1)), 1 + c.view(-1))


def apply_top1(z: torch.Tensor, v: torch.Tensor, margin: float) -> None:
    """Make class ``v - 1`` the strict maximum of row ``z`` wherever ``v > 0`` (in place)."""
    v = v.long().view(-1)
    fix = (v != 0).nonzero().view(-1)
    if not fix.numel():
        return
    c = v[fix] - 1
    m = z[fix].max(dim=1).values
    new = m + margin
    new = torch.where(new > m, new, torch.nextafter(m, torch.full_like(m, float("inf"))))
    z[fix, c] = torch.maximum(new, z[fix, c])


def check_top1(v: np.ndarray, classes: int, codec: str) -> None:
    """Reject symbols above C (``codec-streams``)."""
    v = np.asarray(v)
    if v.size and int(v.max()) > classes:
        raise FormatError(f"{codec}: top1 symbol {int(v.max())} out of range (classes={classes})",
                          rule=rules.CODEC_STREAMS)
