"""The numpy paths of the ``rans`` stream coding as they were before the fast wave decoder (commit
31f3d05, slcodec/format/entropy.py), kept verbatim as a reference: ``tests/test_entropy.py`` checks
that the package writes the same bytes and decodes the same rows, and ``benchmarks/rans_speed.py``
times the package against it.  Not part of the package; nothing here is used by slcodec."""
from __future__ import annotations

import numpy as np

from slcodec.errors import FormatError

PRECISION = 24
PROB_TOTAL = 1 << PRECISION
TABLE_TOTAL = 1 << 16
INCREMENTS = (0, 256, 1024, 4096, 16384, 65536)
MAX_MODEL_CELLS = 1 << 22


def _bad(where, msg):
    raise FormatError(f"{where}: {msg}", rule="section-content")


def frequencies(weights, top):
    return _freq_minus_one(weights, top) + 1


def _freq_minus_one(weights, top):
    S = weights.shape[-1]
    W = weights.sum(-1, keepdims=True)
    A = (PROB_TOTAL * (PROB_TOTAL - S)) // W
    q = np.ascontiguousarray((weights * A) >> PRECISION)
    rest = (PROB_TOTAL - S) - q.sum(-1)
    flat = q.reshape(-1, S)
    assert np.shares_memory(flat, q)
    flat[np.arange(flat.shape[0]), np.broadcast_to(top, rest.shape).reshape(-1)] += rest.reshape(-1)
    return q


def _probabilities(weights, top):
    return _freq_minus_one(weights, top).astype(np.float64, order="C")


def table_top(table):
    return np.asarray(table).argmax(1)


