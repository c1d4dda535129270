"""The top-1 guarantee of vq: the ``top1`` stream's symbols and the rule that makes the stored
class the decoded argmax.  :func:`lift_reference` states the decoding rule once; the torch
(:func:`apply_top1`), numpy (:func:`_apply_top1_lift_cpu`) and table (``_FastDecoder.lift_top1``) backends
are tested equal to it."""
from __future__ import annotations

import numpy as np

from ...lazy_torch import lazy_import

torch = lazy_import("torch", globals())
F = lazy_import("torch.nn.functional", globals(), "F")

from .config import TOP1_EPS, TOP1_RANKS


def lift_values(mx, cur, margin: float):
    """The lifted logit of the stored class (rule ``lift``, numpy float32): ``max + margin``, at
    least the next float above ``max`` (a tiny margin on a huge logit rounds to ``max``), and never
    lowered below the class's own logit when ``margin > 0``.  Every backend ends with this step."""
    new = mx + np.float32(margin)
    new = np.where(new > mx, new, np.nextafter(mx, np.float32(np.inf)))
    return np.maximum(new, cur) if margin > 0 else new


def lift_reference(z: np.ndarray, v: np.ndarray, margin: float) -> np.ndarray:
    """THE decoding rule of the ``top1`` stream under ``top1_rule="lift"``, written plainly, one row
    at a time, for reference (tests hold every faster backend equal to it).  Returns a lifted copy.

    Symbol 0: the row is left as decoded.  Symbol 1..15: the stored class is the one at that
    position of the row sorted in decreasing order (ranks are written only where they are robust,
    so ties above the class do not matter).  Symbol >= 16: the class is ``symbol - 16``.  The
    class's logit becomes :func:`lift_values` of the row's maximum."""
    z = np.array(z, dtype=np.float32, copy=True)
    v = np.asarray(v).reshape(-1)
    for r in range(z.shape[0]):
        s = int(v[r])
        if s == 0:
            continue
        c = s - TOP1_RANKS if s >= TOP1_RANKS else int(np.argsort(-z[r], kind="stable")[s])
        z[r, c] = lift_values(z[r].max(), z[r, c], margin)
    return z

