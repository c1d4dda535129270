"""An independent check of FORMAT.md's MUST-reject rules, for files that slcodec accepted.

benchmarks/fuzz.py calls :func:`violations` on every mutated file set that slcodec opened,
decoded and verified without complaint; anything it returns is a rule the file breaks and
slcodec let through (a false "valid").  Written from FORMAT.md alone: it imports nothing from
slcodec, reads the codec config bounds from FORMAT.md's own tables, and does its own msgpack
key/depth/count checks, its own layout and chunk-index walk and its own zstd frame check.
It covers the container rules, the labels rules, the codec config bounds and the codec
rules about names, dtypes, shapes and stream value ranges; the vq logit bound is recomputed
as FORMAT.md gives it (on the dequantised values for vq's int8 parameters, format 1.5).
Streams coded `rans` (format 1.6, required flag bit 2) are decoded by benchmarks/fuzz_rans.py,
a plain decoder of FORMAT.md's section, every chunk to its final state.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import struct
import zlib

import msgpack
import numpy as np
import zstandard

import fuzz_rans

MAGIC = b"\x89VQS\r\n\x1a\n"
PRE = struct.Struct("<8sHHIIIQQQI8sI")
DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64"}
MAX_CLASSES = 2**20
FLAG_MANIFEST, FLAG_EXTERNAL_PARAMS, FLAG_RANS_STREAMS = 0x1, 0x2, 0x4
KNOWN_FLAGS = FLAG_MANIFEST | FLAG_EXTERNAL_PARAMS | FLAG_RANS_STREAMS
_DCTX = zstandard.ZstdDecompressor()  # one context for every chunk: making one costs ~80 us
HERE = os.path.dirname(os.path.abspath(__file__))


def crc(b) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------- bounds from FORMAT.md
def _num(s: str):
    s = s.replace(",", "").strip()
    return int(s) if re.fullmatch(r"-?\d+", s) else float(s)


def _parse_rule(text: str):
    """A bounds-table rule as a predicate on a value."""
    text = text.strip()
    m = re.fullmatch(r"(null or )?integer, (-?[\d,]+) \.\. (-?[\d,]+)", text)
    if m:
        lo, hi, nullable = _num(m.group(2)), _num(m.group(3)), bool(m.group(1))
        return lambda v: (nullable and v is None) or (type(v) is int and lo <= v <= hi)
    m = re.fullmatch(r"finite number, ([\(\[])([^,]+), ([^\]\)]+)([\]\)])", text)
    if m:
        return _interval(m)
    m = re.fullmatch(r"one of (.*)", text)
    if m:
        choices = re.findall(r'`"([^"]*)"`', m.group(1))
        return lambda v: isinstance(v, str) and v in choices
    m = re.fullmatch(r"list of (\d+) \.\. (\d+) items, each a finite number, ([\(\[])([^,]+), ([^\]\)]+)([\]\)])", text)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        each = _interval(m, 3)
        return lambda v: isinstance(v, list) and lo <= len(v) <= hi and all(each(x) for x in v)
    raise ValueError(f"FORMAT.md bounds rule not understood: {text!r}")


def _interval(m, first=1):
    lb, lo, hi, rb = m.group(first), _num(m.group(first + 1)), _num(m.group(first + 2)), m.group(first + 3)

    def ok(v):
        if type(v) not in (int, float) or not math.isfinite(v):
            return False
        return (v > lo if lb == "(" else v >= lo) and (v < hi if rb == ")" else v <= hi)
    return ok


def load_bounds(path=os.path.join(HERE, "..", "FORMAT.md")) -> dict:
    """codec id -> {key: predicate}, from FORMAT.md's config-bounds tables."""
    text = open(path, encoding="utf-8").read()
    bounds = {"fp32": {}, "fp16": {}}
    for codec, heading in (("topk", "<!-- bounds: topk -->"), ("vq", "<!-- bounds: vq -->"),
                           ("sparse", "<!-- bounds: sparse -->"), ("sq", "### `sq`"), ("imgprior", "### `imgprior`")):
        part = text.split(heading, 1)[1]
        table = part.split("| key | rule |", 1)[1].split("\n\n", 1)[0]
        rules = {}
        for line in table.splitlines():
            m = re.match(r"\| `(\w+)` \| (.*) \|$", line.strip())
            if m:
                rules[m.group(1)] = _parse_rule(m.group(2))
        assert rules, codec
        bounds[codec] = rules
    return bounds


BOUNDS = load_bounds()
#: config keys a reader needs to decode (FORMAT.md, each codec's section)
NEEDED = {"fp32": [], "fp16": [], "topk": ["k"], "sparse": ["k", "step", "tail", "prior_step"],
          "sq": ["bits_per_class", "top1_margin"], "imgprior": ["residual_k", "residual_step", "top1_margin"],
          "vq": ["code_dim", "hidden", "decoder_layers", "margin"]}


