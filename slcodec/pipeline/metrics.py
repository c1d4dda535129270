"""Fidelity of decoded labels against a reference: KL(p||q) at temperatures, top-1 / top-5 agreement."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def _log_space(x: torch.Tensor, kind: str) -> torch.Tensor:
    return torch.log(x.clamp_min(torch.finfo(torch.float32).tiny)) if kind == "probs" else x


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-row KL(softmax(p/T) || softmax(q/T)) in nats."""
    logp = torch.log_softmax(p_logits / temperature, dim=1)
    logq = torch.log_softmax(q_logits / temperature, dim=1)
    # clamp: rounding can make a KL of identical rows a hair below zero
    return (logp.exp() * (logp - logq)).sum(dim=1).clamp_min(0.0)


def compare(p_logits: torch.Tensor, q_logits: torch.Tensor, temperatures=(1.0,)) -> dict:
    """Means over rows; both arguments are log-space (logits or log-probs)."""
    out = {"labels": int(p_logits.shape[0]),
           "kl": {_tkey(t): float(kl_divergence(p_logits, q_logits, t).mean()) for t in temperatures},
           "top1_agreement": float((p_logits.argmax(1) == q_logits.argmax(1)).float().mean())}
    k = min(5, p_logits.shape[1])
    tp, tq = p_logits.topk(k, dim=1).indices, q_logits.topk(k, dim=1).indices
    out["top5_overlap"] = float((tp[:, :, None] == tq[:, None, :]).any(2).float().mean())
    return out


def _tkey(t) -> str:
    return f"{float(t):g}"


def reader_fidelity(reader, reference, temperatures=None, batch_size: int = 8192) -> dict:
    """Compare every label of ``reader`` with ``reference`` (a LabelSource of the same shape).

    ``kl``: mean KL(p||q) per temperature; ``kl_spread``: its median, 99th percentile and maximum
    over the labels (a mean can hide a few labels decoded badly)."""
    temperatures = list(temperatures or reader.temperatures or [1.0])
    if tuple(reference.shape) != tuple(reader.shape):
        raise InputError(f"{reference.path}: reference shape {list(reference.shape)} differs from the "
                         f"file's {list(reader.shape)}")
    rows = reference.rows()
    sums = {"top1_agreement": 0.0, "top5_overlap": 0.0}
    n = rows.shape[0]
    per_label = {_tkey(t): np.empty(n, dtype=np.float32) for t in temperatures}
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        p = _log_space(torch.from_numpy(np.array(rows[start:stop], dtype=np.float32)), reference.kind)
        q = reader.decode(slice(start, stop), as_="log_probs")
        part = compare(p, q, ())
        for t in temperatures:
            per_label[_tkey(t)][start:stop] = kl_divergence(p, q, t).numpy()
        w = (stop - start)
        sums["top1_agreement"] += part["top1_agreement"] * w
        sums["top5_overlap"] += part["top5_overlap"] * w
    return {"reference": reference.path, "labels": n,
            "kl": {t: float(v.mean(dtype=np.float64)) for t, v in per_label.items()},
            "kl_spread": {t: {"median": float(np.median(v)), "p99": float(np.quantile(v, 0.99)),
                              "max": float(v.max())} for t, v in per_label.items() if n},
            "top1_agreement": sums["top1_agreement"] / n, "top5_overlap": sums["top5_overlap"] / n}
