"""The ``.vqsl`` container: bytes and sections, no torch (see FORMAT.md).

Layout::

    preamble (64 bytes) | section 0 | pad | section 1 | pad | ... | header (msgpack)

Every section starts on a 64-byte boundary, the gaps are zero bytes, the header
follows the last section's padding and ends the file.  Writing the header last
lets a writer stream sections without knowing their sizes up front; the
preamble, rewritten at the end, points at the header.

Readers validate the preamble, the header and the whole section table on open
(cheap: no section payload is read except padding), verify each array and
msgpack section's CRC when it is first read, and each stream chunk's CRC when it
is decoded; :meth:`Container.verify` checks every byte.
"""
from __future__ import annotations

import mmap
import os
import struct
import tempfile
import threading
import zlib
from dataclasses import dataclass
from typing import Iterable

import msgpack
import numpy as np
import zstandard

from . import entropy
from . import schema
from . import rules
from .atomic import AtomicFile
from ..errors import FormatError, ResourceError

MAGIC = b"\x89VQS\r\n\x1a\n"
FORMAT_MAJOR = 1
#: minor version written by files that use no 1.1 feature (every 1.0 reader reads them)
FORMAT_MINOR = 0
#: minor version written by files that set a format-1.1 required flag (sharded sets)
FORMAT_MINOR_SHARDED = 1
ALIGN = 64
PREAMBLE = struct.Struct("<8sHHIIIQQQI8sI")
assert PREAMBLE.size == 64
#: required flag bit 0 (format 1.1): the file is the manifest of a sharded set (params, no streams)
FLAG_MANIFEST = 0x1
#: required flag bit 1 (format 1.1): the file is a shard (streams, its codec parameters are in the manifest)
FLAG_EXTERNAL_PARAMS = 0x2
#: required flag bit 2 (format 1.6): a stream section is coded "rans" (an older reader cannot read it)
FLAG_RANS_STREAMS = 0x4
#: minor version written by files with a "rans" stream
FORMAT_MINOR_RANS = 6
#: required-feature bits this reader understands
KNOWN_REQUIRED_FLAGS = FLAG_MANIFEST | FLAG_EXTERNAL_PARAMS | FLAG_RANS_STREAMS
MAX_HEADER_BYTES = 16 << 20
MAX_MSGPACK_SECTION_BYTES = 64 << 20
#: values (scalars and containers, map keys included) in the header or in one msgpack section;
#: checked by a walk over the bytes before anything is built (a byte of msgpack can be an empty
#: list, which costs a reader ~60 bytes of memory: the byte caps alone do not bound memory)
MAX_MSGPACK_ITEMS = 1 << 20
#: nesting of maps and arrays in the header or in a msgpack section (the schema needs 5)
MAX_MSGPACK_DEPTH = 16
#: an array section's dimensions, each counted as at least 1, times its itemsize: a bound on
#: what a reader's array library is asked to describe, even for a zero-size array
MAX_ARRAY_SPAN_BYTES = 1 << 48
#: largest decompressed chunk we accept (declared sizes are checked against it before allocating)
MAX_CHUNK_BYTES = 64 << 20  # writers make ~1 MiB chunks; a small cap bounds what a hostile chunk can allocate
#: decoded chunks a stream reader keeps (a chunk larger than this is still kept alone)
STREAM_CACHE_BYTES = 64 << 20
CHUNK_ENTRY = struct.Struct("<QII")
_INDEX_DTYPE = np.dtype([("end", "<u8"), ("crc32", "<u4"), ("reserved", "<u4")])  # CHUNK_ENTRY as numpy reads it  # end offset, crc32 of the stored chunk bytes, reserved (0)
DEFAULT_CHUNK_ROWS = 4096
DEFAULT_ZSTD_LEVEL = 19
WIDE_ZSTD_LEVEL = 3


def align_up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def crc32(data) -> int:
    # zlib's CRC-32 is in the standard library and runs at GB/s; the sections are
    # checked for accidental damage, not against an adversary.
    return zlib.crc32(data) & 0xFFFFFFFF


def _unpack_msgpack(data: bytes, what: str, limit: int):
    """One msgpack value under the format's rules (FORMAT.md, ``header-syntax``): no ext types,
    string map keys, no key twice in a map, at most MAX_MSGPACK_DEPTH levels of nesting and
    MAX_MSGPACK_ITEMS values, no trailing bytes.  The structure is walked first, without building
    anything, so a hostile value costs a bounded time and memory before it is rejected."""
    try:
        _scan_msgpack(data)
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=limit, max_bin_len=limit, max_array_len=limit,
            max_map_len=limit, max_ext_len=0,
            ext_hook=_no_ext, object_pairs_hook=_str_keyed_map,
        )
    except FormatError as exc:
        raise FormatError(f"{what}: {exc}", rule=exc.rule) from None
    except MemoryError:
        raise  # resource exhaustion is not damage: never reported as an invalid file
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise FormatError(f"{what} is not valid msgpack ({type(exc).__name__}: {exc})",
                          rule=rules.HEADER_SYNTAX) from None


def _str_keyed_map(pairs):
    keys = [k for k, _ in pairs]
    for k in keys:
        if not isinstance(k, str):
            raise FormatError(f"a map key is {type(k).__name__} ({k!r:.40}), not a string", rule=rules.HEADER_SYNTAX)
    if len(set(keys)) != len(keys):
        dup = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise FormatError(f"map key {dup!r:.60} appears twice", rule=rules.HEADER_SYNTAX)
    return dict(pairs)


def _no_ext(code, data):
    raise FormatError(f"msgpack ext type {code} is not allowed", rule=rules.HEADER_SYNTAX)


# msgpack first bytes -> (bytes of the fixed part after the type byte, size of a length field that follows)
_MSGPACK_FIXED = {0xc0: 0, 0xc2: 0, 0xc3: 0, 0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8,
                  0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8}
_MSGPACK_BLOB = {0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4}   # bin and str: length bytes
_MSGPACK_ARRAY = {0xdc: 2, 0xdd: 4}
_MSGPACK_MAP = {0xde: 2, 0xdf: 4}