# ------------------------------------------------------------------------------------- msgpack rules
class _Bad(Exception):
    pass


def msgpack_problems(raw: bytes, cap: int) -> list[str]:
    """Keys strings and unique, no ext type, nesting <= 16, <= 2**20 values, one value, <= cap bytes."""
    if len(raw) > cap:
        return [f"msgpack of {len(raw)} bytes over {cap}"]
    problems = []

    def pairs(ps):
        keys = [k for k, _ in ps]
        if not all(type(k) is str for k in keys):
            problems.append("a map key that is not a string")
        if len(set(map(repr, keys))) != len(keys):
            problems.append("a key twice in one map")
        return dict((repr(k), v) for k, v in ps)

    def ext(code, data):
        problems.append("an ext type")
        return None
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False, object_pairs_hook=pairs, ext_hook=ext)
    except Exception as exc:  # noqa: BLE001 - any failure: not one valid msgpack value
        return problems + [f"not one valid msgpack value ({type(exc).__name__})"]
    depth, count = 0, 0
    stack = [(obj, 0)]
    while stack:  # depth: nesting of maps/arrays (a scalar at top level is depth 0)
        o, d = stack.pop()
        count += 1
        if isinstance(o, dict):
            depth = max(depth, d + 1)
            count += len(o)  # keys count one each
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            depth = max(depth, d + 1)
            stack.extend((v, d + 1) for v in o)
    if depth > 16:
        problems.append(f"nesting {depth} > 16")
    if count > 2**20:
        problems.append(f"{count} values > 2**20")
    return problems


# ------------------------------------------------------------------------------------- one container
class Parsed:
    def __init__(self, data: bytes):
        self.data = data
        self.problems: list[str] = []
        self.header = None
        self.sections = {}
        self.flags = 0


def _is_int(v):
    return type(v) is int


