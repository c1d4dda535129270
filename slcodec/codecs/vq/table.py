"""vq's inference decoder: the first layer fused into per-code tables and, for small code spaces,
a logits table of every code combination with precomputed top-1 rankings."""
from __future__ import annotations

import numpy as np

from ...lazy_torch import lazy_import, no_grad

torch = lazy_import("torch", globals())
F = lazy_import("torch.nn.functional", globals(), "F")

from .config import DECODE_TABLE_MAX_BYTES, DECODE_TABLE_MAX_MACS, TOP1_RANKS
from .networks import _Decoder, _gelu
from .top1 import lift_values


class _FastDecoder:
    """Inference-only decoder (float32, one device): the first layer fused into per-code tables,
    and - when every combination of codes fits in ``table_max_bytes`` of logits (K ** M rows,
    e.g. the one-codebook configs of small files) - the whole decoder evaluated once into a
    logits table, so decoding a label is a row gather instead of a GEMM."""

    def __init__(self, dec: _Decoder, device, table_max_bytes: int = DECODE_TABLE_MAX_BYTES):
        t = {k: v.detach().to(device=device, dtype=torch.float32) for k, v in dec.t.items()}
        M, K, d = t["codebooks"].shape
        w_in = t["w_in"].view(M, d, -1)
        self.code_tab = torch.bmm(t["codebooks"], w_in).reshape(M * K, -1).contiguous()   # [M*K, H]
        self.b_in = t["b_in"]
        self.M, self.K = M, K
        self.offs = torch.arange(M, device=device) * K
        self.hidden = [(t[f"w_h{i}"], t[f"b_h{i}"]) for i in range(dec.layers())]
        self.w_out, self.b_out = t["w_out"].contiguous(), t["b_out"]
        self.table = self.ranked_np = self.top_np = None
        C, H = self.w_out.shape[1], self.b_in.shape[0]
        build_macs = K ** M * (M * H + H * H * len(self.hidden) + H * C)
        if K ** M * C * 4 <= table_max_bytes and build_macs <= DECODE_TABLE_MAX_MACS:
            self.table = self._all_combinations(device)
            if self.table.device.type == "cpu":
                # each row's first TOP1_RANKS classes in decreasing order and its maximum, so a
                # top1 symbol is resolved by a lookup (ranks are robust: exactly v logits lie
                # above the class by more than TOP1_EPS, so ties among them do not matter)
                top = torch.topk(self.table, min(TOP1_RANKS, C), dim=1)
                self.ranked_np = top.indices.to(torch.int32).numpy()
                self.top_np = top.values[:, 0].numpy().copy()

    def _all_combinations(self, device):
        """Logits of every code combination, row ``sum_m idx_m * K ** (M - 1 - m)``."""
        M, K = self.M, self.K
        C, H = self.w_out.shape[1], self.b_in.shape[0]
        self.strides = K ** torch.arange(M - 1, -1, -1, device=device)
        table = torch.empty((K ** M, C), dtype=torch.float32, device=device)
        step = max(1, (1 << 22) // max(C, H))      # rows per chunk: ~16 MiB of activations
        for i in range(0, K ** M, step):
            combos = torch.arange(i, min(i + step, K ** M), device=device)
            self._mlp((combos.view(-1, 1) // self.strides) % K, out=table[i:i + step])
        return table

    @no_grad
    def _mlp(self, idx, out=None):
        flat = idx.long() + self.offs
        h = F.embedding_bag(flat, self.code_tab, mode="sum") + self.b_in
        h = _gelu(h)
        for w, b in self.hidden:
            h = h + _gelu(torch.addmm(b, h, w))
        return torch.addmm(self.b_out, h, self.w_out, out=out)

    def table_rows(self, idx):
        """The logits-table row of each label's codes ``idx [n, M]``."""
        return idx.long().view(-1) if self.M == 1 else (idx.long() * self.strides).sum(dim=1)

    @no_grad
    def __call__(self, idx, out=None, rows=None):
        """Logits of codes ``idx [n, M]`` (``rows``: their :meth:`table_rows`, if already known)."""
        if self.table is None:
            return self._mlp(idx, out=out)
        return torch.index_select(self.table, 0, self.table_rows(idx) if rows is None else rows, out=out)

    def lift_top1(self, z, rows, v, margin: float) -> None:
        """:func:`apply_top1` with rule ``lift`` for CPU logits ``z`` read from the table rows
        ``rows`` (no image prior added), in place: each fixed row's class and maximum are looked up."""
        zn, vn = z.numpy(), v.numpy()
        fix = np.flatnonzero(vn)
        if not fix.size:
            return
        vf = vn[fix]
        rows = rows.numpy()[fix]
        ranked = vf < TOP1_RANKS
        c = np.where(ranked, self.ranked_np[rows, np.where(ranked, vf, 0)], vf - TOP1_RANKS)
        mx = self.top_np[rows]
        zn[fix, c] = lift_values(mx, zn[fix, c], margin)
