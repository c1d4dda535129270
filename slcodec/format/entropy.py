"""The ``rans`` stream coding (format 1.6): integer-symbol streams entropy coded with rANS, under a
frequency table stored in the stream section and, optionally, per-image adaptive counts.

No torch; numpy and `constriction <https://github.com/bamler-lab/constriction>`_ (a Rust rANS
coder with vectorised categorical models) only.  FORMAT.md, "Stream coding `rans`", is the
contract; this module is slcodec's implementation of it.

The model of every symbol is a table of integer frequencies ``f`` (each >= 1, summing to exactly
``2**24``) computed with integer multiplications and shifts from the stored table and the counts
of what was already decoded (:func:`frequencies`).  constriction takes float probabilities and quantises them
to its own 24-bit fixed point; we hand it ``f - 1`` as float64.  Those are integers below
``2**24`` (exact in float64), their sum is exactly ``2**24 - S`` whatever the order of addition,
so constriction's scale factor ``(2**24 - S) / sum`` is exactly 1.0 and its quantiser (one extra
unit per symbol, cumulative sums floored) returns ``f`` itself: no rounding happens anywhere, on
any platform.  ``tests/test_entropy.py`` decodes constriction's output with a plain-Python decoder
written from FORMAT.md alone, so a constriction release that quantised differently would fail it.
"""
from __future__ import annotations

import math

import numpy as np
import zstandard

from . import rules
from ..errors import FormatError

#: bits of the coder's fixed-point probabilities: every symbol's frequencies sum to 2**PRECISION
PRECISION = 24
PROB_TOTAL = 1 << PRECISION
#: the stored table of each column sums to exactly this
TABLE_TOTAL = 1 << 16
#: symbols of a stream coded with rans: 2 .. 2**16 (a larger alphabet is left to zstd)
MAX_ALPHABET = 1 << 16
#: weight of one decoded occurrence in an image's adaptive counts: 0 (static table) .. 2**16
MAX_INCREMENT = 1 << 16
#: rows of a rans chunk (keeps every weight w * 2**24 below 2**63 in int64 arithmetic)
MAX_CHUNK_ROWS = 1 << 16
#: counters a decoder keeps for one chunk (groups in the chunk x width x alphabet; width x
#: alphabet for a static model): bounds its memory (float64 weights, and one wave's probability
#: rows: 32 MiB each)
MAX_MODEL_CELLS = 1 << 22
#: the increments a writer tries (ideal code lengths, then the best one is coded); 2**16 / inc is
#: the probe's mixing weight alpha (benchmarks/vq_scale_probes.py): 1 .. 256
INCREMENTS = (0, 256, 1024, 4096, 16384, 65536)
#: dtypes a rans stream may have (symbols are unsigned integers)
DTYPES = ("uint8", "uint16", "uint32")


def _bad(where: str, msg: str, rule: str = rules.SECTION_CONTENT):
    raise FormatError(f"{where}: {msg}", rule=rule)


def _coder():
    import constriction
    return constriction


# ----------------------------------------------------------------------------- the model
def normalise_counts(counts: np.ndarray) -> np.ndarray:
    """Stored table ``uint32 [width, S]`` from symbol counts: each row sums to TABLE_TOTAL, every
    symbol that occurs gets at least 1 (largest share of the rest to the most frequent symbol)."""
    counts = np.asarray(counts, dtype=np.int64)
    width, S = counts.shape
    used = counts > 0
    n_used = used.sum(1, keepdims=True)
    if (n_used > TABLE_TOTAL).any() or (n_used == 0).any():
        raise ValueError("cannot build a frequency table: a column has no symbols or more than 2**16")
    total = counts.sum(1, keepdims=True)
    table = used.astype(np.int64) + counts * (TABLE_TOTAL - n_used) // total
    rest = TABLE_TOTAL - table.sum(1)
    table[np.arange(width), counts.argmax(1)] += rest
    return table.astype(np.uint32)