def _scan_msgpack(data) -> None:
    """Walk one msgpack value's structure without building it: reject ext types, the unused
    byte 0xc1, nesting deeper than MAX_MSGPACK_DEPTH, more than MAX_MSGPACK_ITEMS values (a
    container's declared size is counted before its items are walked), a value running past
    the end and trailing bytes.  Time: at most MAX_MSGPACK_ITEMS steps."""
    n = len(data)
    pos = 0
    items = 0
    todo = [1]  # values still to read in each open container (the outermost: the one value)
    while todo:
        if todo[-1] == 0:
            todo.pop()
            continue
        todo[-1] -= 1
        if pos >= n:
            raise FormatError("msgpack value ends early", rule=rules.HEADER_SYNTAX)
        b = data[pos]
        pos += 1
        count = -1
        if b <= 0x7f or b >= 0xe0:                      # positive and negative fixint
            pass
        elif b <= 0x8f:                                 # fixmap
            count = 2 * (b & 0x0f)
        elif b <= 0x9f:                                 # fixarray
            count = b & 0x0f
        elif b <= 0xbf:                                 # fixstr
            pos += b & 0x1f
        elif b in _MSGPACK_FIXED:
            pos += _MSGPACK_FIXED[b]
        elif b in _MSGPACK_BLOB:
            w = _MSGPACK_BLOB[b]
            pos += w + int.from_bytes(data[pos:pos + w], "big")
        elif b in _MSGPACK_ARRAY:
            w = _MSGPACK_ARRAY[b]
            count = int.from_bytes(data[pos:pos + w], "big")
            pos += w
        elif b in _MSGPACK_MAP:
            w = _MSGPACK_MAP[b]
            count = 2 * int.from_bytes(data[pos:pos + w], "big")
            pos += w
        elif b == 0xc1:
            raise FormatError("msgpack byte 0xc1 is never used", rule=rules.HEADER_SYNTAX)
        else:                                           # 0xc7-0xc9, 0xd4-0xd8: ext types
            raise FormatError(f"msgpack ext type (byte 0x{b:02x}) is not allowed", rule=rules.HEADER_SYNTAX)
        items += 1
        if pos > n:
            raise FormatError("msgpack value runs past its end", rule=rules.HEADER_SYNTAX)
        if count >= 0:
            if items + count > MAX_MSGPACK_ITEMS:
                raise FormatError(f"more than {MAX_MSGPACK_ITEMS} msgpack values", rule=rules.HEADER_SYNTAX)
            if len(todo) > MAX_MSGPACK_DEPTH:  # the open containers around this one, plus one
                raise FormatError(f"msgpack nesting deeper than {MAX_MSGPACK_DEPTH} levels", rule=rules.HEADER_SYNTAX)
            if count:
                todo.append(count)
    if pos != n:
        raise FormatError(f"{n - pos} trailing bytes after the msgpack value", rule=rules.HEADER_SYNTAX)


def _pack_msgpack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=False)


# --------------------------------------------------------------------------- streams
#: the order in which a writer applies the filters (a reader undoes them in reverse); a stream
#: that lists them in another order is rejected: byteshuffle leaves no elements to transpose
FILTER_ORDER = ("transpose", "byteshuffle")


def _filter_forward(block: np.ndarray, filters: list[str]) -> bytes:
    if "transpose" in filters:
        block = np.ascontiguousarray(block.T)
    data = np.ascontiguousarray(block).view(np.uint8).reshape(-1)
    if "byteshuffle" in filters:
        itemsize = block.dtype.itemsize
        data = np.ascontiguousarray(data.reshape(-1, itemsize).T).reshape(-1)
    return data.tobytes()


def _filter_inverse(data: bytes, dtype: np.dtype, rows: int, width: int, filters: list[str]) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if "byteshuffle" in filters:
        raw = np.ascontiguousarray(raw.reshape(dtype.itemsize, -1).T).reshape(-1)
    arr = raw.view(dtype)
    if "transpose" in filters:
        return np.ascontiguousarray(arr.reshape(width, rows).T)
    return arr.reshape(rows, width)


class _ChunkStore:
    """Stored chunk bytes of a stream being built, in memory (end offsets and CRCs as the index needs)."""

    def __init__(self):
        self.chunks: list[bytes] = []
        self.ends: list[int] = []
        self.crcs: list[int] = []
        self.total = 0

    def add(self, data: bytes) -> None:
        self._put(data)
        self.total += len(data)
        self.ends.append(self.total)
        self.crcs.append(crc32(data))

    def _put(self, data: bytes) -> None:
        self.chunks.append(data)

    def get(self, k: int) -> bytes:
        return self.chunks[k]

    def parts(self) -> Iterable:
        yield from self.chunks

    def close(self) -> None:
        self.chunks = []


class _SpooledChunkStore(_ChunkStore):
    """A :class:`_ChunkStore` in an anonymous temporary file in ``folder`` (no name on Linux, so a
    crash leaves nothing behind); only the index stays in memory."""

    COPY_BYTES = 1 << 20

    def __init__(self, folder):
        super().__init__()
        self._spool = tempfile.TemporaryFile(dir=folder, prefix=".slcodec-spool-")

    def _put(self, data: bytes) -> None:
        self._spool.seek(0, os.SEEK_END)
        self._spool.write(data)

    def get(self, k: int) -> bytes:
        start = self.ends[k - 1] if k else 0
        self._spool.flush()
        self._spool.seek(start)
        data = self._spool.read(self.ends[k] - start)
        if len(data) != self.ends[k] - start:
            raise OSError(f"stream spool file ended early at chunk {k}")
        return data

    def parts(self) -> Iterable:
        self._spool.flush()
        self._spool.seek(0)
        left = self.total
        while left:
            piece = self._spool.read(min(left, self.COPY_BYTES))
            if not piece:
                raise OSError(f"stream spool file ended {left} bytes early")
            left -= len(piece)
            yield piece

    def close(self) -> None:
        if not self._spool.closed:
            self._spool.close()


