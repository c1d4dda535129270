"""FORMAT.md's stream coding `rans` (format 1.6), written from its Table, Model, Order and Chunk
bytes paragraphs alone, for the structural fuzzer's checker (benchmarks/fuzz_check.py) and file
model (benchmarks/fuzz_model.py).  It imports nothing from slcodec: a second reading of the
section, so that a file slcodec's decoder accepts and this one does not (or the reverse) shows.

:func:`decode_chunk` is the plain decoder (integers only, one symbol at a time; numpy for the
alphabet-wide sums).  :func:`encode_chunk` is its exact inverse (the stack coder: 32-bit words,
64-bit state, 24-bit precision), so that a mutation can store new rows coded `rans`.
"""
from __future__ import annotations

import struct

import numpy as np
import zstandard

TABLE_TOTAL = 1 << 16     # every column of the table sums to this
PRECISION = 24            # f sums to 2**24
MAX_CHUNK_ROWS = 1 << 16
MAX_COUNTERS = 1 << 22
MAX_ALPHABET = 1 << 16
_DCTX = zstandard.ZstdDecompressor()


class RansError(Exception):
    """The bytes break a rule of FORMAT.md's `rans` coding (rule `section-content`)."""


# ------------------------------------------------------------------------------------- table
def read_table(model: bytes, width: int, S: int) -> np.ndarray:
    """The table ``g [width, S]`` (int64): exactly one zstd frame declaring its content size,
    ``width * S`` little-endian uint32, each <= 65,536, every column summing to 65,536."""
    expected = width * S * 4
    try:
        fp = zstandard.get_frame_parameters(model)
    except zstandard.ZstdError as exc:
        raise RansError(f"table is not a zstd frame ({exc})") from None
    if fp.content_size != expected:
        raise RansError(f"table frame declares {fp.content_size} bytes, not {expected}")
    try:
        d = _DCTX.decompressobj()
        raw = d.decompress(model)
    except zstandard.ZstdError as exc:
        raise RansError(f"table frame does not inflate ({exc})") from None
    if not d.eof or d.unused_data or len(raw) != expected:
        raise RansError("table is not exactly one zstd frame of its declared size")
    g = np.frombuffer(raw, dtype="<u4").astype(np.int64).reshape(width, S)
    if g.size and g.max() > TABLE_TOTAL:
        raise RansError(f"a table frequency {int(g.max())} exceeds 65,536")
    if width and np.any(g.sum(axis=1) != TABLE_TOTAL):
        raise RansError("a table column does not sum to 65,536")
    return g


def pack_table(g: np.ndarray) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(
        np.ascontiguousarray(g, dtype="<u4").tobytes())