def container_problems(data: bytes) -> Parsed:
    p = Parsed(data)
    bad = p.problems.append
    if len(data) < 64:
        bad("truncated: under 64 bytes")
        return p
    pre = PRE.unpack(data[:64])
    magic, major, _minor, req, _opt, res, hoff, hlen, flen, hcrc, res2, pcrc = pre
    if magic != MAGIC:
        bad("magic")
    if major != 1:
        bad("version: major != 1")
    if req & ~KNOWN_FLAGS:
        bad(f"required-flags {req:#x}")
    if req & 3 == 3:
        bad("manifest: a manifest (bit 0) also sets bit 1")
    p.flags = req
    if res != 0 or res2 != b"\0" * 8:
        bad("preamble-reserved")
    if crc(data[:60]) != pcrc:
        bad("preamble-crc")
    if flen != len(data):
        bad("truncated: file_length")
    if hlen > 16 << 20 or hoff % 64 or hoff < 64 or hoff + hlen != len(data):
        bad("header-bounds")
        return p
    hb = data[hoff:hoff + hlen]
    if crc(hb) != hcrc:
        bad("header-crc")
    syn = msgpack_problems(hb, 16 << 20)
    if syn:
        bad("header-syntax: " + "; ".join(syn))
        return p
    h = msgpack.unpackb(hb, raw=False, strict_map_key=False)
    p.header = h
    # ---- the schema's essentials
    if not isinstance(h, dict) or not isinstance(h.get("labels"), dict) or not isinstance(h.get("codec"), dict) \
            or not isinstance(h.get("sections"), list):
        bad("header-schema: labels/codec/sections")
        return p
    lab = h["labels"]
    for key in ("count", "shape", "classes", "source_kind"):
        if key not in lab:
            bad(f"header-schema: labels.{key} missing")
            return p
    if not _is_int(lab["count"]) or lab["count"] < 0:
        bad("header-schema: labels.count")
    if not _is_int(lab["classes"]) or not 2 <= lab["classes"] <= MAX_CLASSES:
        bad("header-schema: labels.classes out of 2..2**20")
    if not isinstance(lab["shape"], list) or len(lab["shape"]) not in (2, 3) or \
            not all(_is_int(d) and d >= 0 for d in lab["shape"]):
        bad("header-schema: labels.shape")
    if lab["source_kind"] not in ("logits", "probs"):
        bad("header-schema: source_kind")
    if p.problems:
        return p
    if math.prod(lab["shape"][:-1]) != lab["count"] or lab["shape"][-1] != lab["classes"]:
        bad("labels: shape, count, classes disagree")
    codec = h["codec"]
    if not isinstance(codec.get("id"), str) or not isinstance(codec.get("config"), dict):
        bad("header-schema: codec id/config")
        return p
    secs = h["sections"]
    if len(secs) > 4096:
        bad("header-schema: over 4096 sections")
    pos = 64
    names = set()
    for e in secs:
        if not isinstance(e, dict):
            bad("header-schema: section entry")
            return p
        name, kind = e.get("name"), e.get("kind")
        if not isinstance(name, str) or len(name) > 128 or kind not in ("array", "stream", "msgpack"):
            bad(f"header-schema: section name/kind {name!r} {kind!r}")
            return p
        if name in names:
            bad(f"section-layout: name {name!r} twice")
        names.add(name)
        off, length, scrc = e.get("offset"), e.get("length"), e.get("crc32")
        if not (_is_int(off) and _is_int(length) and _is_int(scrc)) or off < 0 or length < 0:
            bad(f"header-schema: {name} offset/length/crc32")
            return p
        if off != (pos + 63) // 64 * 64:
            bad(f"section-layout: {name} at {off}, expected {(pos + 63) // 64 * 64}")
            return p
        if any(data[pos:off]):
            bad(f"section-layout: non-zero padding before {name}")
        if off + length > hoff:
            bad(f"section-layout: {name} runs into the header")
            return p
        payload = data[off:off + length]
        if crc(payload) != scrc:
            bad(f"section-crc: {name}")
        p.sections[name] = (e, payload)
        pos = off + length
        if kind == "array":
            _array_rules(e, name, bad)
        elif kind == "stream":
            _stream_rules(e, name, payload, bad, req)
        else:
            syn = msgpack_problems(payload, 64 << 20)
            if syn:
                bad(f"header-syntax (section {name}): " + "; ".join(syn))
    if hoff != ((pos + 63) // 64 * 64 if secs else 64):
        bad("section-layout: gap before the header")
    if any(data[pos:hoff]):
        bad("section-layout: non-zero padding before the header")
    return p


def _array_rules(e, name, bad):
    if e.get("dtype") not in DTYPES or not isinstance(e.get("shape"), list) or len(e["shape"]) > 8 or \
            not all(_is_int(d) and d >= 0 for d in e["shape"]):
        bad(f"header-schema: array {name} dtype/shape")
        return
    item = np.dtype(e["dtype"]).itemsize
    if math.prod(e["shape"]) * item != e["length"]:
        bad(f"section-content: array {name} length")
    if math.prod(max(d, 1) for d in e["shape"]) * item > 2**48:
        bad(f"section-content: array {name} shape over 2**48 bytes")


def _stream_rules(e, name, payload, bad, flags=0):
    for key in ("dtype", "rows", "width", "chunk_rows", "coding", "filters"):
        if key not in e:
            bad(f"section-content: stream {name} lacks {key}")
            return
    if e["dtype"] not in DTYPES or e["coding"] not in ("raw", "zstd", "rans") or not isinstance(e["filters"], list) or \
            not all(f in ("transpose", "byteshuffle") for f in e["filters"]):
        bad(f"header-schema: stream {name} dtype/coding/filters")
        return
    if not all(_is_int(e[k]) for k in ("rows", "width", "chunk_rows")) or e["rows"] < 0 or e["width"] < 0 \
            or e["chunk_rows"] < 1:
        bad(f"header-schema: stream {name} rows/width/chunk_rows")
        return
    if len(set(e["filters"])) != len(e["filters"]) or e["filters"] == ["byteshuffle", "transpose"]:
        bad(f"section-content: stream {name} filters {e['filters']}")
    item = np.dtype(e["dtype"]).itemsize
    if e["chunk_rows"] * e["width"] * item > 64 << 20:
        bad(f"section-content: stream {name} chunk over 64 MiB")
        return
    n = -(-e["rows"] // e["chunk_rows"])
    index_start = len(payload) - 16 * n
    if index_start < 0:
        bad(f"section-content: stream {name} index does not fit")
        return
    prev = 0
    table = None
    if e["coding"] == "rans":
        table = _rans_rules(e, name, payload, bad, flags, index_start)
        if table is None:
            return
        prev = e["rans"]["model_bytes"]
    for k in range(n):
        end, ccrc, reserved = struct.unpack_from("<QII", payload, index_start + 16 * k)
        if reserved or end < prev or end > index_start:
            bad(f"section-content: stream {name} index entry {k}")
            return
        chunk = payload[prev:end]
        prev = end
        if crc(chunk) != ccrc:
            bad(f"section-crc: stream {name} chunk {k}")
        rows = min(e["chunk_rows"], e["rows"] - k * e["chunk_rows"])
        expected = rows * e["width"] * item
        if e["coding"] == "raw":
            if len(chunk) != expected:
                bad(f"section-content: stream {name} raw chunk {k} size")
            continue
        if e["coding"] == "rans":
            r = e["rans"]
            try:
                fuzz_rans.decode_chunk(chunk, rows, table, k * e["chunk_rows"], r["group_rows"], r["group_phase"],
                                       r["increment"])
            except fuzz_rans.RansError as exc:
                bad(f"section-content: stream {name} rans chunk {k}: {exc}")
            continue
        try:
            fp = zstandard.get_frame_parameters(chunk)
            if fp.content_size != expected:
                bad(f"section-content: stream {name} chunk {k} declares {fp.content_size}, not {expected}")
                continue
            d = _DCTX.decompressobj()
            out = d.decompress(chunk)
            if not d.eof or d.unused_data or len(out) != expected:
                bad(f"section-content: stream {name} chunk {k} is not exactly one frame of {expected} bytes")
        except zstandard.ZstdError:
            bad(f"section-content: stream {name} chunk {k} is not a zstd frame")
    if prev != index_start:
        bad(f"section-content: stream {name} chunks do not end at the index")


def _rans_rules(e, name, payload, bad, flags, index_start):
    """FORMAT.md's `rans` section (1.6): the rans map, the dtype and filters, the caps, the table.
    Returns the table g [width, S], or None when a rule is broken (each reported)."""
    r = e.get("rans")
    keys = ("alphabet", "increment", "group_rows", "group_phase", "model_bytes", "model_crc32")
    if not flags & FLAG_RANS_STREAMS:
        bad(f"section-content: stream {name} is coded rans without required flag bit 2")
    if not isinstance(r, dict) or not all(k in r and _is_int(r[k]) for k in keys):
        bad(f"header-schema: stream {name} rans map {r!r}"[:200])
        return None
    S, inc, gr, phase = r["alphabet"], r["increment"], r["group_rows"], r["group_phase"]
    ok = True
    if not 0 <= inc <= 65536 or not 0 <= gr <= 65536 or not 0 <= r["model_crc32"] < 2**32 or r["model_bytes"] < 0:
        bad(f"header-schema: stream {name} rans increment/group_rows/model fields out of range")
        ok = False
    if not 2 <= S <= fuzz_rans.MAX_ALPHABET:
        bad(f"header-schema: stream {name} rans alphabet {S}")
        return None
    if e["dtype"] not in ("uint8", "uint16", "uint32") or e["filters"]:
        bad(f"section-content: stream {name} rans with dtype {e['dtype']} / filters {e['filters']}")
        return None
    if S > 2 ** (8 * np.dtype(e["dtype"]).itemsize):
        bad(f"section-content: stream {name} rans alphabet {S} does not fit {e['dtype']}")
        ok = False
    if not (0 <= phase < gr if gr else phase == 0):
        bad(f"section-content: stream {name} rans group_phase {phase} with group_rows {gr}")
        ok = False
    if e["chunk_rows"] > fuzz_rans.MAX_CHUNK_ROWS:
        bad(f"section-content: stream {name} rans chunk_rows {e['chunk_rows']} over 65,536")
        ok = False
    if ok and fuzz_rans.counter_count(e["chunk_rows"], e["width"], S, gr, inc) > fuzz_rans.MAX_COUNTERS:
        bad(f"section-content: stream {name} rans counters over 2**22")
        ok = False
    if r["model_bytes"] > index_start:
        bad(f"section-content: stream {name} rans model_bytes leave no room for the index")
        ok = False
    if not ok:
        return None
    model = payload[:r["model_bytes"]]
    if crc(model) != r["model_crc32"]:
        bad(f"section-crc: stream {name} rans model_crc32")
    try:
        return fuzz_rans.read_table(model, e["width"], S)
    except fuzz_rans.RansError as exc:
        bad(f"section-content: stream {name} rans {exc}")
        return None


def stream_rows(e, payload) -> np.ndarray:
    dtype = np.dtype(e["dtype"]).newbyteorder("<")
    parts = []
    n = -(-e["rows"] // e["chunk_rows"])
    index_start = len(payload) - 16 * n
    prev = 0
    table = None
    if e["coding"] == "rans":
        r = e["rans"]
        prev = r["model_bytes"]
        table = fuzz_rans.read_table(payload[:prev], e["width"], r["alphabet"])
    for k in range(n):
        end = struct.unpack_from("<Q", payload, index_start + 16 * k)[0]
        chunk = payload[prev:end]
        prev = end
        rows = min(e["chunk_rows"], e["rows"] - k * e["chunk_rows"])
        if table is not None:
            parts.append(fuzz_rans.decode_chunk(chunk, rows, table, k * e["chunk_rows"], r["group_rows"],
                                                r["group_phase"], r["increment"]).astype(dtype))
            continue
        raw = _DCTX.decompress(chunk) if e["coding"] == "zstd" else chunk
        buf = np.frombuffer(raw, np.uint8)
        for f in reversed(e["filters"]):
            if f == "byteshuffle":
                buf = np.ascontiguousarray(buf.reshape(dtype.itemsize, -1).T).reshape(-1)
            else:
                buf = np.ascontiguousarray(buf.view(dtype).reshape(e["width"], rows).T).reshape(-1).view(np.uint8)
        parts.append(buf.view(dtype).reshape(rows, e["width"]))
    return np.concatenate(parts) if parts else np.zeros((0, e["width"]), dtype)


def array_of(sections, name):
    e, payload = sections[name]
    return np.frombuffer(payload, np.dtype(e["dtype"]).newbyteorder("<")).reshape(e["shape"])


# ------------------------------------------------------------------------------------- codec rules
def codec_problems(h: dict, params: dict, streams: dict, count: int) -> list[str]:
    """``params``/``streams``: name -> (entry, payload) of the params/* and streams/* sections
    that decode this file (a sharded set: the manifest's params, one shard's streams)."""
    out = []
    codec = h["codec"]
    cid, cfg = codec["id"], codec["config"]
    C = h["labels"]["classes"]
    if cid not in BOUNDS:
        return [f"codec: unknown id {cid!r}"]
    for key, value in cfg.items():
        if key not in BOUNDS[cid]:
            out.append(f"codec: unknown key {key!r}")
        elif not BOUNDS[cid][key](value):
            out.append(f"codec: {key} = {value!r} outside its bounds")
    if out:
        return out
    # FORMAT.md lists the keys decoding needs but says nothing of a file that omits one (vq's
    # top1_rule alone has a stated default): such a file is not judged here, only noted
    missing = [k for k in NEEDED[cid] if k not in cfg]
    if cid == "vq" and "bits" not in cfg and ("codes" not in cfg or "codebook_size" not in cfg):
        missing.append("bits")
    if missing:
        return [f"note: {cid} config lacks {', '.join(missing)}"]
    id_dtype = "uint16" if C <= 65536 else "uint32"
    want_p, want_s = {}, {}
    k = cfg.get("k")
    if cid in ("fp32", "fp16"):
        want_s = {"values": (cid.replace("fp", "float"), C)}
    elif cid == "topk":
        if k is None or k > C:
            out.append("codec: topk k")
            return out
        want_s = {"ids": (id_dtype, k), "values": ("float16", k)}
    elif cid == "sparse":
        tail, P = cfg.get("tail", "prior"), cfg.get("prior_classes", "absent")
        step = cfg.get("step", 0.0625)
        if k is None or k >= C or 255 * step < math.log(C) or (P != "absent" and (P is None or P >= C or
                                                                                    tail != "prior")):
            out.append("codec: sparse k/step/prior_classes")
            return out
        want_s = {"ids": (id_dtype, k), "gaps": ("uint8", k)}
        if tail == "prior":
            levels = C if P == "absent" else P + 1
            want_p = {"prior": ("uint8", [-(-levels // 2)])}
            if P != "absent":
                want_p["prior_ids"] = (id_dtype, [P])
    elif cid == "sq":
        L = 2 ** cfg.get("bits_per_class", 0)
        want_s = {"levels": ("uint8", C), "top1": ("uint16" if C <= 65535 else "uint32", 1)}
        want_p = {"centroids": ("float32", [L])}
    elif cid == "imgprior":
        rk = cfg.get("residual_k", 0)
        if rk >= C:
            return ["codec: imgprior residual_k >= C"]
        shape = h["labels"]["shape"]
        G = shape[0] if len(shape) == 3 else 1
        want_s = {"top1": ("uint16" if C <= 65535 else "uint32", 1)}
        if rk:
            want_s.update(ids=(id_dtype, rk), residuals=("int8", rk), tail=("int8", 1))
        want_p = {"prior": ("uint8", [G, C]), "prior_range": ("float32", [G, 2])}
    elif cid == "vq":
        return out + _vq_problems(h, cfg, params, streams, C)
    out += _names_and_shapes(want_p, want_s, params, streams, count)
    if out:
        return out
    P = {n: array_of(params, n) for n in params}
    S = {n: stream_rows(*streams[n]) for n in streams}
    for n in ("ids",):
        if n in S and S[n].size:
            if S[n].max() >= C:
                out.append("codec-streams: class id >= C")
            if cid in ("sparse", "imgprior") and any(len(set(r)) != len(r) for r in S[n].tolist()):
                out.append("codec-streams: a class twice in a label")
    if "values" in S and not np.all(np.isfinite(S["values"].astype(np.float64))):
        out.append("codec-streams: a non-finite value")
    if cid == "sparse" and "prior" in P:
        levels = C if cfg.get("prior_classes") is None else cfg["prior_classes"] + 1
        if levels % 2 and P["prior"].size and P["prior"][-1] >> 4:
            out.append("codec-params: sparse unused nibble set")
        if "prior_ids" in P:
            ids = P["prior_ids"].astype(np.int64)
            if ids.size and (np.any(np.diff(ids) <= 0) or ids.max() >= C):
                out.append("codec-params: sparse prior_ids not increasing below C")
    if cid == "sq":
        c = P["centroids"].astype(np.float64)
        if not np.all(np.isfinite(c)) or c.min(initial=0) < -10000 or c.max(initial=-1) > 0 or np.any(np.diff(c) > 0):
            out.append("codec-params: sq centroids")
        if S["levels"].size and S["levels"].max() >= len(c):
            out.append("codec-streams: sq level >= L")
    if cid in ("sq", "imgprior") and S["top1"].size and S["top1"].max() > C:
        out.append("codec-streams: top1 > C")
    if cid == "imgprior":
        pr = P["prior_range"].astype(np.float64)
        cap = float(np.float32(math.sqrt(64) / 255))
        if not np.all(np.isfinite(pr)) or np.any(pr[:, 0] < -10000) or np.any(pr[:, 0] > 0) or \
                np.any(pr[:, 1] < 0) or np.any(pr[:, 1] > cap):
            out.append("codec-params: imgprior prior_range")
        for n in ("residuals", "tail"):
            if n in S and S[n].size and (S[n].min() < -127):
                out.append(f"codec-streams: imgprior {n} -128")
    return out


def _names_and_shapes(want_p, want_s, params, streams, count):
    out = []
    if set(params) != set(want_p):
        out.append(f"codec-params: params {sorted(params)} != {sorted(want_p)}")
    else:
        for n, (dt, shape) in want_p.items():
            e = params[n][0]
            if e["dtype"] != dt or list(e["shape"]) != list(shape):
                out.append(f"codec-params: {n} {e['dtype']}{e['shape']} != {dt}{shape}")
    if set(streams) != set(want_s):
        out.append(f"codec-streams: streams {sorted(streams)} != {sorted(want_s)}")
    else:
        for n, (dt, width) in want_s.items():
            e = streams[n][0]
            if e["dtype"] != dt or e["width"] != width or e["rows"] != count:
                out.append(f"codec-streams: {n} {e['dtype']}[{e['rows']}, {e['width']}] != {dt}[{count}, {width}]")
    return out


def _vq_problems(h, cfg, params, streams, C):
    out = []
    bits = cfg.get("bits")
    M, K = cfg.get("codes"), cfg.get("codebook_size")
    if M is None:
        M = max(1, round((bits - 2) / 8))
    if K is None:
        K = round(2 ** min((bits - 2) / M, 17))
    d, H, L = cfg.get("code_dim"), cfg.get("hidden"), cfg.get("decoder_layers")
    if not (1 <= M <= 4096 and 2 <= K <= 65536) or H is None or d is None or L is None:
        return ["codec: vq M, K or hidden"]
    if M * K * H * 4 > 2**30:
        return ["codec: vq first-layer table over 1 GiB"]
    if cfg.get("image_bias") == "auto":
        return ["codec: vq image_bias auto"]
    if cfg.get("warmup", 0.1) + cfg.get("finetune", 0.25) >= 1:
        return ["codec: vq warmup + finetune >= 1"]
    shape = h["labels"]["shape"]
    want = {"codebooks": [M, K, d], "w_in": [M * d, H], "b_in": [H], "w_out": [H, C], "b_out": [C]}
    for i in range(L):
        want[f"w_h{i}"], want[f"b_h{i}"] = [H, H], [H]
    if cfg.get("image_bias") == "on":
        if len(shape) != 3:
            return ["codec-params: vq image_bias on [N, C] labels"]
        want["image_bias"] = [shape[0], C]
    if "image_bias_k" in cfg and cfg.get("image_bias") != "sparse":
        return ["codec: vq image_bias_k without image_bias sparse"]
    rk = cfg.get("residual_k")   # format 1.8: stored with residual_step, only when >= 1
    if ("residual_k" in cfg) != ("residual_step" in cfg) or rk is not None and not 1 <= rk < C:
        return ["codec: vq residual_k / residual_step"]
    sparse = {}
    if cfg.get("image_bias") == "sparse":   # format 1.7
        if len(shape) != 3:
            return ["codec-params: vq image_bias sparse on [N, C] labels"]
        k = cfg.get("image_bias_k", 64)
        if k >= C:
            return ["codec: vq image_bias_k >= C"]
        tdt = "float32" if cfg.get("param_dtype") == "float32" else "float16"
        sparse = {"image_prior_ids": ("uint16" if C <= 65536 else "uint32", [shape[0], k]),
                  "image_prior_levels": ("uint8", [shape[0], k]),
                  "image_prior_offset": (tdt, [shape[0]]), "image_prior_profile": (tdt, [C])}
    # format 1.5: int8 codebooks and weight matrices, each with a float32 NAME_scale; biases float16
    int8 = cfg.get("param_dtype") == "int8"
    weights = ["codebooks", "w_in", "w_out"] + [f"w_h{i}" for i in range(L)]
    scales = {f"{n}_scale": [M, d] if n == "codebooks" else [want[n][1]] for n in weights} if int8 else {}
    if set(params) != set(want) | set(sparse) | set(scales):
        return [f"codec-params: vq params {sorted(params)} != {sorted(set(want) | set(sparse) | set(scales))}"]
    for n, (dt, sh) in sparse.items():
        if params[n][0]["dtype"] != dt or list(params[n][0]["shape"]) != sh:
            return [f"codec-params: vq {n} {params[n][0]['dtype']}{params[n][0]['shape']} != {dt}{sh}"]
    prior_max = 0.0
    if sparse:
        ids = array_of(params, "image_prior_ids").astype(np.int64)
        if ids.size and ids.max() >= C:
            return ["codec-params: vq image_prior_ids >= C"]
        if ids.shape[1] > 1 and np.any(np.diff(ids, axis=1) <= 0):
            return ["codec-params: vq image_prior_ids not strictly increasing"]
        off = array_of(params, "image_prior_offset").astype(np.float64)
        prof = array_of(params, "image_prior_profile").astype(np.float64)
        if not (np.all(np.isfinite(off)) and np.all(np.isfinite(prof))
                and np.all(np.abs(off) <= 1e4) and np.all(np.abs(prof) <= 1e4)):
            return ["codec-params: vq image_prior offset/profile not finite or beyond 1e4"]
        prior_max = max(float(np.abs(prof).max(initial=0)) + float(np.abs(off).max(initial=0)), 64.0)
    for n, sh in want.items():
        dts = (("int8",) if n in weights else ("float16",)) if int8 else ("float16", "float32")
        if params[n][0]["dtype"] not in dts or list(params[n][0]["shape"]) != sh:
            return [f"codec-params: vq {n} {params[n][0]['dtype']}{params[n][0]['shape']} != {'/'.join(dts)}{sh}"]
    for n, sh in scales.items():
        if params[n][0]["dtype"] != "float32" or list(params[n][0]["shape"]) != sh:
            return [f"codec-params: vq {n} {params[n][0]['dtype']}{params[n][0]['shape']} != float32{sh}"]
        sc = array_of(params, n)
        if not np.all(np.isfinite(sc)) or not np.all(sc > 0):
            return [f"codec-params: vq {n} not finite or not > 0"]
    P = {}
    for n in want:
        a = array_of(params, n)
        if f"{n}_scale" in scales:
            sc = array_of(params, f"{n}_scale")
            # one float32 product per value, as a reader dequantises
            with np.errstate(over="ignore"):
                a = a.astype(np.float32) * (sc[:, None, :] if n == "codebooks" else sc[None, :])
        P[n] = a.astype(np.float64)
    if not all(np.all(np.isfinite(a)) for a in P.values()):
        return ["codec-params: vq non-finite weight"]
    colsum = {n: np.abs(P[n]).sum(axis=0) for n in P if n.startswith("w_")}
    with np.errstate(all="ignore"):
        hl = float(np.max(np.abs(P["codebooks"]).max(initial=0) * colsum["w_in"] + np.abs(P["b_in"])))
        for i in range(L):
            hl = hl + float(np.max(hl * colsum[f"w_h{i}"] + np.abs(P[f"b_h{i}"])))
        bound = float(np.max(hl * colsum["w_out"] + np.abs(P["b_out"]))) + \
            (float(np.abs(P["image_bias"]).max(initial=0)) if "image_bias" in P else prior_max) + cfg.get("margin", 0.01)
    if not bound <= 1e30:
        out.append(f"codec-params: vq logit bound {bound:.3g} > 1e30")
    want_s = {"codes": ("uint8" if K <= 256 else "uint16", M), "top1": ("uint16" if C + 16 <= 65536 else "uint32", 1)}
    if rk:
        want_s.update(residual_ids=("uint16" if C <= 65536 else "uint32", rk), residual_levels=("uint8", rk),
                      residual_tail=("uint8", 1))
    out += _names_and_shapes({}, want_s, {}, streams, h["labels"]["count"] if "shard" not in h else streams["codes"][0]["rows"])
    if out:
        return out
    codes, top1 = stream_rows(*streams["codes"]), stream_rows(*streams["top1"]).astype(np.int64)
    if codes.size and codes.max() >= K:
        out.append("codec-streams: vq code >= K")
    if top1.size and np.any(((top1 < 16) & (top1 >= C)) | ((top1 >= 16) & (top1 - 16 >= C))):
        out.append("codec-streams: vq top1 out of range")
    if rk:
        ids = stream_rows(*streams["residual_ids"]).astype(np.int64)
        if ids.size and ids.max() >= C:
            out.append("codec-streams: vq residual id >= C")
        if any(len(set(r)) != len(r) for r in ids.tolist()):
            out.append("codec-streams: vq residual class twice")
        for n in ("residual_levels", "residual_tail"):
            v = stream_rows(*streams[n])
            if v.size and v.max() > 254:
                out.append(f"codec-streams: vq {n} > 254")
    return out


# ------------------------------------------------------------------------------------- a file or a set
def violations(files: dict, main: str) -> list[str]:
    """Rules broken by the file set ``files`` (name -> bytes) opened as ``main``."""
    m = container_problems(files[main])
    if m.problems:
        return m.problems
    h = m.header
    params = {n[7:]: v for n, v in m.sections.items() if n.startswith("params/")}
    streams = {n[8:]: v for n, v in m.sections.items() if n.startswith("streams/")}
    if m.flags & FLAG_EXTERNAL_PARAMS:
        return ["external-params: a shard was decoded on its own"]
    if not m.flags & FLAG_MANIFEST:
        return codec_problems(h, params, streams, h["labels"]["count"])
    # ---- a manifest
    out = []
    if streams or "shards" not in m.sections or not isinstance(h["codec"].get("params_sha256"), str):
        return ["manifest: streams, no shards section or no params_sha256"]
    if h["codec"]["params_sha256"] != _params_sha(m.sections):
        return ["manifest: params_sha256 is not the hash of the params"]
    table = msgpack.unpackb(m.sections["shards"][1], raw=False)
    if not isinstance(table, dict) or table.get("version") != 1 or not isinstance(table.get("shards"), list) \
            or not table["shards"] or len(table["shards"]) > 65536:
        return ["manifest: shard table"]
    start, seen = 0, set()
    for k, e in enumerate(table["shards"]):
        if not isinstance(e, dict) or not isinstance(e.get("file"), str):
            return ["manifest: shard entry"]
        f = e["file"]
        if not f or f in (".", "..") or "/" in f or "\\" in f or f.startswith(".") or f in seen:
            return [f"manifest: shard file name {f!r}"]
        seen.add(f)
        if e.get("start") != start or not _is_int(e.get("count")) or e["count"] < 1:
            return ["manifest: shard ranges"]
        start += e["count"]
        data = files.get(f)
        if data is None:
            return [f"shard-missing: {f}"]
        if len(data) != e.get("bytes") or hashlib.sha256(data).hexdigest() != e.get("sha256") or \
                struct.unpack_from("<I", data, 48)[0] != e.get("header_crc32"):
            return [f"shard-mismatch: {f} size/sha256/header_crc32"]
        s = container_problems(data)
        if s.problems:
            return [f"shard {f}: " + p for p in s.problems]
        sh = s.header
        if s.flags & (FLAG_MANIFEST | FLAG_EXTERNAL_PARAMS) != FLAG_EXTERNAL_PARAMS:
            return [f"shard-mismatch: {f} flags {s.flags}"]
        if any(n.startswith("params/") for n in s.sections):
            return [f"external-params: shard {f} holds params"]
        sl, ml = sh["labels"], h["labels"]
        if sl["count"] != e["count"] or list(sl["shape"]) != [e["count"], ml["classes"]] or \
                sl["classes"] != ml["classes"] or sl["source_kind"] != ml["source_kind"] or \
                sh["codec"].get("id") != h["codec"]["id"] or sh["codec"].get("config") != h["codec"]["config"] or \
                sh["codec"].get("params_sha256") != h["codec"]["params_sha256"] or \
                sh.get("shard") != {"index": k, "start": e["start"]}:
            return [f"shard-mismatch: {f} header disagrees with the manifest"]
        sstreams = {n[8:]: v for n, v in s.sections.items() if n.startswith("streams/")}
        out += codec_problems(dict(h, labels=dict(ml, count=e["count"])), params, sstreams, e["count"])
        if out:
            return out
    if start != h["labels"]["count"]:
        return ["manifest: shard ranges do not cover labels.count"]
    return out


def _params_sha(sections) -> str:
    h = hashlib.sha256(b"vqsl-params-sha256-v1\0")
    for name in sorted((n for n in sections if n.startswith("params/")), key=lambda n: n[7:].encode()):
        e, payload = sections[name]
        nb, dt = name[7:].encode(), e["dtype"].encode()
        h.update(struct.pack("<I", len(nb)) + nb + struct.pack("<I", len(dt)) + dt + struct.pack("<I", len(e["shape"]))
                 + b"".join(struct.pack("<Q", d) for d in e["shape"]) + struct.pack("<Q", len(payload)) + payload)
    return h.hexdigest()


def decoded_problems(values: np.ndarray, kind: str) -> list[str]:
    """The decoded labels of an accepted file: finite (FORMAT.md: a valid file never decodes to
    NaN or an infinity)."""
    if values.size and not np.all(np.isfinite(values)):
        return [f"decoded {kind}: {int(np.size(values) - np.isfinite(values).sum())} non-finite values"]
    return []