def frequencies(weights: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Integer frequencies ``[..., S]`` (each >= 1, summing to 2**24 along the last axis) of
    weights ``[..., S]`` (non-negative int64, each sum W > 0): with ``A = floor(2**24 * (2**24 - S) / W)``,
    ``f = 1 + floor(w * A / 2**24)``, and what is left of 2**24 to symbol ``top`` (``[...]``, the
    column's first most frequent symbol of the stored table).  Multiplications and shifts only
    (``w * A <= 2**48``): no division per symbol, none in floating point."""
    return _freq_minus_one(weights, top) + 1


def _freq_minus_one(weights: np.ndarray, top: np.ndarray) -> np.ndarray:
    S = weights.shape[-1]
    W = weights.sum(-1, keepdims=True)
    A = (PROB_TOTAL * (PROB_TOTAL - S)) // W
    # C order: weights gathered with fancy indexing may have permuted strides, and the rest must be
    # added through a view (a reshape of such an array is a copy)
    q = np.ascontiguousarray((weights * A) >> PRECISION)
    rest = (PROB_TOTAL - S) - q.sum(-1)
    flat = q.reshape(-1, S)
    assert np.shares_memory(flat, q)
    flat[np.arange(flat.shape[0]), np.broadcast_to(top, rest.shape).reshape(-1)] += rest.reshape(-1)
    return q


def _probabilities(weights: np.ndarray, top: np.ndarray) -> np.ndarray:
    """What constriction is given for weights (see the module docstring: f - 1, exact)."""
    return _freq_minus_one(weights, top).astype(np.float64, order="C")


def table_top(table: np.ndarray) -> np.ndarray:
    """Each column's first most frequent symbol of the stored table (it takes the rounding rest)."""
    return np.asarray(table).argmax(1)


def pack_model(table: np.ndarray) -> bytes:
    """The model bytes of a section: one zstd frame of the uint32 little-endian table, C order."""
    data = np.ascontiguousarray(table, dtype="<u4").tobytes()
    return zstandard.ZstdCompressor(level=19, write_content_size=True).compress(data)


def unpack_model(data, width: int, alphabet: int, where: str) -> np.ndarray:
    """The stored table ``[width, alphabet]``, every rule checked (one zstd frame declaring exactly
    its size, each value <= 2**16, each row summing to 2**16)."""
    expected = width * alphabet * 4
    data = bytes(data)
    try:
        params = zstandard.get_frame_parameters(data[:18])
    except zstandard.ZstdError as exc:
        _bad(where, f"the frequency table is not a zstd frame ({exc})")
    if params.content_size != expected:
        _bad(where, f"the frequency table declares {params.content_size} bytes, expected {expected} "
                    f"({width} columns x {alphabet} symbols x 4)")
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=expected, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        _bad(where, f"the frequency table is not exactly one valid zstd frame ({exc})")
    if len(raw) != expected:
        _bad(where, f"the frequency table holds {len(raw)} bytes, expected {expected}")
    table = np.frombuffer(raw, dtype="<u4").reshape(width, alphabet).astype(np.int64)
    if (table > TABLE_TOTAL).any():
        _bad(where, f"a frequency in the table exceeds {TABLE_TOTAL}")
    sums = table.sum(1)
    if (sums != TABLE_TOTAL).any():
        m = int(np.argmax(sums != TABLE_TOTAL))
        _bad(where, f"the frequency table of column {m} sums to {int(sums[m])}, not {TABLE_TOTAL}")
    return table


# ----------------------------------------------------------------------------- layout of a chunk
class ChunkLayout:
    """Which rows of a chunk share adaptive counts (a group: the views of one image inside the
    chunk) and the order in which its symbols are coded: by (position in the group, column, row)."""

    def __init__(self, first_row: int, n: int, group_rows: int, group_phase: int, increment: int):
        self.n = n
        self.adaptive = bool(group_rows) and bool(increment)
        if not self.adaptive or n == 0:
            self.groups = 1
            self.order = np.arange(n)
            self.waves = [self.order] if n else []
            self.group_of = np.zeros(n, dtype=np.int64)
            return
        g = (first_row + group_phase + np.arange(n, dtype=np.int64)) // group_rows
        local = g - g[0]
        self.groups = int(local[-1]) + 1
        first_of = np.searchsorted(local, np.arange(self.groups))
        t = np.arange(n) - first_of[local]
        order = np.argsort(t, kind="stable")          # by position in the group, then row
        bounds = np.searchsorted(t[order], np.arange(int(t.max()) + 2))
        #: the rows in coding order (wave after wave); wave t is order[bounds[t]:bounds[t + 1]]
        self.order, self.bounds = order, bounds
        self.waves = [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
        self.group_of = local


def model_cells(chunk_rows: int, width: int, alphabet: int, group_rows: int, increment: int) -> int:
    """Counters a decoder keeps for a chunk of this stream (the cap MAX_MODEL_CELLS applies)."""
    if group_rows and increment:
        groups = -(-(chunk_rows - 1) // group_rows) + 1
        return groups * width * alphabet
    return width * alphabet


class _WaveModel:
    """The adaptive model of one chunk, wave by wave, as constriction's probability rows.

    FORMAT.md's model, computed without integer temporaries.  In wave ``t`` (position t of each
    row in its group) every group of the wave has exactly t earlier rows in the chunk, so each
    column's counts sum to t and ``W = 2**16 + increment * t`` is the same for every row of the
    wave: ``A`` is one integer per wave.  ``w * A <= 2**48`` is an integer below 2**53, so in
    float64 the product ``w * (A * 2**-24)`` is exact (the factor is an integer below 2**48 times
    a power of two), its floor is ``floor(w * A / 2**24)`` exactly, and sums of those integers
    (below 2**24 in all) are exact in any order: the rows handed to constriction are bit for bit
    those of the integer formula (``tests/test_entropy.py`` compares the bytes with the former
    int64 implementation).  The weights ``g + increment * c`` (below 2**33: exact) are kept per
    group and updated in place after each wave, and the groups of a wave are a contiguous range
    (only a chunk's first and last groups can be shorter), so a wave costs a scaled copy, a floor,
    a sum and the rest added at each column's top symbol."""

    def __init__(self, table: np.ndarray, lay: ChunkLayout, increment: int):
        width, S = table.shape
        G = lay.groups
        self.S, self.width, self.increment = S, width, float(increment)
        self.weights = np.empty((width, G, S), dtype=np.float64)
        self.weights[:] = table[:, None, :]
        self._weights_flat = self.weights.reshape(-1)
        self._buf = np.empty(width * G * S, dtype=np.float64)
        self._ones = np.ones(S, dtype=np.float64)
        self._sums = np.empty(width * G, dtype=np.float64)
        # A of every wave (int64: 2**24 * (2**24 - S) < 2**48), times 2**-24: exact in float64
        A = (PROB_TOTAL * (PROB_TOTAL - S)) // (TABLE_TOTAL + increment * np.arange(len(lay.waves), dtype=np.int64))
        self._scale = (A.astype(np.float64) * 2.0 ** -PRECISION).tolist()
        self.spans = [self._span(lay.group_of[rows]) for rows in lay.waves]
        # flat index of (column m, group g, symbol 0) in the weights, for the groups of each wave
        row_start = (np.arange(width)[:, None] * G + np.arange(G)[None, :]) * S
        self._row_starts = [row_start[:, span] for span in self.spans]
        top = table_top(table)
        # by the number r of rows of a wave (at most 3 values): views of the buffer as the wave's
        # weights [width, r, S], as constriction's rows [width * r, S] and flat, the sums' view, and
        # the flat index of each column's top symbol in those rows
        self._views = {}
        for r in {len(rows) for rows in lay.waves}:
            flat = self._buf[:width * r * S]
            self._views[r] = (flat.reshape(width, r, S), flat.reshape(width * r, S), flat, self._sums[:width * r],
                              np.arange(width * r) * S + np.repeat(top, r))

    @staticmethod
    def _span(g: np.ndarray):
        """The groups of a wave: a slice when they are contiguous (always, for a chunk's consecutive
        rows), else their indices."""
        lo, hi = int(g[0]), int(g[-1]) + 1
        return slice(lo, hi) if hi - lo == len(g) else g

    def rows(self, t: int) -> np.ndarray:
        """constriction's rows ``[width * r, S]`` (f - 1, in the coding order: column, then row) of
        the r rows of wave t."""
        w = self.weights[:, self.spans[t]]
        block, rows, flat, sums, top = self._views[w.shape[1]]
        np.multiply(w, self._scale[t], out=block)
        np.floor(flat, out=flat)
        np.dot(rows, self._ones, out=sums)       # integers below 2**24 in all: exact in any order
        flat[top] += (PROB_TOTAL - self.S) - sums
        return rows

    def count(self, t: int, sym: np.ndarray, sign: float) -> None:
        """Add (sign +1) or remove (-1) one occurrence of wave t's symbols ``sym [width, r]``."""
        self._weights_flat[self._row_starts[t] + sym] += sign * self.increment


def encode_chunk(block: np.ndarray, table: np.ndarray, first_row: int, group_rows: int, group_phase: int,
                 increment: int) -> bytes:
    """The coded bytes of one chunk ``[n, width]`` (symbols < S of ``table [width, S]``)."""
    c = _coder()
    n, width = block.shape
    sym = np.ascontiguousarray(block, dtype=np.int64)
    table = np.asarray(table, dtype=np.int64)
    coder = c.stream.stack.AnsCoder()
    lay = ChunkLayout(first_row, n, group_rows, group_phase, increment)
    if not lay.adaptive:
        # column-major: column 0's rows first; coded in reverse so the decoder reads forward
        probs = _probabilities(table, table_top(table))
        for m in range(width - 1, -1, -1):
            model = c.stream.model.Categorical(probs[m], perfect=False)
            coder.encode_reverse(sym[:, m].astype(np.int32), model)
    else:
        family = c.stream.model.Categorical(perfect=False)
        model = _WaveModel(table, lay, increment)
        coded = np.ascontiguousarray(sym[lay.order].T, dtype=np.int32)   # [width, n], wave after wave
        # the weights after the chunk (integers below 2**33: exact in any order of addition)
        np.add.at(model.weights, (np.arange(width)[:, None], lay.group_of[None, :], sym.T), model.increment)
        bounds = lay.bounds.tolist()
        for t in range(len(lay.waves) - 1, -1, -1):               # reverse, so the decoder reads forward
            s = coded[:, bounds[t]:bounds[t + 1]]
            model.count(t, s, -1.0)                               # the weights before this wave
            coder.encode_reverse(s.reshape(-1), family, model.rows(t))
    return np.asarray(coder.get_compressed(), dtype="<u4").tobytes()


def decode_chunk(data, n: int, table: np.ndarray, first_row: int, group_rows: int, group_phase: int,
                 increment: int, dtype, where: str) -> np.ndarray:
    """Rows ``[n, width]`` of one coded chunk, checked: whole 32-bit words, a valid coder state,
    every word used and the coder back at its initial state after the n x width symbols, and no
    decoded symbol whose stored frequency is 0."""
    c = _coder()
    width, S = table.shape
    if len(data) % 4:
        _bad(where, f"coded chunk of {len(data)} bytes is not a whole number of 32-bit words")
    words = np.frombuffer(bytes(data), dtype="<u4").astype(np.uint32)
    out = np.empty((n, width), dtype=np.int64)
    lay = ChunkLayout(first_row, n, group_rows, group_phase, increment)
    try:
        coder = c.stream.stack.AnsCoder(words)
        if not lay.adaptive:
            probs = _probabilities(table, table_top(table))
            for m in range(width):
                out[:, m] = coder.decode(c.stream.model.Categorical(probs[m], perfect=False), n)
        else:
            family = c.stream.model.Categorical(perfect=False)
            model = _WaveModel(table, lay, increment)
            decoded = np.empty((width, n), dtype=np.int64)            # wave after wave, as coded
            bounds = lay.bounds.tolist()
            for t in range(len(lay.waves)):
                lo, hi = bounds[t], bounds[t + 1]
                sym = coder.decode(family, model.rows(t)).reshape(width, hi - lo)
                decoded[:, lo:hi] = sym
                model.count(t, sym, 1.0)
            out[lay.order] = decoded.T
        empty = coder.is_empty()
    except (ValueError, RuntimeError, OverflowError) as exc:   # constriction's "invalid compressed data"
        _bad(where, f"coded chunk is not a valid rANS stream ({exc})")
    if not empty:
        _bad(where, f"coded chunk holds more than its {n} x {width} symbols (the coder is not back at its "
                    "initial state: a symbol count mismatch or bytes left over)")
    if n and (table[np.arange(width)[None, :], out] == 0).any():
        _bad(where, "decoded a symbol whose frequency in the stored table is 0")
    return out.astype(dtype)


# ----------------------------------------------------------------------------- choosing
class _Occurrences:
    """What the estimate needs of some chunks whatever the increment: for every adaptive chunk, each
    row's position in its group and, per column, the stored frequency of the row's symbol and the
    number of its earlier occurrences in the row's group (an occurrence count by sorting)."""

    def __init__(self, chunks, table: np.ndarray, first_rows, group_rows: int, group_phase: int):
        self.table = table = np.asarray(table, dtype=np.int64)
        width, S = table.shape
        self.static_f = frequencies(table, table_top(table))
        self.chunks = []
        for block, first in zip(chunks, first_rows):
            sym = np.asarray(block, dtype=np.int64)
            n = sym.shape[0]
            lay = ChunkLayout(first, n, group_rows, group_phase, 1)
            if not lay.adaptive:
                self.chunks.append((sym, None, None))
                continue
            t = np.empty(n, dtype=np.int64)
            for i, rows in enumerate(lay.waves):
                t[rows] = i
            cols = []
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
                cols.append((table[m, sym[:, m]], occ))
            self.chunks.append((sym, t, cols))

    def bits(self, increment: int) -> float:
        width, S = self.table.shape
        bits = 0.0
        for sym, t, cols in self.chunks:
            if not increment or t is None:
                bits -= float(np.log2(self.static_f[np.arange(width)[None, :], sym] / PROB_TOTAL).sum())
                continue
            A = (PROB_TOTAL * (PROB_TOTAL - S)) // (TABLE_TOTAL + increment * t)
            for g, occ in cols:
                w = g + increment * occ
                p = (1 + ((w * A) >> PRECISION)) / PROB_TOTAL
                bits -= float(np.log2(p).sum())
        return bits


def estimate_bits(chunks, table: np.ndarray, first_rows, group_rows: int, group_phase: int,
                  increment: int) -> float:
    """Ideal code length (bits) of ``chunks`` under the model with this increment: the exact
    frequencies' -log2 of the coded symbols (a rANS coder adds ~32 bits a chunk)."""
    return _Occurrences(chunks, table, first_rows, group_rows if increment else 0, group_phase).bits(increment)


def choose_increment(chunks, table, first_rows, group_rows: int, group_phase: int, chunk_rows: int):
    """The increment (of INCREMENTS, within the cell cap) with the smallest estimated code length
    (the occurrence counts, which do not depend on the increment, are counted once)."""
    width, S = table.shape
    best = None
    occurrences = None
    for inc in INCREMENTS if group_rows > 1 else (0,):
        if model_cells(chunk_rows, width, S, group_rows, inc) > MAX_MODEL_CELLS:
            continue
        if occurrences is None:
            occurrences = _Occurrences(chunks, table, first_rows, group_rows, group_phase)
        bits = occurrences.bits(inc)
        if best is None or bits < best[0]:
            best = (bits, inc)
    return None if best is None else best[1]


def check_meta(sec: dict, length: int, bad) -> None:
    """The rules of a rans stream entry that need only the header (FORMAT.md): ``bad(msg, rule)``."""
    name = sec["name"]
    r = sec.get("rans")
    if not isinstance(r, dict):
        bad(f"stream section {name!r} is coded 'rans' but has no 'rans' map", rules.SECTION_CONTENT)
    for key in ("alphabet", "increment", "group_rows", "group_phase", "model_bytes", "model_crc32"):
        if key not in r:
            bad(f"stream section {name!r}: its 'rans' map lacks {key!r}", rules.SECTION_CONTENT)
    if sec["dtype"] not in DTYPES:
        bad(f"stream section {name!r}: a rans stream holds unsigned integers, not {sec['dtype']}",
            rules.SECTION_CONTENT)
    if sec["filters"]:
        bad(f"stream section {name!r}: a rans stream has no filters", rules.SECTION_CONTENT)
    S = r["alphabet"]
    if S > (1 << (8 * np.dtype(sec["dtype"]).itemsize)):
        bad(f"stream section {name!r}: alphabet {S} does not fit {sec['dtype']}", rules.SECTION_CONTENT)
    if sec["chunk_rows"] > MAX_CHUNK_ROWS:
        bad(f"stream section {name!r}: rans chunks of {sec['chunk_rows']} rows exceed {MAX_CHUNK_ROWS}",
            rules.SECTION_CONTENT)
    if r["group_rows"] == 0 and r["group_phase"] != 0 or r["group_rows"] and r["group_phase"] >= r["group_rows"]:
        bad(f"stream section {name!r}: group_phase {r['group_phase']} is not below group_rows "
            f"{r['group_rows']}", rules.SECTION_CONTENT)
    cells = model_cells(sec["chunk_rows"], sec["width"], S, r["group_rows"], r["increment"])
    if cells > MAX_MODEL_CELLS:
        bad(f"stream section {name!r}: its model needs {cells} counters a chunk, over {MAX_MODEL_CELLS}",
            rules.SECTION_CONTENT)
    nchunks = -(-sec["rows"] // sec["chunk_rows"])
    if r["model_bytes"] + nchunks * 16 > length:
        bad(f"stream section {name!r}: its {r['model_bytes']}-byte table and chunk index do not fit its "
            f"{length} bytes", rules.SECTION_CONTENT)


__all__ = ["encode_chunk", "decode_chunk", "normalise_counts", "frequencies", "pack_model", "unpack_model",
           "choose_increment", "estimate_bits", "check_meta", "ChunkLayout", "model_cells"]
