"""A .vqsl file taken apart into editable parts and put back together with every checksum right.

Written from FORMAT.md, not from slcodec's code, for the structural fuzzer (benchmarks/fuzz.py):
a mutation edits the parts (a header value, a section's payload, a stream's chunks or chunk
index, a zstd frame, the preamble), and :func:`serialize` lays the sections out again and
recomputes what a careless mutation would break first - chunk CRCs and the chunk index,
section offsets, lengths and CRCs, the header CRC and the preamble CRC - unless the mutation
asked to keep a wrong value.  So every mutated file reaches the rules behind the checksums.

The msgpack packer is our own so that a header can hold what ``msgpack.packb`` will not write:
a key twice in a map (:class:`Pairs`), a binary or integer key, a float32 float (:class:`F32`),
a non-minimal integer width (:class:`WideInt`), raw bytes spliced in (:class:`Raw`).
"""
from __future__ import annotations

import copy
import struct
import zlib

import msgpack
import numpy as np
import zstandard

import fuzz_rans

MAGIC = b"\x89VQS\r\n\x1a\n"
PREAMBLE = struct.Struct("<8sHHIIIQQQI8sI")
FIELDS = ("magic", "major", "minor", "required_flags", "optional_flags", "reserved", "header_offset",
          "header_length", "file_length", "header_crc32", "reserved2", "preamble_crc32")
CHUNK_ENTRY = struct.Struct("<QII")
FILTER_ORDER = ("transpose", "byteshuffle")


def crc(b) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def align(n: int) -> int:
    return (n + 63) // 64 * 64


# ------------------------------------------------------------------------------------- msgpack
class Pairs(list):
    """A msgpack map written as its (key, value) pairs, in order: keys may repeat or be non-strings."""


class Raw(bytes):
    """Bytes spliced into the msgpack output as they are."""


class F32(float):
    """A float written as msgpack float32."""


class WideInt(int):
    """An integer written in 8 bytes (uint64 / int64) whatever its value."""


def _pairs_hook(pairs):
    keys = [k for k, _ in pairs]
    if all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys):
        return dict(pairs)
    return Pairs(pairs)


def unpack(data: bytes):
    """Decode msgpack keeping maps with repeated or non-string keys as :class:`Pairs`."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, object_pairs_hook=_pairs_hook,
                           ext_hook=msgpack.ExtType)


def pack(obj) -> bytes:
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _pack_len(n, fix_base, fix_max, codes, out):
    if fix_base is not None and n <= fix_max:
        out.append(fix_base | n)
    elif n < 1 << 8 and codes[0] is not None:
        out += bytes([codes[0]]) + struct.pack(">B", n)
    elif n < 1 << 16:
        out += bytes([codes[1]]) + struct.pack(">H", n)
    else:
        out += bytes([codes[2]]) + struct.pack(">I", n)


def _pack(obj, out: bytearray) -> None:  # noqa: C901 - one branch per msgpack type
    if isinstance(obj, Raw):
        out += obj
    elif obj is None:
        out.append(0xC0)
    elif obj is True or obj is False:
        out.append(0xC3 if obj else 0xC2)
    elif isinstance(obj, WideInt):
        out += (b"\xcf" + struct.pack(">Q", int(obj))) if obj >= 0 else (b"\xd3" + struct.pack(">q", int(obj)))
    elif isinstance(obj, int):
        if 0 <= obj < 128:
            out.append(obj)
        elif -32 <= obj < 0:
            out += struct.pack(">b", obj)
        elif 0 <= obj < 1 << 64:
            for code, fmt, lim in ((0xCC, ">B", 1 << 8), (0xCD, ">H", 1 << 16), (0xCE, ">I", 1 << 32),
                                   (0xCF, ">Q", 1 << 64)):
                if obj < lim:
                    out += bytes([code]) + struct.pack(fmt, obj)
                    break
        elif -(1 << 63) <= obj < 0:
            for code, fmt, lim in ((0xD0, ">b", 1 << 7), (0xD1, ">h", 1 << 15), (0xD2, ">i", 1 << 31),
                                   (0xD3, ">q", 1 << 63)):
                if obj >= -lim:
                    out += bytes([code]) + struct.pack(fmt, obj)
                    break
        else:
            raise OverflowError(f"msgpack cannot hold {obj}")
    elif isinstance(obj, F32):
        out += b"\xca" + struct.pack(">f", float(obj))
    elif isinstance(obj, float):
        out += b"\xcb" + struct.pack(">d", obj)
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")  # a lone surrogate makes invalid UTF-8 on purpose
        _pack_len(len(b), 0xA0, 31, (0xD9, 0xDA, 0xDB), out)
        out += b
    elif isinstance(obj, (bytes, bytearray)):
        _pack_len(len(obj), None, -1, (0xC4, 0xC5, 0xC6), out)
        out += obj
    elif isinstance(obj, msgpack.ExtType):
        out += msgpack.packb(obj)
    elif isinstance(obj, Pairs):
        _pack_len(len(obj), 0x80, 15, (None, 0xDE, 0xDF), out)
        for k, v in obj:
            _pack(k, out)
            _pack(v, out)
    elif isinstance(obj, dict):
        _pack_len(len(obj), 0x80, 15, (None, 0xDE, 0xDF), out)
        for k, v in obj.items():
            _pack(k, out)
            _pack(v, out)
    elif isinstance(obj, (list, tuple)):
        _pack_len(len(obj), 0x90, 15, (None, 0xDC, 0xDD), out)
        for v in obj:
            _pack(v, out)
    else:
        raise TypeError(f"cannot pack {type(obj).__name__}")


# ------------------------------------------------------------------------------------- streams
def filter_forward(block: np.ndarray, filters) -> bytes:
    """FORMAT.md's write steps: ``transpose`` (column-major), then ``byteshuffle`` (byte planes)."""
    a = np.ascontiguousarray(block)
    for f in filters:
        if f == "transpose":
            a = np.ascontiguousarray(a.reshape(a.shape[0], -1).T) if a.ndim == 2 else a
        elif f == "byteshuffle":
            a = np.ascontiguousarray(a.reshape(-1).view(np.uint8).reshape(-1, a.dtype.itemsize).T)
    return a.tobytes()