def top1_symbols(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Symbols of the ``top1`` stream: the rank of the true class ``c`` in decoded logits ``z``
    when it is < TOP1_RANKS and robust (no other logit within TOP1_EPS*(1+|z_c|) of z_c),
    else TOP1_RANKS + c (escape)."""
    c = c.long().view(-1, 1)
    zc = z.gather(1, c)
    eps = TOP1_EPS * (1.0 + zc.abs())
    gt = (z > zc + eps).sum(1)
    ge = (z >= zc - eps).sum(1)
    ok = (ge - gt == 1) & (gt < TOP1_RANKS)
    return torch.where(ok, gt, TOP1_RANKS + c.view(-1))


def _class_at_rank(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """For each row, the class at position ``v`` (1..15) of ``z`` sorted in decreasing order.

    Rank 1 (the most common symbol after 0) is the maximum once the first maximum is removed -
    valid because the encoder writes a rank only where exactly ``v`` logits lie above the class
    (by more than TOP1_EPS), so which of tied larger logits is removed does not matter; higher
    ranks use a top-(max rank + 1) selection, ranks 2-3 apart from deeper ones."""
    out = torch.empty_like(v)
    one = v == 1
    if bool(one.any()):
        w = z[one]
        w[torch.arange(w.shape[0], device=z.device), w.argmax(dim=1)] = float("-inf")
        out[one] = w.argmax(dim=1)
    # a top-k selection costs about k: small ranks (the bulk) are selected apart from the rare deep ones
    for sel in (~one & (v <= 3), v > 3):
        if bool(sel.any()):
            vm = v[sel]
            top = torch.topk(z[sel], int(vm.max()) + 1, dim=1).indices
            out[sel] = top.gather(1, vm.view(-1, 1)).view(-1)
    return out


def _apply_top1_lift_cpu(z: torch.Tensor, v: torch.Tensor, margin: float) -> None:
    """:func:`apply_top1` with rule ``lift`` on a CPU tensor, in numpy (in place, same result):
    a batch has few rows to fix, and on those few a handful of numpy calls cost a fraction of
    the equivalent torch operations."""
    zn, vn = z.numpy(), v.numpy()
    fix = np.flatnonzero(vn)
    if not fix.size:
        return
    zf, vf = zn[fix], vn[fix]
    rows = np.arange(fix.size)
    top = zf.argmax(axis=1)
    mx = zf[rows, top]
    c = top.copy()
    esc = vf >= TOP1_RANKS
    c[esc] = vf[esc] - TOP1_RANKS
    one = vf == 1
    if one.any():      # the maximum once the (unique: the rank is robust) first maximum is removed
        w = zf[one]
        w[np.arange(w.shape[0]), top[one]] = -np.inf
        c[one] = w.argmax(axis=1)
    deep = (vf > 1) & (vf < TOP1_RANKS)
    if deep.any():     # the top 16 of each row (unordered), then sorted: the class at rank v
        w = -zf[deep]
        kk = min(TOP1_RANKS, w.shape[1]) - 1
        cand = np.argpartition(w, kk, axis=1)[:, :kk + 1]
        order = np.argsort(np.take_along_axis(w, cand, axis=1), axis=1, kind="stable")
        ranked = np.take_along_axis(cand, order, axis=1)
        c[deep] = ranked[np.arange(ranked.shape[0]), vf[deep]]
    zn[fix, c] = lift_values(mx, zn[fix, c], margin)


def apply_top1(z: torch.Tensor, v: torch.Tensor, margin: float, rule: str = "lift",
               return_classes: bool = True) -> torch.Tensor | None:
    """Decode the ``top1`` symbols ``v`` against logits ``z`` and make that class the strict
    argmax of ``z`` (in place).  Where it is not already the decoder's first maximum, or the
    symbol is an escape: rule ``swap`` exchanges ``z[c]`` with the decoder's maximum (so the
    label keeps the decoder's confidence, now on the right class), rule ``lift`` (files
    written before ``top1_rule`` existed) sets ``z[c] = max(z)``; then ``z[c]`` is raised to at
    least the largest other logit + ``margin``.  Returns the classes (``return_classes``).

    Rows with symbol 0 are left untouched, so only the rows to fix (a few percent) are searched."""
    v = v.long().view(-1)
    fix = (v != 0).nonzero().view(-1)
    classes = z.argmax(dim=1) if return_classes else None
    if not fix.numel():
        return classes
    zf, vf = z[fix], v[fix]
    mxf, topf = zf.max(dim=1)
    cf = topf.clone()
    rk = vf < TOP1_RANKS
    if bool(rk.any()):
        cf[rk] = _class_at_rank(zf[rk], vf[rk])
    esc = ~rk
    if bool(esc.any()):
        cf[esc] = vf[esc] - TOP1_RANKS
    if classes is not None:
        classes[fix] = cf
    if rule == "lift":  # exactly as format-1.0 files were decoded
        m = mxf
        new = m + margin
        new = torch.where(new > m, new, torch.nextafter(m, torch.full_like(m, float("inf"))))
        z[fix, cf] = torch.maximum(new, z[fix, cf]) if margin > 0 else new
    else:
        m, tf = mxf, topf
        zc = z[fix, cf].clone()
        z[fix, tf] = zc
        z[fix, cf] = m
        others = z[fix].clone()
        others[torch.arange(fix.numel(), device=z.device), cf] = float("-inf")
        om = others.max(dim=1).values
        new = om + margin
        new = torch.where(new > om, new, torch.nextafter(om, torch.full_like(om, float("inf"))))
        z[fix, cf] = torch.maximum(z[fix, cf], new)
    return classes


def train_top1(z: torch.Tensor, c: torch.Tensor, margin: float, rule: str = "lift") -> torch.Tensor:
    """Differentiable training counterpart of :func:`apply_top1` with the true classes c."""
    mx, am = z.max(dim=1, keepdim=True)
    c = c.long().view(-1, 1)
    wrong = am != c
    zc = z.gather(1, c)
    out = z.scatter(1, c, torch.where(wrong, mx + (margin if rule == "lift" else 0.0), zc))
    if rule == "swap":
        out = out.scatter(1, am, torch.where(wrong, zc, mx))
    return out