def table_from_counts(block: np.ndarray, S: int) -> np.ndarray:
    """FORMAT.md's writer rule, per column: ``g = 1 + floor(n (65,536 - u) / N)`` for each symbol that
    occurs (u of them, N in all), 0 for the others, the rest to the most frequent."""
    width = block.shape[1]
    g = np.zeros((width, S), dtype=np.int64)
    for m in range(width):
        n = np.bincount(block[:, m].astype(np.int64), minlength=S)[:S] if block.shape[0] else np.zeros(S, np.int64)
        if not n.sum():
            g[m, 0] = TABLE_TOTAL
            continue
        u, N = int((n > 0).sum()), int(n.sum())
        g[m] = np.where(n > 0, 1 + n * (TABLE_TOTAL - u) // N, 0)
        g[m, int(np.argmax(n))] += TABLE_TOTAL - int(g[m].sum())
    return g


# ------------------------------------------------------------------------------------- the model
def counter_count(chunk_rows: int, width: int, S: int, group_rows: int, increment: int) -> int:
    """Counters a decoder keeps for one chunk (FORMAT.md's Cap paragraph)."""
    if group_rows and increment:
        return (-(-(chunk_rows - 1) // group_rows) + 1) * width * S
    return width * S


def _frequencies(w: np.ndarray, top: int) -> np.ndarray:
    """``A = floor(2^24 (2^24 - S) / W)``, ``f = 1 + floor(w A / 2^24)``, the rest to ``top``."""
    S, W = w.size, int(w.sum())
    A = (1 << PRECISION) * ((1 << PRECISION) - S) // W
    f = 1 + (w * A >> PRECISION)   # w * A <= 2**48: exact in int64
    f[top] += (1 << PRECISION) - int(f.sum())
    return f


def _schedule(n: int, width: int, first_row: int, group_rows: int, group_phase: int, increment: int):
    """The chunk's symbols as (row, column, group) in FORMAT.md's order of (p, m, r)."""
    if group_rows and increment:
        groups = [(first_row + r + group_phase) // group_rows for r in range(n)]
        first = {}
        pos = []
        for r, gr in enumerate(groups):
            first.setdefault(gr, r)
            pos.append(r - first[gr])
    else:
        groups, pos = [0] * n, [0] * n
    return [(r, m, groups[r]) for _, m, r in sorted((pos[r], m, r) for r in range(n) for m in range(width))]


class _Model:
    def __init__(self, g: np.ndarray, increment: int, adaptive: bool):
        self.g, self.inc, self.adaptive = g, increment, adaptive
        self.top = [int(np.argmax(g[m])) for m in range(g.shape[0])]
        self.static = {}
        self.counts = {}

    def of(self, m: int, group: int):
        """(f, cdf) of column m's next symbol in ``group``."""
        c = self.counts.get((group, m)) if self.adaptive else None
        if c is None:
            if m not in self.static:
                f = _frequencies(self.g[m].copy(), self.top[m])
                self.static[m] = (f, np.concatenate([[0], np.cumsum(f)[:-1]]))
            return self.static[m]
        f = _frequencies(self.g[m] + self.inc * c, self.top[m])
        return f, np.concatenate([[0], np.cumsum(f)[:-1]])

    def saw(self, m: int, group: int, s: int):
        if self.adaptive:
            c = self.counts.setdefault((group, m), np.zeros(self.g.shape[1], np.int64))
            c[s] += 1


# ------------------------------------------------------------------------------------- chunks
def decode_chunk(data: bytes, n: int, g: np.ndarray, first_row: int, group_rows: int, group_phase: int,
                 increment: int) -> np.ndarray:
    """The ``[n, width]`` symbols of one chunk (int64); RansError for a chunk FORMAT.md rejects."""
    width, S = g.shape
    if len(data) % 4:
        raise RansError(f"chunk of {len(data)} bytes is not a whole number of 32-bit words")
    words = struct.unpack(f"<{len(data) // 4}I", data)
    L = len(words)
    if L and words[-1] == 0:
        raise RansError("chunk's last word is zero")
    x = 0 if L == 0 else words[-1] if L == 1 else (words[-1] << 32) | words[-2]
    nxt = L - 3
    model = _Model(g, increment, bool(group_rows and increment))
    out = np.zeros((n, width), dtype=np.int64)
    mask = (1 << PRECISION) - 1
    for r, m, group in _schedule(n, width, first_row, group_rows, group_phase, increment):
        f, cdf = model.of(m, group)
        q = x & mask
        s = int(np.searchsorted(cdf, q, side="right")) - 1
        if g[m, s] == 0:
            raise RansError(f"decoded symbol {s} of column {m} has table frequency 0")
        x = int(f[s]) * (x >> PRECISION) + q - int(cdf[s])
        if x < (1 << 32) and nxt >= 0:
            x = (x << 32) | words[nxt]
            nxt -= 1
        out[r, m] = s
        model.saw(m, group, s)
    if x != 0 or nxt >= 0:
        raise RansError(f"chunk does not end at state 0 with every word read (state {x}, {nxt + 1} words left)")
    return out


def encode_chunk(block: np.ndarray, g: np.ndarray, first_row: int, group_rows: int, group_phase: int,
                 increment: int) -> bytes:
    """The inverse of :func:`decode_chunk` (every symbol must have ``g[m][s] > 0``)."""
    n, width = block.shape
    model = _Model(g, increment, bool(group_rows and increment))
    steps = []
    for r, m, group in _schedule(n, width, first_row, group_rows, group_phase, increment):
        s = int(block[r, m])
        f, cdf = model.of(m, group)
        steps.append((int(f[s]), int(cdf[s])))
        model.saw(m, group, s)
    x, pushed = 0, []
    for f, c in reversed(steps):
        if (x >> (64 - PRECISION)) >= f:
            pushed.append(x & 0xFFFFFFFF)
            x >>= 32
        x = ((x // f) << PRECISION) | (x % f + c)
    tail = [x & 0xFFFFFFFF, x >> 32] if x >> 32 else ([x] if x else [])
    return struct.pack(f"<{len(pushed) + len(tail)}I", *pushed, *tail)