def filter_inverse(raw: bytes, dtype, rows: int, width: int, filters) -> np.ndarray:
    dtype = np.dtype(dtype).newbyteorder("<")
    buf = np.frombuffer(raw, dtype=np.uint8)
    shape = (rows, width)
    for f in reversed(list(filters)):
        if f == "byteshuffle":
            buf = np.ascontiguousarray(buf.reshape(dtype.itemsize, -1).T).reshape(-1)
        elif f == "transpose":
            t = buf.view(dtype).reshape(width, rows)
            buf = np.ascontiguousarray(t.T).reshape(-1).view(np.uint8)
    return buf.view(dtype).reshape(shape).copy()


def zstd_frame(raw: bytes, level: int = 3, content_size: bool = True, checksum: bool = False) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=content_size,
                                    write_checksum=checksum).compress(raw)


# ------------------------------------------------------------------------------------- the model
class Section:
    """One section: its header entry (without offset, length, crc32) and its payload.

    A stream's payload is its ``chunks`` (stored bytes) and the index that :meth:`payload`
    builds from them; ``chunk_crcs`` / ``reserved`` override an index entry's CRC or reserved word,
    ``index_edit`` rewrites the built index bytes, and ``keep`` holds entry fields (offset,
    length, crc32) that :func:`serialize` must not recompute.  A stream coded ``rans`` (format 1.6)
    also has its ``model`` (the table's zstd frame, stored before chunk 0), kept as bytes."""

    def __init__(self, entry: dict, payload: bytes = b"", chunks=None):
        self.entry = entry
        self.data = payload
        self.chunks = chunks
        self.chunk_crcs: dict[int, int] = {}
        self.reserved: dict[int, int] = {}
        self.index_edit = None
        self.keep: dict = {}
        self.gap_before = b""  # bytes stored between the previous section's padding and this one
        self.model = b""  # rans: the bytes before chunk 0 (the table); chunk ends count from 0 all the same

    @property
    def name(self):
        return self.entry.get("name")

    @property
    def kind(self):
        return self.entry.get("kind")

    def clone(self) -> "Section":
        s = Section(copy.deepcopy(self.entry), self.data, list(self.chunks) if self.chunks is not None else None)
        s.chunk_crcs, s.reserved, s.keep = dict(self.chunk_crcs), dict(self.reserved), dict(self.keep)
        s.index_edit, s.gap_before, s.model = self.index_edit, self.gap_before, self.model
        return s

    def payload(self) -> bytes:
        if self.chunks is None:
            return self.data
        index = bytearray()
        end = len(self.model)
        for k, chunk in enumerate(self.chunks):
            end += len(chunk)
            index += CHUNK_ENTRY.pack(end, self.chunk_crcs.get(k, crc(chunk)), self.reserved.get(k, 0))
        body = self.model + b"".join(self.chunks) + bytes(index)
        return self.index_edit(body) if self.index_edit else body

    # -- stream helpers: decode the rows of a (valid) stream, or store new rows ------------------
    def rows_array(self) -> np.ndarray:
        e = self.entry
        dtype = np.dtype(e["dtype"]).newbyteorder("<")
        rows, width, cr = e["rows"], e["width"], e["chunk_rows"]
        parts = []
        if e["coding"] == "rans":
            r = e["rans"]
            g = fuzz_rans.read_table(self.model, width, r["alphabet"])
            for k, chunk in enumerate(self.chunks):
                n = min(cr, rows - k * cr)
                parts.append(fuzz_rans.decode_chunk(chunk, n, g, k * cr, r["group_rows"], r["group_phase"],
                                                    r["increment"]).astype(dtype))
            return np.concatenate(parts) if parts else np.zeros((0, width), dtype)
        for k, chunk in enumerate(self.chunks):
            n = min(cr, rows - k * cr)
            raw = zstandard.ZstdDecompressor().decompress(chunk) if e["coding"] == "zstd" else chunk
            parts.append(filter_inverse(raw, dtype, n, width, e["filters"]))
        return np.concatenate(parts) if parts else np.zeros((0, width), dtype)

    def store_rows(self, arr: np.ndarray, chunk_rows: int | None = None, filters=None, coding=None,
                   level: int = 1) -> None:
        e = self.entry
        arr = np.ascontiguousarray(arr)
        cr = chunk_rows or e.get("chunk_rows") or 4096
        filters = list(e.get("filters", []) if filters is None else filters)
        coding = coding or e.get("coding", "zstd")
        if coding == "rans" and not self._store_rans(arr, int(cr), filters):
            coding = "zstd"   # rows rans cannot code (a float, a symbol >= 65,536, filters): zstd
        if coding == "rans":
            return
        e.pop("rans", None)
        self.model = b""
        e.update(dtype=arr.dtype.name, rows=int(arr.shape[0]), width=int(arr.shape[1]), chunk_rows=int(cr),
                 coding=coding, filters=filters)
        self.chunks = []
        for start in range(0, arr.shape[0], cr):
            raw = filter_forward(arr[start:start + cr], filters)
            self.chunks.append(zstd_frame(raw, level) if coding == "zstd" else raw)
        self.chunk_crcs, self.reserved, self.index_edit = {}, {}, None

    def _store_rans(self, arr: np.ndarray, cr: int, filters) -> bool:
        """Store ``arr`` coded rans with a table of its own counts, keeping the entry's increment and
        groups (False: FORMAT.md's rans cannot hold these rows)."""
        e = self.entry
        if arr.dtype.name not in ("uint8", "uint16", "uint32") or filters or arr.ndim != 2 or not 1 <= cr:
            return False
        S = max(int(arr.max()) + 1 if arr.size else 2, 2)
        if S > fuzz_rans.MAX_ALPHABET or arr.shape[1] * S > 1 << 20:
            return False
        old = e.get("rans") if isinstance(e.get("rans"), dict) else {}
        inc, gr = old.get("increment", 0), old.get("group_rows", 0)
        phase = old.get("group_phase", 0)
        if not all(type(v) is int for v in (inc, gr, phase)) or not 0 <= inc <= 65536 or \
                not 0 <= gr <= 65536 or not (0 <= phase < gr or phase == gr == 0):
            inc, gr, phase = 0, 0, 0
        g = fuzz_rans.table_from_counts(arr, S)
        model = fuzz_rans.pack_table(g)
        self.chunks = [fuzz_rans.encode_chunk(arr[start:start + cr], g, start, gr, phase, inc)
                       for start in range(0, arr.shape[0], cr)]
        self.model = model
        e.update(dtype=arr.dtype.name, rows=int(arr.shape[0]), width=int(arr.shape[1]), chunk_rows=int(cr),
                 coding="rans", filters=[])
        e["rans"] = {"alphabet": S, "increment": inc, "group_rows": gr, "group_phase": phase,
                     "model_bytes": len(model), "model_crc32": crc(model)}
        self.chunk_crcs, self.reserved, self.index_edit = {}, {}, None
        return True


