"""A per-view top-k residual on top of a prior label: the classes a prior gets most wrong, each
stored as a step from the prior, plus one step that carries the view's own tail mass.

Shared by ``imgprior`` (the prior is the image's mean label; int8 levels) and ``vq`` with
``residual_k`` (format 1.8: the prior is the decoder's own output; uint8 levels offset by 127,
so that the container's ``rans`` coding, which takes unsigned symbols, can code them).  Only
additions and products at decode time, so every device decodes the same values from the same
prior.
"""
from __future__ import annotations

from ..lazy_torch import lazy_import

torch = lazy_import("torch", globals())  # imported on first use: file checks need no torch

#: levels are -MAX_LEVEL .. MAX_LEVEL steps from the prior
MAX_LEVEL = 127


def select_classes(score: "torch.Tensor", k: int) -> "torch.Tensor":
    """The k largest scores per row (non-negative), ties to the lower class id on every device:
    a unique integer key (the bits of a non-negative float32 order like the float)."""
    bits = score.clamp_min(0.0).contiguous().view(torch.int32).to(torch.int64)
    key = (bits << 32) | (0xFFFFFFFF - torch.arange(score.shape[1], device=score.device))
    return torch.topk(key, k, dim=1, largest=True, sorted=True).indices


def decode_logits(a, ids, res, tail, step: float):
    """The decoded logits of labels with prior rows ``a`` [n, C], stored classes ``ids`` [n, k]
    (int64), residual levels ``res`` [n, k] and tail levels ``tail`` [n, 1] (float32, in steps),
    before the top-1 fix (a new tensor)."""
    if ids.shape[1] == 0:
        return a.clone()
    z = a + tail * step
    return z.scatter_(1, ids, a.gather(1, ids) + res * step)


def encode_residual(lp, a, k: int, step: float):
    """``(ids, res, tail)`` of labels with log-probabilities ``lp`` [n, C] over prior rows ``a``
    [n, C] (logits; ``imgprior``'s are not normalised, and its files keep this exact arithmetic): ids int64 [n, k] in increasing order, res and tail float32
    levels in -127..127 ([n, k], [n, 1]).

    The classes are the k of largest ``|lp_c - a_c| * max(p_c, softmax(a)_c)`` (the prior's
    error weighted by the larger of the two probabilities: lower KL at T = 1 and 4 than ``|p - q|``
    on the committed fixture); written in increasing id order, which both zstd and rans code in
    fewer bits than score order.  The tail is ``log(P / Q)`` with P the view's probability
    outside the stored classes and Q the prior's: stored, not derived as ``1 - sum(stored)``,
    which would amplify the stored values' rounding."""
    p = lp.exp()
    ids = select_classes((lp - a).abs() * torch.maximum(p, torch.softmax(a, dim=1)), k).sort(dim=1).values
    res = torch.round((lp.gather(1, ids) - a.gather(1, ids)) / step).clamp(-MAX_LEVEL, MAX_LEVEL)
    tail_p = p.scatter(1, ids, 0.0).sum(1, keepdim=True).clamp_min(1e-30)
    tail_q = a.exp().scatter(1, ids, 0.0).sum(1, keepdim=True).clamp_min(1e-30)
    tail = torch.round((torch.log(tail_p) - torch.log(tail_q)) / step).clamp(-MAX_LEVEL, MAX_LEVEL)
    return ids, res, tail