#: codings a StreamBuilder takes: the stored ones, and "auto" (zstd or rans, whichever is smaller)
BUILDER_CODINGS = ("raw", "zstd", "rans", "auto")
#: chunks of a stream on which a writer estimates the rans increment (evenly spaced; bounds the time)
RANS_ESTIMATE_CHUNKS = 64


class StreamBuilder:
    """Collects the rows of one stream section, chunk by chunk, coded as they arrive.

    ``coding``: ``"zstd"`` or ``"raw"``; ``"rans"`` (format 1.6: an entropy coder under a frequency
    table of the whole stream, so the rows are kept and coded at :meth:`finish`); ``"auto"``: both
    zstd and rans, and the section stores whichever is smaller (zstd when rans cannot code the
    stream: a value >= 2**16, a float dtype, a model over the counter cap).  ``group_rows``: rows
    of one context group (the views of an image) for rans's adaptive counts, 0 for none; stream
    row ``r`` is in group ``(r + group_phase) // group_rows``."""

    def __init__(self, dtype, width: int, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 coding: str = "zstd", level: int | None = None, filters=None, group_rows: int = 0,
                 group_phase: int = 0):
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if self.dtype.name not in schema.DTYPES:
            raise ValueError(f"unsupported stream dtype {self.dtype}")
        if coding not in BUILDER_CODINGS:
            raise ValueError(f"unknown stream coding {coding!r}")
        if level is None:
            # Narrow index streams are small and compress well: spend effort.  Wide value streams
            # (raw FP16/FP32 labels) barely compress and level 19 runs at under 1 MB/s on them.
            level = DEFAULT_ZSTD_LEVEL if int(width) * self.dtype.itemsize <= 64 else WIDE_ZSTD_LEVEL
        self.width, self.chunk_rows, self.coding, self.level = int(width), int(chunk_rows), coding, level
        if filters is None:
            filters = (["transpose"] if width > 1 else []) + (["byteshuffle"] if self.dtype.itemsize > 1 else [])
        self.filters = list(filters)
        self.rows = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        rans_side = coding in ("rans", "auto")
        rans_able = self.dtype.name in entropy.DTYPES and self.chunk_rows <= entropy.MAX_CHUNK_ROWS
        if coding == "rans" and not rans_able:
            raise ValueError(f"a rans stream holds unsigned integers in chunks of at most "
                             f"{entropy.MAX_CHUNK_ROWS} rows, not {self.dtype.name} in {self.chunk_rows}")
        self.group_rows, self.group_phase = int(group_rows), int(group_phase)
        if self.group_rows < 0 or not (0 <= self.group_phase < max(1, self.group_rows)):
            raise ValueError(f"group_phase {group_phase} must lie in [0, group_rows {group_rows})")
        self._stored = self._new_store() if coding != "rans" else None
        #: the rows themselves, chunk by chunk, for the rans coder (None: rans is not tried)
        self._raw = self._new_store() if rans_side and rans_able else None
        self._counts = np.zeros((self.width, 0), dtype=np.int64)
        self._cctx = zstandard.ZstdCompressor(level=level, write_content_size=True) if coding in ("zstd", "auto") else None
        self._chosen = None   # (meta, payload parts) once finished

    def _new_store(self) -> _ChunkStore:
        return _ChunkStore()

    @property
    def _chunks(self) -> list[bytes]:
        """Coded chunks held in memory (none for a spooled builder)."""
        return self._stored.chunks if self._stored is not None else []

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim == 1 and self.width == 1:
            rows = rows[:, None]
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"stream rows must be [n, {self.width}], got {list(rows.shape)}")
        if rows.dtype.kind != self.dtype.kind and not np.can_cast(rows.dtype, self.dtype):
            raise ValueError(f"cannot store {rows.dtype} rows in a {self.dtype.name} stream")
        self._pending.append(rows.astype(self.dtype, copy=False))
        self._pending_rows += rows.shape[0]
        self.rows += rows.shape[0]
        while self._pending_rows >= self.chunk_rows:
            self._flush(self.chunk_rows)

    def _flush(self, n: int) -> None:
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        chunk, rest = block[:n], block[n:]
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)
        if self._stored is not None:
            data = _filter_forward(chunk, self.filters)
            if self._cctx is not None:
                data = self._cctx.compress(data)
            self._stored.add(data)
        if self._raw is not None:
            self._count(chunk)
            if self._raw is not None:
                self._raw.add(np.ascontiguousarray(chunk).tobytes())

    def _count(self, chunk: np.ndarray) -> None:
        top = int(chunk.max()) + 1 if chunk.size else 0
        if top > entropy.MAX_ALPHABET:
            if self.coding == "rans":
                raise ValueError(f"a rans stream holds symbols below {entropy.MAX_ALPHABET}, got {top - 1}")
            self._raw.close()   # auto: zstd it is
            self._raw = None
            return
        if top > self._counts.shape[1]:
            self._counts = np.pad(self._counts, ((0, 0), (0, top - self._counts.shape[1])))
        for m in range(self.width):
            self._counts[m, :top] += np.bincount(chunk[:, m], minlength=top)

    def _meta(self) -> dict:
        return {"dtype": self.dtype.name, "rows": self.rows, "width": self.width,
                "chunk_rows": self.chunk_rows, "coding": self.coding, "filters": self.filters}

    def _rans(self):
        """(meta, model bytes, coded store) of the rans coding of the rows, or None when the model
        would exceed the counter cap."""
        S = max(2, self._counts.shape[1])
        counts = np.pad(self._counts, ((0, 0), (0, S - self._counts.shape[1])))
        counts[counts.sum(1) == 0, 0] = 1   # an empty stream: any valid table
        table = entropy.normalise_counts(counts).astype(np.int64)
        nchunks = len(self._raw.ends)
        firsts = [k * self.chunk_rows for k in range(nchunks)]
        sizes = [min(self.chunk_rows, self.rows - f) for f in firsts]

        def block(k):
            return np.frombuffer(self._raw.get(k), dtype=self.dtype).reshape(sizes[k], self.width)

        sample = sorted({k * nchunks // RANS_ESTIMATE_CHUNKS for k in range(RANS_ESTIMATE_CHUNKS)} & set(range(nchunks)))
        inc = entropy.choose_increment([block(k) for k in sample], table, [firsts[k] for k in sample],
                                       self.group_rows, self.group_phase, self.chunk_rows)
        if inc is None:
            return None
        store = self._new_store()
        try:
            for k in range(nchunks):
                store.add(entropy.encode_chunk(block(k), table, firsts[k], self.group_rows, self.group_phase, inc))
        except BaseException:
            store.close()
            raise
        model = entropy.pack_model(table)
        meta = self._meta()
        meta.update(coding="rans", filters=[],
                    rans={"alphabet": S, "increment": inc, "group_rows": self.group_rows,
                          "group_phase": self.group_phase if self.group_rows else 0,
                          "model_bytes": len(model), "model_crc32": crc32(model)})
        return meta, model, store

    def _choose(self):
        if self._chosen is not None:
            return self._chosen
        if self._pending_rows:
            self._flush(self._pending_rows)
        rans = self._rans() if self._raw is not None else None
        if rans is None and self.coding == "rans":
            raise ValueError("the stream's rans model exceeds the decoder's counter cap; code it with zstd")
        # whole-file bytes decide: the rans entry's longer header map counts against it
        if rans is not None and (self._stored is None or len(rans[1]) + rans[2].total + len(_pack_msgpack(rans[0]))
                                 < self._stored.total + len(_pack_msgpack(self._meta()))):
            meta, model, store = rans
            if self._stored is not None:
                self._stored.close()
            self._stored, base, head = store, len(model), [model]
        else:
            if rans is not None:
                rans[2].close()
            meta, base, head = self._meta(), 0, []
            if self.coding == "auto":
                meta["coding"] = "zstd"
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        index = bytearray()
        for end, crc in zip(self._stored.ends, self._stored.crcs):
            index += CHUNK_ENTRY.pack(base + end, crc, 0)
        self._chosen = meta, head, bytes(index)
        return self._chosen

    def finish(self) -> tuple[dict, bytes]:
        meta, parts = self.finish_parts()
        return meta, b"".join(bytes(p) for p in parts)

    def finish_parts(self) -> tuple[dict, Iterable]:
        """The section's entry fields and its payload as an iterable of byte strings (in order)."""
        meta, head, index = self._choose()

        def parts():
            yield from head
            yield from self._stored.parts()
            yield index
        return meta, parts()

    def close(self) -> None:
        """Release what the builder holds (its spool files)."""
        for store in (self._stored, self._raw):
            if store is not None:
                store.close()


class SpooledStreamBuilder(StreamBuilder):
    """A :class:`StreamBuilder` that keeps its coded chunks (and, for rans, the rows) in temporary
    files, not in memory.

    Only the chunk index (16 bytes a chunk) stays in memory, so a stream of any size is built
    with memory bounded by one chunk.  The spool is an anonymous temporary file in ``folder``
    (no name on Linux, so a crash leaves nothing behind); :meth:`finish_parts` copies it into
    the container in pieces.  The bytes are those :class:`StreamBuilder` would produce.
    """

    def __init__(self, dtype, width: int, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 coding: str = "zstd", level: int | None = None, filters=None, folder=None,
                 group_rows: int = 0, group_phase: int = 0):
        self._folder = folder
        super().__init__(dtype, width, chunk_rows=chunk_rows, coding=coding, level=level, filters=filters,
                         group_rows=group_rows, group_phase=group_phase)

    def _new_store(self) -> _ChunkStore:
        return _SpooledChunkStore(self._folder)


# --------------------------------------------------------------------------- writer
class ContainerWriter:
    """Writes a container to a temporary file beside ``path``; :meth:`commit` moves it into place.

    Until ``commit`` succeeds an existing file at ``path`` is untouched; on any error call
    :meth:`abort` (the context manager does) and the temporary file is removed.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path = os.fspath(path)
        self._out = AtomicFile(self.path)  # the one atomic-output helper (slcodec.format.atomic)
        self.tmp_path = self._out.tmp_path
        self._f = self._out.file
        self._f.write(b"\0" * PREAMBLE.size)
        self._pos = PREAMBLE.size
        self.sections: list[dict] = []
        self._names: set[str] = set()
        self._verify = verify
        self.closed = False
        self.committed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        elif not self.closed:
            self.abort()

    def _add(self, name: str, kind: str, payload, meta: dict) -> None:
        self._add_parts(name, kind, [payload], meta)

    def _add_parts(self, name: str, kind: str, parts: Iterable, meta: dict) -> None:
        """Write one section whose payload is the concatenation of ``parts`` (buffers)."""
        if name in self._names:
            raise ValueError(f"duplicate section name {name!r}")
        if len(name) > schema.MAX_NAME:
            raise ValueError(f"section name too long: {name!r}")
        self._names.add(name)
        offset = self._pos
        length = 0
        crc = 0
        for part in parts:
            part = memoryview(part).cast("B")
            self._f.write(part)
            length += len(part)
            crc = zlib.crc32(part, crc)
        end = offset + length
        pad = align_up(end) - end
        self._f.write(b"\0" * pad)
        self._pos = end + pad
        entry = {"name": name, "kind": kind, "offset": offset, "length": length, "crc32": crc & 0xFFFFFFFF}
        entry.update(meta)
        self.sections.append(entry)

    def add_array(self, name: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        le = array.dtype.newbyteorder("<")
        if le.name not in schema.DTYPES:
            raise ValueError(f"unsupported array dtype {array.dtype}")
        data = np.ascontiguousarray(array, dtype=le)
        self._add(name, "array", data.reshape(-1).view(np.uint8), {"dtype": le.name, "shape": list(array.shape)})

    def add_stream(self, name: str, builder: StreamBuilder) -> None:
        meta, parts = builder.finish_parts()
        self._add_parts(name, "stream", parts, meta)

    def add_msgpack(self, name: str, obj) -> None:
        data = _pack_msgpack(obj)
        if len(data) > MAX_MSGPACK_SECTION_BYTES:
            raise ValueError(f"msgpack section {name!r} is larger than {MAX_MSGPACK_SECTION_BYTES} bytes")
        try:  # the reader's rules (depth, value count, string keys), told here rather than at commit
            _unpack_msgpack(data, f"msgpack section {name!r}", MAX_MSGPACK_SECTION_BYTES)
        except FormatError as exc:
            raise ValueError(str(exc)) from None
        self._add(name, "msgpack", data, {})

    def commit(self, header: dict, required_flags: int = 0, optional_flags: int = 0,
               publish: bool = True, minor: int = 0) -> None:
        """Write the header and preamble, fsync and verify the file, then (``publish``) rename it
        into place.  With ``publish=False`` the finished file stays at ``tmp_path`` until
        :meth:`publish` (a sharded set renames its shards, then its manifest)."""
        header = dict(header)
        header["sections"] = self.sections
        data = _pack_msgpack(header)
        if len(data) > MAX_HEADER_BYTES:
            raise ValueError("header larger than the format's limit")
        schema.validate(_unpack_msgpack(data, "header", MAX_HEADER_BYTES))
        header_offset = self._pos
        self._f.write(data)
        file_length = header_offset + len(data)
        # minor: the newest format feature the file uses (informational; readers ignore it)
        minor = max(int(minor), FORMAT_MINOR_SHARDED if required_flags & (FLAG_MANIFEST | FLAG_EXTERNAL_PARAMS)
                    else FORMAT_MINOR)
        if any(s["kind"] == "stream" and s["coding"] == "rans" for s in self.sections):
            required_flags |= FLAG_RANS_STREAMS   # a reader that cannot decode rans must refuse the file
            minor = max(minor, FORMAT_MINOR_RANS)
        pre = PREAMBLE.pack(MAGIC, FORMAT_MAJOR, minor, required_flags, optional_flags, 0,
                            header_offset, len(data), file_length, crc32(data), b"\0" * 8, 0)
        pre = pre[:60] + struct.pack("<I", crc32(pre[:60]))
        self._f.seek(0)
        self._f.write(pre)
        self._out.finish()  # flush, fsync, close; the mode a plain open() gives (removed on failure)
        try:
            if self._verify:
                with Container.open(self.tmp_path) as c:
                    problems = c.verify()
                if problems:
                    raise FormatError(f"written file failed verification: {problems[0]}", rule=rules.SELF_CHECK)
        except BaseException:
            self._out.abort()
            raise
        #: bytes and header CRC of the finished file (a manifest records them for each shard)
        self.file_length, self.header_crc32 = file_length, crc32(data)
        self.committed = True
        if publish:
            self.publish()

    def publish(self) -> None:
        """Rename the committed temporary file to ``path`` (atomically replacing any file there)."""
        self._out.publish()  # removes the temporary file if the rename fails
        self.closed = True

    def abort(self) -> None:
        """Remove the temporary file (even when closing it fails: a full disk fails the flush)."""
        self._out.abort()
        self.closed = True


# --------------------------------------------------------------------------- reader
@dataclass(frozen=True)
class Preamble:
    major: int
    minor: int
    required_flags: int
    optional_flags: int
    header_offset: int
    header_length: int
    file_length: int
    header_crc32: int


class Container:
    """A validated, memory-mapped ``.vqsl`` file."""

    def __init__(self, path, buf, preamble: Preamble, header: dict, fileobj=None, mm=None):
        self.path = path
        self._buf = buf
        self._file = fileobj
        self._mm = mm
        self.preamble = preamble
        self.header = header
        self.sections = {s["name"]: s for s in header["sections"]}
        self._checked: set[str] = set()

    # -- opening ----------------------------------------------------------
    @classmethod
    def open(cls, path) -> "Container":
        path = os.fspath(path)
        f = open(path, "rb")
        try:
            size = os.fstat(f.fileno()).st_size
            if size < PREAMBLE.size:
                raise FormatError(f"{path}: file is {size} bytes, shorter than the 64-byte preamble",
                                  rule=rules.TRUNCATED)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            f.close()
            raise
        try:
            return cls.from_buffer(memoryview(mm), path=path, fileobj=f, mm=mm)
        except BaseException:
            _close_map(mm)
            f.close()
            raise

    @classmethod
    def from_bytes(cls, data: bytes, path: str = "<bytes>") -> "Container":
        return cls.from_buffer(memoryview(data), path=path)

    @classmethod
    def from_buffer(cls, buf: memoryview, path: str = "<bytes>", fileobj=None, mm=None) -> "Container":
        def bad(msg, rule):
            raise FormatError(f"{path}: {msg}", rule=rule)

        size = len(buf)
        if size < PREAMBLE.size:
            bad(f"file is {size} bytes, shorter than the 64-byte preamble", rules.TRUNCATED)
        head = bytes(buf[:PREAMBLE.size])
        (magic, major, minor, req, opt, reserved, h_off, h_len, f_len, h_crc, reserved2, p_crc) = PREAMBLE.unpack(head)
        if magic != MAGIC:
            bad("not a .vqsl file (bad magic number)", rules.MAGIC)
        if crc32(head[:60]) != p_crc:
            bad("preamble checksum mismatch (damaged file)", rules.PREAMBLE_CRC)
        if major != FORMAT_MAJOR:
            bad(f"format version {major}.{minor} is not supported (this reader reads {FORMAT_MAJOR}.x)", rules.VERSION)
        if req & ~KNOWN_REQUIRED_FLAGS:
            bad(f"file requires unknown features (required flags 0x{req & ~KNOWN_REQUIRED_FLAGS:08x}); "
                "a newer slcodec is needed", rules.REQUIRED_FLAGS)
        if reserved != 0 or reserved2 != b"\0" * 8:
            bad("reserved preamble bytes are not zero", rules.PREAMBLE_RESERVED)
        if f_len != size:
            bad(f"file is {size} bytes but its preamble says {f_len} (truncated or padded)", rules.TRUNCATED)
        if h_len > MAX_HEADER_BYTES:
            bad(f"header length {h_len} exceeds the {MAX_HEADER_BYTES}-byte limit", rules.HEADER_BOUNDS)
        if h_off < PREAMBLE.size or h_off % ALIGN or h_off + h_len != size:
            bad(f"header at {h_off}+{h_len} is not a 64-byte aligned block ending the file", rules.HEADER_BOUNDS)
        header_bytes = bytes(buf[h_off:h_off + h_len])
        if crc32(header_bytes) != h_crc:
            bad("header checksum mismatch (damaged file)", rules.HEADER_CRC)
        header = _unpack_msgpack(header_bytes, f"{path}: header", MAX_HEADER_BYTES)
        try:
            schema.validate(header)
        except FormatError as exc:
            raise FormatError(f"{path}: {exc}", rule=exc.rule) from None
        pre = Preamble(major, minor, req, opt, h_off, h_len, f_len, h_crc)
        _check_sections(header, buf, h_off, bad)
        _check_sharding(header, req, bad)
        if not req & FLAG_RANS_STREAMS and any(s["kind"] == "stream" and s.get("coding") == "rans"
                                               for s in header["sections"]):
            bad("a stream is coded 'rans' but required flag bit 2 (0x4, format 1.6) is not set",
                rules.SECTION_CONTENT)
        return cls(path, buf, pre, header, fileobj, mm)

    @property
    def is_manifest(self) -> bool:
        return bool(self.preamble.required_flags & FLAG_MANIFEST)

    @property
    def is_shard(self) -> bool:
        return bool(self.preamble.required_flags & FLAG_EXTERNAL_PARAMS)

    # -- context management ---------------------------------------------
    def close(self) -> None:
        self._buf = None
        if self._mm is not None:
            _close_map(self._mm)
            self._mm = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- sections ---------------------------------------------------------
    def _section(self, name: str, kind: str) -> dict:
        sec = self.sections.get(name)
        if sec is None:
            raise FormatError(f"{self.path}: missing section {name!r}", rule=rules.MISSING_SECTION)
        if sec["kind"] != kind:
            raise FormatError(f"{self.path}: section {name!r} is a {sec['kind']}, expected {kind}",
                              rule=rules.SECTION_CONTENT)
        return sec

    def _payload(self, sec: dict, check: bool = True) -> memoryview:
        view = self._buf[sec["offset"]:sec["offset"] + sec["length"]]
        if check and sec["name"] not in self._checked:
            if crc32(view) != sec["crc32"]:
                raise FormatError(f"{self.path}: section {sec['name']!r} checksum mismatch (damaged file)",
                                  rule=rules.SECTION_CRC)
            self._checked.add(sec["name"])
        return view

    def read_array(self, name: str) -> np.ndarray:
        sec = self._section(name, "array")
        return np.frombuffer(self._payload(sec), dtype=np.dtype(sec["dtype"]).newbyteorder("<")).reshape(sec["shape"])

    def read_msgpack(self, name: str):
        sec = self._section(name, "msgpack")
        if sec["length"] > MAX_MSGPACK_SECTION_BYTES:
            raise FormatError(f"{self.path}: section {name!r} is larger than {MAX_MSGPACK_SECTION_BYTES} bytes",
                              rule=rules.SECTION_CONTENT)
        return _unpack_msgpack(bytes(self._payload(sec)), f"{self.path}: section {name!r}",
                               MAX_MSGPACK_SECTION_BYTES)

    def stream(self, name: str) -> "StreamReader":
        return StreamReader(self, self._section(name, "stream"))

    def verify(self) -> list[str]:
        """Check every section checksum and decode every stream chunk; return the problems found."""
        problems = []
        for sec in self.header["sections"]:
            try:
                if crc32(self._payload(sec, check=False)) != sec["crc32"]:
                    problems.append(f"section {sec['name']!r}: checksum mismatch")
                    continue
                if sec["kind"] == "stream":
                    reader = self.stream(sec["name"])
                    for k in range(reader.nchunks):
                        reader.verify_chunk(k)
                    if reader._rans is not None:
                        reader._model()   # the table is checked even when the stream has no chunk
                elif sec["kind"] == "msgpack":
                    self.read_msgpack(sec["name"])
                elif sec["kind"] == "array":
                    self.read_array(sec["name"])
            except FormatError as exc:
                problems.append(str(exc))
            except MemoryError:
                # not a verdict on the file: say so, and name what could not be checked
                raise ResourceError(f"{self.path}: out of memory while verifying section {sec['name']!r} "
                                    "(the file was not found damaged; verify needs about one chunk or "
                                    "one msgpack section of memory at a time)") from None
        return problems


def _close_map(mm) -> None:
    try:
        mm.close()
    except BufferError:
        # Views of the map (numpy arrays, memoryviews held by a traceback) are still alive;
        # the map is unmapped when the last of them goes.
        pass


def _check_sections(header: dict, buf, header_offset: int, bad) -> None:
    """The section-table rules of FORMAT.md: names unique, offsets aligned, sorted and contiguous
    (only zero padding between them), inside the file, sizes consistent with dtype and shape."""
    expected = PREAMBLE.size
    names = set()
    for i, sec in enumerate(header["sections"]):
        name = sec["name"]
        if name in names:
            bad(f"duplicate section name {name!r}", rules.SECTION_LAYOUT)
        names.add(name)
        off, length = sec["offset"], sec["length"]
        if off != expected:
            bad(f"section {name!r} starts at {off}, expected {expected} (sections must be sorted, "
                "64-byte aligned and contiguous)", rules.SECTION_LAYOUT)
        end = off + length  # Python ints: no overflow; bounds checked next
        if end > header_offset:
            bad(f"section {name!r} ({off}+{length}) runs past the header at {header_offset}", rules.SECTION_LAYOUT)
        expected = align_up(end)
        if expected > header_offset:
            bad(f"section {name!r} padding runs past the header", rules.SECTION_LAYOUT)
        if any(buf[end:expected]):
            bad(f"padding after section {name!r} is not zero", rules.SECTION_LAYOUT)
        _check_section_meta(sec, bad)
    if expected != header_offset:
        bad(f"{header_offset - expected} unaccounted bytes between the last section and the header",
            rules.SECTION_LAYOUT)


def _check_sharding(header: dict, req: int, bad) -> None:
    """The format-1.1 rules that need only the header: a manifest holds no streams and a
    ``shards`` msgpack section; a shard holds no params and names its parameters' hash and its
    place in the set."""
    names = [s["name"] for s in header["sections"]]
    if req & FLAG_MANIFEST:
        if req & FLAG_EXTERNAL_PARAMS:
            bad("file is flagged both as a manifest and as a shard", rules.MANIFEST)
        if any(n.startswith("streams/") for n in names):
            bad("a manifest holds streams/* sections (its labels live in its shards)", rules.MANIFEST)
        if not any(s["name"] == "shards" and s["kind"] == "msgpack" for s in header["sections"]):
            bad("a manifest lacks its 'shards' msgpack section", rules.MANIFEST)
        if "params_sha256" not in header["codec"]:
            bad("a manifest's codec map lacks 'params_sha256'", rules.MANIFEST)
    elif req & FLAG_EXTERNAL_PARAMS:
        if any(n.startswith("params/") for n in names):
            bad("a shard holds params/* sections (its codec parameters live in the manifest)", rules.EXTERNAL_PARAMS)
        if "params_sha256" not in header["codec"]:
            bad("a shard's codec map lacks 'params_sha256'", rules.EXTERNAL_PARAMS)
        if "shard" not in header:
            bad("a shard's header lacks 'shard' (its index and first label in the set)", rules.EXTERNAL_PARAMS)


def _check_section_meta(sec: dict, bad) -> None:
    kind, name = sec["kind"], sec["name"]
    if kind == "array":
        if "dtype" not in sec or "shape" not in sec:
            bad(f"array section {name!r} lacks dtype or shape", rules.SECTION_CONTENT)
        itemsize = np.dtype(sec["dtype"]).itemsize
        count = span = 1
        for dim in sec["shape"]:  # Python ints: no overflow
            count *= dim
            span *= max(dim, 1)
        if span * itemsize > MAX_ARRAY_SPAN_BYTES:
            bad(f"array section {name!r}: shape {sec['shape']} is out of bounds (the product of its "
                f"dimensions, each at least 1, times {itemsize} exceeds 2**48)", rules.SECTION_CONTENT)
        if count * itemsize != sec["length"]:
            bad(f"array section {name!r}: shape {sec['shape']} of {sec['dtype']} does not fill "
                f"its {sec['length']} bytes", rules.SECTION_CONTENT)
    elif kind == "stream":
        for key in ("dtype", "rows", "width", "chunk_rows", "coding", "filters"):
            if key not in sec:
                bad(f"stream section {name!r} lacks {key!r}", rules.SECTION_CONTENT)
        nchunks = -(-sec["rows"] // sec["chunk_rows"])
        if nchunks * CHUNK_ENTRY.size > sec["length"]:
            bad(f"stream section {name!r} is too short for its {nchunks}-chunk index", rules.SECTION_CONTENT)
        if sec["coding"] == "rans":
            entropy.check_meta(sec, sec["length"], bad)
        if sec["chunk_rows"] * sec["width"] * np.dtype(sec["dtype"]).itemsize > MAX_CHUNK_BYTES:
            bad(f"stream section {name!r}: chunks of {sec['chunk_rows']} rows exceed the "
                f"{MAX_CHUNK_BYTES}-byte chunk limit", rules.SECTION_CONTENT)
        if len(set(sec["filters"])) != len(sec["filters"]):
            bad(f"stream section {name!r} lists a filter twice", rules.SECTION_CONTENT)
        if sec["filters"] != [f for f in FILTER_ORDER if f in sec["filters"]]:
            bad(f"stream section {name!r}: filters {sec['filters']} are not in the order "
                f"{list(FILTER_ORDER)}", rules.SECTION_CONTENT)


#: one zstd decompression context per thread, reused for every chunk: making one costs ~80 us
#: (it allocates its window buffers), against ~5 us to inflate a small chunk, so a stream of
#: many small chunks (1,000,000 one-row chunks: 29 MB) verified 16x slower with a context per
#: chunk.  Per thread, because a context must not be used by two threads at once.
_DCTX = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_DCTX, "d", None)
    if d is None:
        d = _DCTX.d = zstandard.ZstdDecompressor()
    return d


class StreamReader:
    """Random access to the rows of one stream section; each chunk is decoded (and its CRC
    checked) when first needed."""

    def __init__(self, container: Container, sec: dict):
        self.c = container
        self.sec = sec
        self.name = sec["name"]
        self.dtype = np.dtype(sec["dtype"]).newbyteorder("<")
        self.rows, self.width, self.chunk_rows = sec["rows"], sec["width"], sec["chunk_rows"]
        self.nchunks = -(-self.rows // self.chunk_rows)
        payload = container._buf[sec["offset"]:sec["offset"] + sec["length"]]
        index_start = sec["length"] - self.nchunks * CHUNK_ENTRY.size
        self._payload = payload
        #: rans (format 1.6): the frequency table's bytes precede chunk 0; decoded on first use
        self._rans = sec.get("rans") if sec["coding"] == "rans" else None
        self._table = None
        # the index read at once (a Python loop over a million entries took ~1 s)
        index = np.frombuffer(payload, dtype=_INDEX_DTYPE, count=self.nchunks, offset=index_start)
        ends = index["end"]
        starts = np.zeros_like(ends)
        starts[1:] = ends[:-1]
        if self._rans is not None and self.nchunks:
            starts[0] = self._rans["model_bytes"]
        bad = (index["reserved"] != 0) | (ends < starts) | (ends > index_start)
        if bad.any():
            k = int(np.argmax(bad))
            raise FormatError(f"{container.path}: stream {self.name!r}: chunk {k} index entry is invalid "
                              "(not sorted, outside the section or reserved bits set)", rule=rules.SECTION_CONTENT)
        self._starts, self._ends, self._crcs = starts.tolist(), ends.tolist(), index["crc32"].tolist()
        # no chunk: the index starts where chunk 0 would (after a rans stream's table)
        prev = self._ends[-1] if self.nchunks else (self._rans["model_bytes"] if self._rans is not None else 0)
        if prev != index_start:
            raise FormatError(f"{container.path}: stream {self.name!r}: chunks do not end where the index starts",
                              rule=rules.SECTION_CONTENT)
        self._cache: dict[int, np.ndarray] = {}

    def chunk_rows_of(self, k: int) -> int:
        return min(self.chunk_rows, self.rows - k * self.chunk_rows)

    def _inflate(self, k: int) -> bytes:
        """Chunk ``k``'s bytes after the coding, checked: its CRC, one zstd frame declaring
        exactly the chunk's size (checked before inflating, so a chunk never inflates to more
        than the layout says), and nothing stored after that frame."""
        data = self._payload[self._starts[k]:self._ends[k]]
        bad_chunk = f"{self.c.path}: stream {self.name!r} chunk {k}"
        if crc32(data) != self._crcs[k]:
            raise FormatError(f"{bad_chunk}: checksum mismatch (damaged file)", rule=rules.SECTION_CRC)
        n = self.chunk_rows_of(k)
        expected = n * self.width * self.dtype.itemsize
        if self.sec["coding"] == "zstd":
            try:
                params = zstandard.get_frame_parameters(bytes(data[:18]))
            except zstandard.ZstdError as exc:
                raise FormatError(f"{bad_chunk}: bad zstd frame ({exc})", rule=rules.SECTION_CONTENT) from None
            if params.content_size != expected:
                raise FormatError(f"{bad_chunk}: declares {params.content_size} bytes, expected {expected}",
                                  rule=rules.SECTION_CONTENT)
            try:
                # allow_extra_data=False: a chunk is exactly one frame (no second frame, no skippable
                # frame, no trailing bytes that one reader would ignore and another might not)
                raw = _decompressor().decompress(bytes(data), max_output_size=expected, allow_extra_data=False)
            except zstandard.ZstdError as exc:
                raise FormatError(f"{bad_chunk}: is not exactly one valid zstd frame ({exc})",
                                  rule=rules.SECTION_CONTENT) from None
        else:
            raw = bytes(data)
        if len(raw) != expected:
            raise FormatError(f"{bad_chunk}: holds {len(raw)} bytes, expected {expected}", rule=rules.SECTION_CONTENT)
        return raw

    def _model(self) -> np.ndarray:
        """The rans stream's frequency table ``[width, alphabet]``, checked (its CRC, then the rules
        of :func:`slcodec.format.entropy.unpack_model`)."""
        if self._table is None:
            r = self._rans
            data = self._payload[:r["model_bytes"]]
            where = f"{self.c.path}: stream {self.name!r}"
            if crc32(data) != r["model_crc32"]:
                raise FormatError(f"{where}: frequency table checksum mismatch (damaged file)", rule=rules.SECTION_CRC)
            self._table = entropy.unpack_model(data, self.width, r["alphabet"], where)
        return self._table

    def _decode_rans(self, k: int) -> np.ndarray:
        data = self._payload[self._starts[k]:self._ends[k]]
        bad_chunk = f"{self.c.path}: stream {self.name!r} chunk {k}"
        if crc32(data) != self._crcs[k]:
            raise FormatError(f"{bad_chunk}: checksum mismatch (damaged file)", rule=rules.SECTION_CRC)
        r = self._rans
        return entropy.decode_chunk(data, self.chunk_rows_of(k), self._model(), k * self.chunk_rows,
                                    r["group_rows"], r["group_phase"], r["increment"], self.dtype, bad_chunk)

    def verify_chunk(self, k: int) -> None:
        """Every check of :meth:`read_chunk` without building the rows (the filters only reorder
        bytes of the right size and cannot fail): memory of one chunk, nothing cached."""
        if self._rans is not None:
            self._decode_rans(k)
        else:
            self._inflate(k)

    def read_chunk(self, k: int) -> np.ndarray:
        cached = self._cache.get(k)
        if cached is not None:
            return cached
        if self._rans is not None:
            arr = self._decode_rans(k)
        else:
            raw = self._inflate(k)
            arr = _filter_inverse(raw, self.dtype, self.chunk_rows_of(k), self.width, self.sec["filters"])
        arr.setflags(write=False)
        # a small cache (sequential and nearby random reads hit it), bounded in entries and in
        # bytes: 8 chunks of ~1 MiB as slcodec writes them, but never 8 chunks of 64 MiB
        while self._cache and (len(self._cache) >= 8 or self._cache_bytes() + arr.nbytes > STREAM_CACHE_BYTES):
            self._cache.pop(next(iter(self._cache)))
        self._cache[k] = arr
        return arr

    def _cache_bytes(self) -> int:
        return sum(a.nbytes for a in self._cache.values())

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        if not (0 <= start <= stop <= self.rows):
            raise IndexError(f"rows {start}:{stop} outside stream {self.name!r} of {self.rows} rows")
        out = np.empty((stop - start, self.width), dtype=self.dtype)
        k0, k1 = start // self.chunk_rows, (stop - 1) // self.chunk_rows if stop > start else -1
        for k in range(k0, k1 + 1):
            base = k * self.chunk_rows
            lo, hi = max(start, base), min(stop, base + self.chunk_rows)
            out[lo - start:hi - start] = self.read_chunk(k)[lo - base:hi - base]
        return out

    def take(self, rows: Iterable[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"row index outside stream {self.name!r} of {self.rows} rows")
        out = np.empty((rows.size, self.width), dtype=self.dtype)
        chunk_of = rows // self.chunk_rows
        for k in np.unique(chunk_of):
            sel = chunk_of == k
            out[sel] = self.read_chunk(int(k))[rows[sel] - k * self.chunk_rows]
        return out