class ChunkLayout:
    def __init__(self, first_row, n, group_rows, group_phase, increment):
        self.n = n
        self.adaptive = bool(group_rows) and bool(increment)
        if not self.adaptive or n == 0:
            self.groups = 1
            self.waves = [np.arange(n)] if n else []
            self.group_of = np.zeros(n, dtype=np.int64)
            return
        g = (first_row + group_phase + np.arange(n, dtype=np.int64)) // group_rows
        local = g - g[0]
        self.groups = int(local[-1]) + 1
        first_of = np.searchsorted(local, np.arange(self.groups))
        t = np.arange(n) - first_of[local]
        order = np.argsort(t, kind="stable")
        bounds = np.searchsorted(t[order], np.arange(int(t.max()) + 2))
        self.waves = [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
        self.group_of = local


def model_cells(chunk_rows, width, alphabet, group_rows, increment):
    if group_rows and increment:
        groups = -(-(chunk_rows - 1) // group_rows) + 1
        return groups * width * alphabet
    return width * alphabet


def encode_chunk(block, table, first_row, group_rows, group_phase, increment):
    import constriction as c
    n, width = block.shape
    S = table.shape[1]
    sym = np.ascontiguousarray(block, dtype=np.int64)
    table = np.asarray(table, dtype=np.int64)
    top = table_top(table)
    coder = c.stream.stack.AnsCoder()
    lay = ChunkLayout(first_row, n, group_rows, group_phase, increment)
    if not lay.adaptive:
        probs = _probabilities(table, top)
        for m in range(width - 1, -1, -1):
            model = c.stream.model.Categorical(probs[m], perfect=False)
            coder.encode_reverse(sym[:, m].astype(np.int32), model)
    else:
        family = c.stream.model.Categorical(perfect=False)
        counts = np.zeros((width, lay.groups, S), dtype=np.int64)
        cols = np.arange(width)[:, None]
        np.add.at(counts, (cols, lay.group_of[None, :], sym.T), 1)
        for rows in reversed(lay.waves):
            g = lay.group_of[rows]
            counts[cols, g[None, :], sym[rows].T] -= 1
            w = counts[:, g] * increment
            w += table[:, None, :]
            probs = _probabilities(w, np.broadcast_to(top[:, None], w.shape[:2]))
            coder.encode_reverse(sym[rows].T.reshape(-1).astype(np.int32), family, probs.reshape(-1, S))
    return np.asarray(coder.get_compressed(), dtype="<u4").tobytes()


def decode_chunk(data, n, table, first_row, group_rows, group_phase, increment, dtype, where):
    import constriction as c
    width, S = table.shape
    if len(data) % 4:
        _bad(where, f"coded chunk of {len(data)} bytes is not a whole number of 32-bit words")
    words = np.frombuffer(bytes(data), dtype="<u4").astype(np.uint32)
    out = np.empty((n, width), dtype=np.int64)
    lay = ChunkLayout(first_row, n, group_rows, group_phase, increment)
    try:
        coder = c.stream.stack.AnsCoder(words)
        top = table_top(table)
        if not lay.adaptive:
            probs = _probabilities(table, top)
            for m in range(width):
                out[:, m] = coder.decode(c.stream.model.Categorical(probs[m], perfect=False), n)
        else:
            family = c.stream.model.Categorical(perfect=False)
            counts = np.zeros((width, lay.groups, S), dtype=np.int64)
            cols = np.arange(width)[:, None]
            tops = None
            for rows in lay.waves:
                g = lay.group_of[rows]
                w = counts[:, g] * increment
                w += table[:, None, :]
                if tops is None or tops.shape[1] != len(rows):
                    tops = np.broadcast_to(top[:, None], (width, len(rows)))
                probs = _probabilities(w, tops)
                sym = np.asarray(coder.decode(family, probs.reshape(-1, S)), dtype=np.int64).reshape(width, len(rows))
                out[rows] = sym.T
                counts[cols, g[None, :], sym] += 1
        empty = coder.is_empty()
    except (ValueError, RuntimeError, OverflowError) as exc:
        _bad(where, f"coded chunk is not a valid rANS stream ({exc})")
    if not empty:
        _bad(where, f"coded chunk holds more than its {n} x {width} symbols (the coder is not back at its "
                    "initial state: a symbol count mismatch or bytes left over)")
    if n and (table[np.arange(width)[None, :], out] == 0).any():
        _bad(where, "decoded a symbol whose frequency in the stored table is 0")
    return out.astype(dtype)


def estimate_bits(chunks, table, first_rows, group_rows, group_phase, increment):
    table = np.asarray(table, dtype=np.int64)
    width, S = table.shape
    bits = 0.0
    cols = np.arange(width)
    for block, first in zip(chunks, first_rows):
        sym = np.asarray(block, dtype=np.int64)
        n = sym.shape[0]
        lay = ChunkLayout(first, n, group_rows, group_phase, increment)
        if not lay.adaptive:
            f = frequencies(table, table_top(table))
            bits -= float(np.log2(f[cols[None, :], sym] / PROB_TOTAL).sum())
            continue
        t = np.empty(n, dtype=np.int64)
        for i, rows in enumerate(lay.waves):
            t[rows] = i
        for m in range(width):
            key = lay.group_of * S + sym[:, m]
            order = np.argsort(key, kind="stable")
            ks = key[order]
            start = np.r_[0, np.flatnonzero(ks[1:] != ks[:-1]) + 1]
            run = np.zeros(n, dtype=np.int64)
            run[start] = 1
            head = np.cumsum(run) - 1
            occ = np.empty(n, dtype=np.int64)
            occ[order] = np.arange(n) - start[head]
            w = table[m, sym[:, m]] + increment * occ
            A = (PROB_TOTAL * (PROB_TOTAL - S)) // (TABLE_TOTAL + increment * t)
            p = (1 + ((w * A) >> PRECISION)) / PROB_TOTAL
            bits -= float(np.log2(p).sum())
    return bits


def choose_increment(chunks, table, first_rows, group_rows, group_phase, chunk_rows):
    width, S = table.shape
    best = None
    for inc in INCREMENTS if group_rows > 1 else (0,):
        if model_cells(chunk_rows, width, S, group_rows, inc) > MAX_MODEL_CELLS:
            continue
        bits = estimate_bits(chunks, table, first_rows, group_rows, group_phase, inc)
        if best is None or bits < best[0]:
            best = (bits, inc)
    return None if best is None else best[1]