class VFile:
    """A whole file: preamble fields, the header (its ``sections`` rebuilt from :attr:`sections`
    when serialized), and edits that run after the layout (``post``: header tree edits;
    ``header_edit``: header bytes; ``pre_edit``: preamble fields)."""

    def __init__(self, pre: dict, header, sections: list[Section]):
        self.pre = pre
        self.header = header
        self.sections = sections
        self.post = []
        self.header_edit = None
        self.pre_edit = None
        self.fix_preamble_crc = True
        self.trailing = b""  # bytes after the header (beyond the declared file)

    def clone(self) -> "VFile":
        v = VFile(dict(self.pre), copy.deepcopy(self.header), [s.clone() for s in self.sections])
        v.post, v.header_edit, v.pre_edit = list(self.post), self.header_edit, self.pre_edit
        v.fix_preamble_crc, v.trailing = self.fix_preamble_crc, self.trailing
        return v

    def section(self, name):
        for s in self.sections:
            if s.name == name:
                return s
        return None

    @property
    def flags(self) -> int:
        return self.pre.get("required_flags", 0)


def parse(data: bytes) -> VFile:
    """Take a valid file apart (raises on a file it cannot take apart)."""
    pre = dict(zip(FIELDS, PREAMBLE.unpack(data[:64])))
    off, length = pre["header_offset"], pre["header_length"]
    header = unpack(data[off:off + length])
    sections = []
    for e in header["sections"]:
        payload = data[e["offset"]:e["offset"] + e["length"]]
        entry = {k: v for k, v in e.items() if k not in ("offset", "length", "crc32")}
        if e["kind"] == "stream":
            n = -(-e["rows"] // e["chunk_rows"])
            index_start = len(payload) - 16 * n
            # rans (format 1.6): the table comes first and chunk 0 starts after it
            prev = e["rans"]["model_bytes"] if e.get("coding") == "rans" else 0
            model, chunks = payload[:prev], []
            for k in range(n):
                end, _, _ = CHUNK_ENTRY.unpack_from(payload, index_start + 16 * k)
                chunks.append(payload[prev:end])
                prev = end
            sections.append(Section(entry, chunks=chunks))
            sections[-1].model = model
        else:
            sections.append(Section(entry, payload))
    header = {k: v for k, v in header.items()}
    header["sections"] = None  # placeholder, keeps the key's position
    return VFile(pre, header, sections)


def _entry(s: Section, offset: int, payload: bytes) -> dict:
    e = {"name": s.entry.get("name"), "kind": s.entry.get("kind"), "offset": offset, "length": len(payload),
         "crc32": crc(payload)}
    for k, v in s.entry.items():
        if k not in ("name", "kind"):
            e[k] = v
    if "name" not in s.entry:
        del e["name"]
    if "kind" not in s.entry:
        del e["kind"]
    e.update(s.keep)
    return e


def serialize(v: VFile) -> bytes:
    body = bytearray()
    entries = []
    for s in v.sections:
        payload = s.payload()
        body += b"\0" * (align(64 + len(body)) - 64 - len(body))
        body += s.gap_before
        entries.append(_entry(s, 64 + len(body), payload))
        body += payload
    body += b"\0" * (align(64 + len(body)) - 64 - len(body))
    header = v.header
    if isinstance(header, dict):
        header = dict(header)
        if "sections" in header:
            header["sections"] = entries
    for fn in v.post:
        header = fn(header) or header
    hb = pack(header)
    if v.header_edit is not None:
        hb = v.header_edit(hb)
    pre = dict(v.pre)
    pre.update(header_offset=64 + len(body), header_length=len(hb), file_length=64 + len(body) + len(hb),
               header_crc32=crc(hb))
    if v.pre_edit is not None:
        v.pre_edit(pre)
    raw = PREAMBLE.pack(*(pre[f] for f in FIELDS))
    if v.fix_preamble_crc:
        raw = raw[:60] + struct.pack("<I", crc(raw[:60]))
    return raw + bytes(body) + hb + v.trailing


# ------------------------------------------------------------------------------------- sharded sets
def params_sha256(sections: list[Section]) -> str | None:
    """FORMAT.md's params_sha256 of the ``params/*`` array sections (None if one cannot be hashed)."""
    import hashlib
    h = hashlib.sha256(b"vqsl-params-sha256-v1\0")
    params = sorted((s for s in sections if isinstance(s.name, str) and s.name.startswith("params/")),
                    key=lambda s: s.name[7:].encode("utf-8", "surrogatepass"))
    for s in params:
        e = s.entry
        try:
            name = s.name[7:].encode("utf-8", "surrogatepass")
            dtype = str(e["dtype"]).encode("ascii")
            shape = [int(d) for d in e["shape"]]
            h.update(struct.pack("<I", len(name)) + name + struct.pack("<I", len(dtype)) + dtype
                     + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
                     + struct.pack("<Q", len(s.data)) + s.data)
        except Exception:  # noqa: BLE001 - a hostile entry: leave the hash alone
            return None
    return h.hexdigest()
