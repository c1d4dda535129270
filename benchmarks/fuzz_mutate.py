"""Structural mutations of .vqsl files for benchmarks/fuzz.py (the model is benchmarks/fuzz_model.py).

A case is a seed (one file, or a sharded set: manifest + shards) and 1-3 mutation steps, each
drawn from its own ``random.Random(step_seed)`` so that any subset of the steps replays
exactly (the harness shrinks a failing case to the fewest steps that still fail).  Every step
edits the model; :func:`build` serializes it with every checksum recomputed and, for a sharded
set, also brings the manifest's shard table (bytes, sha256, header_crc32) and both sides'
``params_sha256`` up to date, unless the step asked to keep them wrong.
"""
from __future__ import annotations

import hashlib
import math
import random
import struct

import msgpack
import numpy as np

import fuzz_rans
from fuzz_model import (CHUNK_ENTRY, crc, F32, Pairs, Raw, Section, VFile, WideInt, pack, params_sha256, parse,
                        serialize, unpack, zstd_frame)

FLAG_RANS_STREAMS = 0x4   # required flag bit 2 (format 1.6): a stream is coded rans
CODEC_IDS = ["fp16", "fp32", "topk", "vq", "sparse", "sq", "imgprior"]
DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64"]
KNOWN_KEYS = ["k", "bits", "codes", "codebook_size", "code_dim", "hidden", "encoder_hidden", "decoder_layers",
              "temperature", "margin", "top1_rule", "fit_sample", "steps", "train_batch", "lr", "warmup",
              "finetune", "param_dtype", "encoder_input", "topk_input", "batch_rows", "image_bias", "rank_weight",
              "fit_threads", "step", "tail", "prior_step", "prior_classes", "bits_per_class", "quantiser",
              "top1_margin", "residual_k", "residual_step", "count", "shape", "classes", "source_kind",
              "temperatures", "id", "config", "info", "params_sha256", "name", "kind", "offset", "length",
              "crc32", "dtype", "rows", "width", "chunk_rows", "coding", "filters", "mode", "seed", "policy",
              "shards", "version", "file", "start", "bytes", "sha256", "header_crc32", "index", "shard"]
INTS = [0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 63, 64, 100, 127, 128, 255, 256, 1000, 1023, 1024, 4095,
        4096, 4097, 65535, 65536, 65537, 2**20, 2**20 + 1, 2**24, 2**30, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
        2**40, 2**48, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, -1, -2, -64, -2**31, -2**63]
FLOATS = [0.0, -0.0, 0.5, 1.0, -1.0, 1e-6, 1e-300, 5e-324, 0.9999999, 1.0000001, 2.0000001, 4.0, 4.0000001,
          16.0, 100.0, 100.00001, 65504.0, 1e6, 1e30, 1e300, 1.7976931348623157e308, math.inf, -math.inf,
          math.nan, 3.4028235e38, -1e-30]
STRINGS = ["", "x", "fp16", "fp32", "topk", "vq", "sparse", "sq", "imgprior", "array", "stream", "msgpack",
           "zstd", "raw", "transpose", "byteshuffle", "float16", "float32", "float128", "uint16", "object",
           "logits", "probs", "auto", "on", "off", "swap", "lift", "prior", "uniform", "lloyd", "quantile",
           "dense", "params/codebooks", "streams/ids", "streams/values", "../x", ".hidden", "a/b", "\\x",
           "\x00", "\udcff", "é" * 3, "x" * 200, "1", "nan", "inf"]


def hostile_value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if r < 0.35:
        v = rng.choice(INTS)
        return WideInt(v) if rng.random() < 0.1 and -2**63 <= v < 2**64 else v
    if r < 0.55:
        v = rng.choice(FLOATS)
        return F32(v) if rng.random() < 0.15 else v
    if r < 0.7:
        return rng.choice(STRINGS)
    if r < 0.75:
        return rng.choice([None, True, False])
    if r < 0.8:
        return rng.choice([b"", b"\0" * 8, b"abc"])
    if r < 0.83:
        return msgpack.ExtType(rng.randrange(128), b"x")
    if depth > 2:
        return rng.choice(INTS)
    if r < 0.9:
        return [hostile_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 3, 9]))]
    if r < 0.95:
        return {rng.choice(KNOWN_KEYS): hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    nested = 1  # nesting around the cap (16 levels) and well beyond it
    for _ in range(rng.choice([14, 15, 16, 17, 40])):
        nested = [nested]
    return nested


def perturb_number(rng, v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return rng.choice([v + 1, v - 1, v * 2, -v, v // 2, v + rng.randint(-8, 8), 0, float(v), WideInt(v)
                           if 0 <= v < 2**63 else v])
    return rng.choice([v * 2, -v, v / 2, v + 1e-7, math.nextafter(v, math.inf), math.nextafter(v, -math.inf),
                       int(v) if math.isfinite(v) else 0, F32(v)])


# ------------------------------------------------------------------------------------- tree walking
def nodes(tree, path=()):
    """Every (path, value) of a msgpack tree (dicts and lists)."""
    yield path, tree
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from nodes(v, path + (k,))
    elif isinstance(tree, list) and not isinstance(tree, Pairs):
        for i, v in enumerate(tree):
            yield from nodes(v, path + (i,))


def get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def mutate_tree(rng: random.Random, tree, prefer=None):
    """One edit of a msgpack tree in place (the root may be replaced: returns the new tree)."""
    all_nodes = list(nodes(tree))
    if prefer:
        chosen = [n for n in all_nodes if n[0][:len(prefer)] == prefer and len(n[0]) > len(prefer) - 1]
        all_nodes = chosen or all_nodes
    path, value = rng.choice(all_nodes)
    op = rng.random()
    if not path:
        if op < 0.2:
            return hostile_value(rng), "root replaced"
        if isinstance(tree, dict) and op < 0.6:
            tree[rng.choice(KNOWN_KEYS + ["evil"])] = hostile_value(rng)
            return tree, "key added at root"
        if isinstance(tree, dict):
            k = rng.choice(list(tree)) if tree else "x"
            tree.pop(k, None)
            return tree, f"root key {k!r} removed"
        return tree, "root left"
    parent, key = get(tree, path[:-1]), path[-1]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and op < 0.45:
        parent[key] = perturb_number(rng, value)
        return tree, f"{list(path)} {value!r} -> {parent[key]!r}"
    if op < 0.75:
        parent[key] = hostile_value(rng)
        return tree, f"{list(path)} -> {parent[key]!r}"[:200]
    if isinstance(parent, dict):
        r = rng.random()
        if r < 0.35:
            del parent[key]
            return tree, f"{list(path)} removed"
        if r < 0.55:
            parent[rng.choice(KNOWN_KEYS + ["evil", "Name"])] = hostile_value(rng)
            return tree, f"key added at {list(path[:-1])}"
        # a key twice / a binary or integer key: the map becomes Pairs
        pairs = Pairs(parent.items())
        extra_key = rng.choice([key, key.encode() if isinstance(key, str) else b"k", 7, None])
        pairs.insert(rng.randrange(len(pairs) + 1), (extra_key, rng.choice([value, hostile_value(rng)])))
        if path[:-1]:
            get(tree, path[:-2])[path[-2]] = pairs
        else:
            tree = pairs
        return tree, f"map at {list(path[:-1])} gets key {extra_key!r} again/odd"
    if isinstance(parent, list):
        r = rng.random()
        if r < 0.3:
            del parent[key]
            return tree, f"{list(path)} removed from list"
        if r < 0.6:
            parent.insert(key, rng.choice([value, hostile_value(rng)]))
            return tree, f"{list(path)} duplicated/inserted"
        parent.reverse()
        return tree, f"list {list(path[:-1])} reversed"
    return tree, "no edit"


# ------------------------------------------------------------------------------------- the case
class Case:
    """The files of one case: VFile models by name, the name to open, which are shards."""

    def __init__(self, files: dict, main: str, shards=()):
        self.files = files
        self.main = main
        self.shards = list(shards)
        self.keep_table = False   # leave the manifest's shard table as the mutation made it
        self.keep_sha = False     # leave params_sha256 as it is
        self.removed = set()      # files deleted (a missing shard)
        self.raw = {}             # files replaced by raw bytes

    def clone(self):
        c = Case({n: v.clone() for n, v in self.files.items()}, self.main, self.shards)
        return c


def pick_file(rng, case: Case) -> tuple[str, VFile]:
    name = case.main if not case.shards or rng.random() < 0.5 else rng.choice(case.shards)
    return name, case.files[name]


def streams_of(v: VFile):
    return [s for s in v.sections if s.kind == "stream" and s.chunks is not None]


def arrays_of(v: VFile):
    return [s for s in v.sections if s.kind == "array"]


# ------------------------------------------------------------------------------------- mutations
def m_header_value(rng, case):
    name, v = pick_file(rng, case)
    region = rng.choices([("labels",), ("codec", "config"), ("codec",), ("sections",), ("shard",), ()],
                         [20, 30, 8, 30, 4, 8])[0]
    seed = rng.randrange(2**32)
    desc = []

    def edit(h):  # post-layout, so it may hit the section entries' offsets, lengths and CRCs too
        h2, d = mutate_tree(random.Random(seed), h, prefer=region)
        desc[:] = [d]
        return h2
    v.post.append(edit)
    serialize(v)  # once, for the description
    return f"{name}: header value {desc[0] if desc else ''}"


def m_config(rng, case):
    name, v = pick_file(rng, case)
    h = v.header
    if not isinstance(h.get("codec"), dict) or not isinstance(h["codec"].get("config"), dict):
        raise Skip
    cfg = h["codec"]["config"]
    key = rng.choice(list(cfg) + KNOWN_KEYS[:33]) if cfg and rng.random() < 0.8 else rng.choice(KNOWN_KEYS[:33])
    old = cfg.get(key)
    r = rng.random()
    if key in cfg and isinstance(old, (int, float)) and not isinstance(old, bool) and r < 0.4:
        cfg[key] = perturb_number(rng, old)
    elif r < 0.9:
        cfg[key] = hostile_value(rng)
    else:
        cfg.pop(key, None)
        return f"{name}: config {key} removed"
    _sync_config(case, name)
    return f"{name}: config {key} {old!r} -> {cfg[key]!r}"[:200]


def _sync_config(case, name):
    """A sharded set: the same config in every file (else only the shard-mismatch rule fires)."""
    if case.shards and case.files[name].header.get("codec", {}).get("config") is not None:
        for other in case.files.values():
            if isinstance(other.header.get("codec"), dict):
                other.header["codec"]["config"] = dict(case.files[name].header["codec"]["config"])


def m_codec_id(rng, case, donors):
    name, v = pick_file(rng, case)
    donor = rng.choice(donors)
    codec = donor.header["codec"]
    v.header["codec"] = dict(v.header.get("codec", {}), id=codec["id"],
                             config=dict(codec["config"]) if rng.random() < 0.7 else v.header["codec"].get("config"))
    _sync_config(case, name)
    for other in case.files.values():
        other.header["codec"]["id"] = codec["id"]
    return f"{name}: codec id -> {codec['id']}"


def m_labels(rng, case):
    name, v = pick_file(rng, case)
    lab = v.header.get("labels")
    if not isinstance(lab, dict):
        raise Skip
    n, c = lab["count"], lab["classes"]
    r = rng.random()
    if r < 0.25:  # a consistent reshape: [N, C] <-> [I, A, C]
        # (n may be anything an earlier step wrote: no loop up to n)
        divs = [d for d in (1, 2, 3, 4, 6, 8, 16, 64, n) if d > 0 and n % d == 0] or [1]
        d = rng.choice(divs)
        lab["shape"] = rng.choice([[n, c], [d, n // d, c], [n // d, d, c], [1, n, c], [n, 1, c], [0, n, c]])
        return f"{name}: labels shape -> {lab['shape']}"
    if r < 0.55:  # classes changed consistently
        newc = rng.choice([2, 3, c - 1, c + 1, c * 2, 65535, 65536, 65537, 2**20, 2**20 + 1, 5, 17, 1, 0])
        lab["classes"] = newc
        lab["shape"] = list(lab["shape"][:-1]) + [newc]
        return f"{name}: classes {c} -> {newc} (shape too)"
    if r < 0.75:  # count and shape consistently, streams untouched
        newn = rng.choice([0, 1, n - 1, n + 1, n * 2, 2**31, 2**40])
        lab["count"], lab["shape"] = newn, [newn, c]
        return f"{name}: count {n} -> {newn} (shape too, streams not)"
    key = rng.choice(["source_kind", "temperatures", "source_dtype", "count", "shape", "classes"])
    lab[key] = hostile_value(rng)
    return f"{name}: labels.{key} -> {lab[key]!r}"[:200]


def m_rows(rng, case):
    """Every label stream gets rows added or removed, and the labels count follows: a consistent file
    of another size (unless the shape cannot follow)."""
    name, v = pick_file(rng, case)
    ss = [s for s in streams_of(v) if str(s.name).startswith("streams/")]
    if not ss:
        raise Skip
    arrays = [s.rows_array() for s in ss]
    n = arrays[0].shape[0]
    newn = rng.choice([0, 1, max(n - 1, 0), n + 1, n * 2, n + 4097])
    src = rng.randrange(max(n, 1))
    for s, a in zip(ss, arrays):
        if newn <= n:
            b = a[:newn]
        else:
            b = np.concatenate([a] + [a[src:src + 1]] * (newn - n)) if n else np.zeros((newn, a.shape[1]), a.dtype)
        s.store_rows(b)
    lab = v.header["labels"]
    lab["count"] = newn
    lab["shape"] = [newn, lab["classes"]]
    if case.shards:
        case.keep_table = rng.random() < 0.3
        _fix_table_counts(case, name, newn)
    return f"{name}: {n} -> {newn} rows in every stream, labels follow"


def _fix_table_counts(case, shard_name, newn):
    m = case.files[case.main]
    s = m.section("shards")
    if s is None:
        return
    try:
        table = unpack(s.data)
        start = 0
        for entry in table["shards"]:
            if entry["file"] == shard_name:
                entry["count"] = newn
            entry["start"] = start
            start += entry["count"]
        m.header["labels"]["count"] = start
        m.header["labels"]["shape"] = [start, m.header["labels"]["classes"]]
        s.data = pack(table)
        idx = case.shards.index(shard_name)
        for k, sh in enumerate(case.shards):
            sv = case.files[sh]
            if isinstance(sv.header.get("shard"), dict):
                sv.header["shard"]["start"] = table["shards"][k]["start"]
        _ = idx
    except Exception:  # noqa: BLE001 - the table was already made hostile
        pass


SPECIAL = {
    "f": [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 65504.0, -65504.0, 1e-8, 3.0e38, 1e4, -1e4, 0.5, 2.0],
    "u": [0, 1, 15, 16, 17, 255, 256, 999, 1000, 1001, 65535, 65536, 2**20, 2**31, 2**32 - 1],
    "i": [0, 1, -1, 127, -127, -128, 128, 2**15 - 1, -2**15, 2**31 - 1, -2**31],
}


def set_special(rng, a: np.ndarray) -> str:
    if a.size == 0:
        raise Skip
    kind = a.dtype.kind
    info = np.iinfo(a.dtype) if kind in "ui" else None
    vals = SPECIAL[kind]
    flat = a.reshape(-1)
    r = rng.random()
    if r < 0.6:
        idx = [rng.randrange(flat.size) for _ in range(rng.choice([1, 1, 2, 5]))]
    elif r < 0.8:
        idx = list(range(flat.size))
    else:
        row = rng.randrange(a.shape[0]) if a.ndim > 1 else 0
        width = a.shape[1] if a.ndim > 1 else flat.size
        idx = [row * width + j for j in range(width)]
    v = rng.choice(vals)
    if info is not None:
        v = min(max(v, info.min), info.max)
    with np.errstate(all="ignore"):
        if rng.random() < 0.2 and kind != "f":
            flat[idx] = np.array([rng.randint(int(info.min), int(info.max)) for _ in idx], dtype=a.dtype)
            return f"{len(idx)} values random"
        if rng.random() < 0.15 and a.ndim == 2 and a.shape[1] > 1 and kind != "f":
            row = rng.randrange(a.shape[0])
            a[row, 1] = a[row, 0]
            return f"row {row}: value repeated"
        if rng.random() < 0.1:
            flat[:] = np.sort(flat)[::-1] if rng.random() < 0.5 else flat[::-1].copy()
            return "values reordered"
        flat[idx] = v
    return f"{len(idx)} values -> {v}"


def m_stream_values(rng, case):
    name, v = pick_file(rng, case)
    ss = streams_of(v)
    if not ss:
        raise Skip
    s = rng.choice(ss)
    a = s.rows_array().copy()
    d = set_special(rng, a)
    s.store_rows(a)
    return f"{name}: {s.name}: {d}"


def m_stream_shape(rng, case):
    """A stream re-stored with another width, dtype, chunking, coding or filter list: consistent
    bytes (every check of the container holds), the codec's expectations broken or not."""
    name, v = pick_file(rng, case)
    ss = streams_of(v)
    if not ss:
        raise Skip
    s = rng.choice(ss)
    a = s.rows_array()
    r = rng.random()
    if r < 0.3:
        rows = max(a.shape[0], 1)
        cr = rng.choice([1, 2, 3, rows - 1 or 1, rows, rows + 1, 4096, 2**16])
        s.store_rows(a, chunk_rows=cr)
        return f"{name}: {s.name} rechunked to {cr} rows"
    if r < 0.45:
        s.store_rows(a, coding="raw")
        return f"{name}: {s.name} stored raw"
    if r < 0.6:
        f = rng.choice([[], ["transpose"], ["byteshuffle"], ["transpose", "byteshuffle"]])
        s.store_rows(a, filters=f)
        return f"{name}: {s.name} filters -> {f}"
    if r < 0.8:
        dt = rng.choice(DTYPES)
        with np.errstate(all="ignore"):
            b = a.astype(dt)
        s.store_rows(b)
        return f"{name}: {s.name} stored as {dt}"
    w = rng.choice([0, 1, max(a.shape[1] - 1, 0), a.shape[1] + 1, a.shape[1] * 2])
    if w <= a.shape[1]:
        b = a[:, :w]
    else:
        b = np.concatenate([a, a[:, :1].repeat(w - a.shape[1], 1)], axis=1) if a.shape[1] else \
            np.zeros((a.shape[0], w), a.dtype)
    s.store_rows(np.ascontiguousarray(b))
    return f"{name}: {s.name} width {a.shape[1]} -> {w}"


def m_stream_meta(rng, case):
    """A stream's header fields changed, its bytes not."""
    name, v = pick_file(rng, case)
    ss = streams_of(v)
    if not ss:
        raise Skip
    s = rng.choice(ss)
    key = rng.choice(["dtype", "rows", "width", "chunk_rows", "coding", "filters"])
    old = s.entry.get(key)
    if key == "dtype":
        s.entry[key] = rng.choice(DTYPES)
    elif key == "filters":
        s.entry[key] = rng.choice([[], ["transpose"], ["byteshuffle"], ["byteshuffle", "transpose"],
                                   ["transpose", "transpose"], ["transpose", "byteshuffle"]])
    elif key == "coding":
        s.entry[key] = rng.choice(["raw", "zstd", "rans"])
    else:
        s.entry[key] = rng.choice([perturb_number(rng, old) if isinstance(old, int) else 0, rng.choice(INTS)])
    return f"{name}: {s.name}.{key} {old!r} -> {s.entry[key]!r} (bytes unchanged)"


def m_chunk_table(rng, case):
    name, v = pick_file(rng, case)
    ss = streams_of(v)
    if not ss:
        raise Skip
    s = rng.choice(ss)
    # many chunks first, so the table has entries to reorder
    if len(s.chunks) < 2 and rng.random() < 0.8:
        a = s.rows_array()
        if a.shape[0] >= 2:
            s.store_rows(a, chunk_rows=rng.choice([1, 2, max(1, a.shape[0] // 2)]))
    n = len(s.chunks)
    op = rng.choice(["swap", "dup", "drop", "empty", "reserved", "end", "crc", "extra-entry", "merge"])
    if op == "swap" and n >= 2:
        i, j = rng.sample(range(n), 2)
        s.chunks[i], s.chunks[j] = s.chunks[j], s.chunks[i]
    elif op == "dup" and n:
        i = rng.randrange(n)
        s.chunks[rng.randrange(n)] = s.chunks[i]
    elif op == "drop" and n:
        del s.chunks[rng.randrange(n)]
    elif op == "empty" and n:
        s.chunks[rng.randrange(n)] = b""
    elif op == "reserved" and n:
        s.reserved[rng.randrange(n)] = rng.choice([1, 2**31, 2**32 - 1])
    elif op == "end" and n:
        k = rng.randrange(n)
        delta = rng.choice([-1, 1, -16, 16, 2**32, 2**63, -2**62])

        def edit(body, k=k, delta=delta, n=n):
            b = bytearray(body)
            pos = len(b) - 16 * n + 16 * k
            end, c, r = CHUNK_ENTRY.unpack_from(b, pos)
            CHUNK_ENTRY.pack_into(b, pos, (end + delta) % 2**64, c, r)
            return bytes(b)
        s.index_edit = edit
        op += f" {k} {delta:+}"
    elif op == "crc" and n:
        s.chunk_crcs[rng.randrange(n)] = rng.randrange(2**32)
    elif op == "extra-entry":
        def edit(body):
            return body + CHUNK_ENTRY.pack(len(body) - 0, 0, 0)
        s.index_edit = edit
    elif op == "merge" and n >= 2:
        i = rng.randrange(n - 1)
        s.chunks[i:i + 2] = [s.chunks[i] + s.chunks[i + 1], b""]
    else:
        raise Skip
    return f"{name}: {s.name} chunk table: {op} ({n} chunks)"


def m_zstd_frame(rng, case):
    name, v = pick_file(rng, case)
    ss = [s for s in streams_of(v) if s.entry.get("coding") == "zstd" and s.chunks]
    if not ss:
        raise Skip
    s = rng.choice(ss)
    k = rng.randrange(len(s.chunks))
    e = s.entry
    n = min(e["chunk_rows"], e["rows"] - k * e["chunk_rows"])
    expected = n * e["width"] * np.dtype(e["dtype"]).itemsize
    import zstandard
    raw = zstandard.ZstdDecompressor().decompress(s.chunks[k])
    skippable = struct.pack("<II", 0x184D2A50 + rng.randrange(16), 4) + b"skip"
    op = rng.choice(["trailing", "second-frame", "skippable-after", "skippable-before", "no-content-size",
                     "checksum", "fewer-bytes", "more-bytes", "huge-declared", "flip-compressed", "truncate",
                     "level-22", "negative-level", "fcs-lie", "empty-frame", "raw-block-frame"])
    c = s.chunks[k]
    if op == "trailing":
        c = c + bytes(rng.choice([b"\0", b"\x28\xb5\x2f\xfd", b"junk"]))
    elif op == "second-frame":
        c = c + zstd_frame(rng.choice([b"", raw[:8], raw]))
    elif op == "skippable-after":
        c = c + skippable
    elif op == "skippable-before":
        c = skippable + c
    elif op == "no-content-size":
        c = zstd_frame(raw, content_size=False)
    elif op == "checksum":
        c = zstd_frame(raw, checksum=True)
    elif op == "fewer-bytes":
        c = zstd_frame(raw[:max(0, expected - rng.choice([1, 2, 8]))])
    elif op == "more-bytes":
        c = zstd_frame(raw + b"\0" * rng.choice([1, 2, 8]))
    elif op == "huge-declared":
        c = zstd_frame(b"\0" * rng.choice([1 << 20, 64 << 20]), level=1)
    elif op == "flip-compressed" and len(c) > 8:
        b = bytearray(c)
        pos = rng.randrange(6, len(b))
        b[pos] ^= rng.randint(1, 255)
        c = bytes(b)
    elif op == "truncate" and len(c) > 2:
        c = c[:rng.randrange(1, len(c))]
    elif op == "level-22":
        c = zstd_frame(raw, level=22)
    elif op == "negative-level":
        c = zstd_frame(raw, level=-5)
    elif op == "fcs-lie":
        # rewrite the frame's content size field (header descriptor byte 4): a frame that says
        # `expected` bytes but holds other data (the header is recompressed from other bytes)
        other = zstd_frame(raw[:-1] if raw else b"\0", level=1)
        c = _replace_fcs(other, expected) or other
    elif op == "empty-frame":
        c = zstd_frame(b"")
    elif op == "raw-block-frame":
        c = _raw_block_frame(raw)
    else:
        raise Skip
    s.chunks[k] = c
    return f"{name}: {s.name} chunk {k}: zstd {op}"


def _replace_fcs(frame: bytes, size: int):
    fhd = frame[4]
    fcs_flag = fhd >> 6
    single = (fhd >> 5) & 1
    did = fhd & 3
    pos = 5 + (0 if single else 1) + [0, 1, 2, 4][did]
    width = [1 if single else 0, 2, 4, 8][fcs_flag]
    if width == 1 and size < 256:
        return frame[:pos] + bytes([size]) + frame[pos + 1:]
    if width == 2 and 256 <= size < 65536 + 256:
        return frame[:pos] + struct.pack("<H", size - 256) + frame[pos + 2:]
    if width == 4 and size < 2**32:
        return frame[:pos] + struct.pack("<I", size) + frame[pos + 4:]
    if width == 8:
        return frame[:pos] + struct.pack("<Q", size) + frame[pos + 8:]
    return None


def _raw_block_frame(raw: bytes) -> bytes:
    """A frame of uncompressed blocks (single segment, 8-byte content size), built by hand."""
    out = bytearray(b"\x28\xb5\x2f\xfd")
    out.append(0b11100000)  # FCS 8 bytes, single segment
    out += struct.pack("<Q", len(raw))
    blocks = [raw[i:i + (1 << 17)] for i in range(0, len(raw), 1 << 17)] or [b""]
    for i, b in enumerate(blocks):
        last = 1 if i == len(blocks) - 1 else 0
        hdr = (len(b) << 3) | (0 << 1) | last
        out += struct.pack("<I", hdr)[:3] + b
    return bytes(out)


def m_array(rng, case):
    name, v = pick_file(rng, case)
    arrs = [s for s in arrays_of(v) if isinstance(s.entry.get("shape"), list) and s.entry.get("dtype") in DTYPES]
    if not arrs:
        raise Skip
    s = rng.choice(arrs)
    e = s.entry
    dt = np.dtype(e["dtype"]).newbyteorder("<")
    try:
        a = np.frombuffer(s.data, dtype=dt).reshape(e["shape"]).copy()
    except ValueError:
        raise Skip from None
    r = rng.random()
    if r < 0.45:
        d = set_special(rng, a.reshape(a.shape[0] if a.ndim else 1, -1) if a.size else a)
        s.data = a.tobytes()
        return f"{name}: {s.name}: {d}"
    if r < 0.6:  # another dtype, the values converted (a consistent section)
        new = rng.choice(DTYPES)
        with np.errstate(all="ignore"):
            b = a.astype(new)
        s.data, e["dtype"] = b.tobytes(), new
        return f"{name}: {s.name} converted to {new}"
    if r < 0.75:  # another shape of the same bytes or of fewer/more values
        n = a.size
        shape = rng.choice([[n], [1, n], [n, 1], [0], [0, 2**64 - 1], [2**62, 0], [n + 1], [max(n - 1, 0)],
                            list(a.shape[::-1]), list(a.shape) + [1], [1] * 9, [2**16, 2**16, 2**17, 0]])
        count = int(np.prod([max(x, 0) for x in shape], dtype=object)) if shape else 1
        b = np.resize(a.reshape(-1), min(count, 1 << 24)) if count <= 1 << 24 else a.reshape(-1)
        s.data, e["shape"] = b.tobytes(), shape
        return f"{name}: {s.name} shape -> {shape}"
    if r < 0.85:  # the bytes reinterpreted: dtype changed, shape kept when the sizes allow
        new = rng.choice(DTYPES)
        e["dtype"] = new
        return f"{name}: {s.name} dtype -> {new} (bytes kept)"
    if r < 0.93:
        s.data = bytes(rng.randrange(256) for _ in range(len(s.data))) if len(s.data) < 4096 else \
            np.random.default_rng(rng.randrange(2**32)).integers(0, 256, len(s.data), dtype=np.uint8).tobytes()
        return f"{name}: {s.name} random bytes"
    with np.errstate(all="ignore"):
        factor = rng.choice([1e4, 1e8, -1.0, 0.0, 1e-4])
        b = (a.astype(np.float64) * factor).astype(dt) if dt.kind == "f" else a
    s.data = b.tobytes()
    return f"{name}: {s.name} scaled by {factor}"


def m_sections(rng, case, donors):
    name, v = pick_file(rng, case)
    op = rng.choice(["drop", "dup", "swap", "rename", "add-array", "add-msgpack", "add-stream", "transplant",
                     "kind", "gap", "padding", "many"])
    ss = v.sections
    if op == "drop" and ss:
        s = ss.pop(rng.randrange(len(ss)))
        return f"{name}: section {s.name} dropped"
    if op == "dup" and ss:
        s = rng.choice(ss).clone()
        if rng.random() < 0.6:
            s.entry["name"] = str(s.name) + rng.choice(["2", "/x", ""])
        ss.insert(rng.randrange(len(ss) + 1), s)
        return f"{name}: section {s.name} duplicated"
    if op == "swap" and len(ss) >= 2:
        i, j = rng.sample(range(len(ss)), 2)
        ss[i], ss[j] = ss[j], ss[i]
        return f"{name}: sections {i}, {j} swapped"
    if op == "rename" and ss:
        s = rng.choice(ss)
        old = s.name
        s.entry["name"] = rng.choice(["params/extra", "streams/extra", "params/w_h1", "params/b_h1",
                                      "params/image_bias", "params/prior_ids", "params/prior", "params/centroids",
                                      "streams/top1", "streams/ids", "streams/values", "streams/gaps",
                                      "streams/levels", "streams/tail", "streams/residuals", "streams/codes",
                                      "shards", "augment", "provenance", "x" * 129, "", "params/", "streams/"])
        return f"{name}: section {old} renamed {s.name}"
    if op == "add-array":
        dt = rng.choice(DTYPES)
        shape = rng.choice([[0], [3], [2, 2], [0, 2**64 - 1], [2**40, 0], [1000], [4, 1000], [1] * 8, [1] * 9])
        count = int(np.prod([max(x, 0) for x in shape], dtype=object))
        data = bytes(min(count, 1 << 16) * np.dtype(dt).itemsize)
        s = Section({"name": rng.choice(["params/extra", "extra", "params/b_h1", "params/image_bias"]),
                     "kind": "array", "dtype": dt, "shape": shape}, data)
        ss.insert(rng.randrange(len(ss) + 1), s)
        return f"{name}: array {s.name} {dt}{shape} added"
    if op == "add-msgpack":
        obj = hostile_value(rng)
        raw = pack(obj)
        if rng.random() < 0.2:  # a large or deep value near the caps
            n = rng.choice([2**20 - 2, 2**20 + 1, 100000])
            raw = b"\xdd" + struct.pack(">I", n) + b"\xc0" * n
        s = Section({"name": rng.choice(["augment", "provenance", "extra", "shards"]), "kind": "msgpack"}, raw)
        ss.insert(rng.randrange(len(ss) + 1), s)
        return f"{name}: msgpack section {s.name} added ({len(raw)} bytes)"
    if op == "add-stream":
        rows = rng.choice([0, 1, 6, 64, 10**6])
        width = rng.choice([1, 5, 1000])
        dt = rng.choice(DTYPES)
        s = Section({"name": rng.choice(["streams/extra", "augment/coords", "extra/s"]), "kind": "stream"}, chunks=[])
        if rows * width * np.dtype(dt).itemsize <= 1 << 22:
            s.store_rows(np.zeros((rows, width), dt), chunk_rows=rng.choice([1, 7, 4096]))
        else:  # declares far more than it stores: zstd frames of zeros
            cr = max(1, (16 << 20) // (width * np.dtype(dt).itemsize))
            frame = zstd_frame(b"\0" * (cr * width * np.dtype(dt).itemsize), level=1)
            s.entry.update(dtype=dt, rows=rows, width=width, chunk_rows=cr, coding="zstd", filters=[])
            s.chunks = [frame] * (-(-rows // cr))
            if len(s.chunks) * 16 > 1 << 16:
                raise Skip
        ss.insert(rng.randrange(len(ss) + 1), s)
        return f"{name}: stream {s.name} {dt}[{rows}, {width}] added"
    if op == "transplant":
        donor = rng.choice(donors)
        if not donor.sections:
            raise Skip
        s = rng.choice(donor.sections).clone()
        ss.insert(rng.randrange(len(ss) + 1), s)
        return f"{name}: section {s.name} from another file"
    if op == "kind" and ss:
        s = rng.choice(ss)
        s.entry["kind"] = rng.choice(["array", "stream", "msgpack", "blob"])
        return f"{name}: section {s.name} kind -> {s.entry['kind']}"
    if op == "gap" and ss:
        s = rng.choice(ss)
        s.gap_before = bytes(rng.choice([64, 1, 63])) if rng.random() < 0.7 else b"\x01" * 64
        return f"{name}: {len(s.gap_before)}-byte gap before {s.name}"
    if op == "padding" and ss:
        s = rng.choice(ss)
        k = rng.choice(["offset", "length"])
        if k == "offset":
            s.keep["offset"] = rng.choice([0, 63, 64, 65, 128, 2**63, 2**64 - 1])
        else:
            s.keep["length"] = rng.choice([0, 1, 2**32, 2**63])
        return f"{name}: {s.name}.{k} forced to {s.keep[k]}"
    if op == "many":
        for i in range(rng.choice([100, 4097])):
            ss.append(Section({"name": f"x{i}", "kind": "msgpack"}, b"\xc0"))
        return f"{name}: {len(ss)} sections"
    raise Skip


def m_msgpack_section(rng, case):
    name, v = pick_file(rng, case)
    ms = [s for s in v.sections if s.kind == "msgpack"]
    if not ms:
        raise Skip
    s = rng.choice(ms)
    try:
        tree = unpack(s.data)
    except Exception:  # noqa: BLE001
        raise Skip from None
    if rng.random() < 0.75:
        tree, d = mutate_tree(rng, tree)
        s.data = pack(tree)
    else:
        s.data, d = raw_syntax(rng, s.data)
    if s.name == "shards":
        case.keep_table = rng.random() < 0.5
    return f"{name}: {s.name}: {d}"[:240]


def raw_syntax(rng, raw: bytes):
    op = rng.choice(["trailing", "truncate", "deep", "dupkey", "binkey", "intkey", "ext", "bad-byte",
                     "bad-utf8", "huge-len", "wide-ints", "f32"])
    if op == "trailing":
        return raw + rng.choice([b"\xc0", b"\x00", b"\x90"]), op
    if op == "truncate" and len(raw) > 1:
        return raw[:rng.randrange(len(raw))], op
    if op == "deep":
        d = rng.choice([15, 16, 17, 1000, 100000])
        return b"\x92" + b"\x91" * d + b"\x01" + raw, f"deep {d}"
    if op in ("dupkey", "binkey", "intkey", "ext") and raw[:1] and (raw[0] & 0xF0) == 0x80:
        n = raw[0] & 0x0F
        key = {"dupkey": pack("created_by") if b"created_by" in raw else pack("mode"), "binkey": b"\xc4\x01k",
               "intkey": b"\x07", "ext": pack("zz")}[op]
        value = b"\xd4\x05\x00" if op == "ext" else b"\xa1x"
        if n < 15:
            return bytes([0x80 | (n + 1)]) + raw[1:] + key + value, op
        return b"\xde" + struct.pack(">H", n + 1) + raw[1:] + key + value, op
    if op == "bad-byte":
        return b"\xc1" + raw, op
    if op == "bad-utf8":
        return b"\x92\xa2\xff\xfe" + raw, op
    if op == "huge-len":
        return rng.choice([b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
                           b"\xc6\x7f\xff\xff\xff"]) + raw, op
    if op == "wide-ints":
        try:
            tree = unpack(raw)
        except Exception:  # noqa: BLE001
            return raw, op

        def widen(t):
            if isinstance(t, dict):
                return {k: widen(x) for k, x in t.items()}
            if isinstance(t, list) and not isinstance(t, Pairs):
                return [widen(x) for x in t]
            if isinstance(t, int) and not isinstance(t, bool) and -2**63 <= t < 2**64:
                return WideInt(t)
            return t
        return pack(widen(tree)), op
    if op == "f32":
        try:
            tree = unpack(raw)
        except Exception:  # noqa: BLE001
            return raw, op

        def narrow(t):
            if isinstance(t, dict):
                return {k: narrow(x) for k, x in t.items()}
            if isinstance(t, list) and not isinstance(t, Pairs):
                return [narrow(x) for x in t]
            return F32(t) if isinstance(t, float) else t
        return pack(narrow(tree)), op
    return raw, "none"


def m_header_syntax(rng, case):
    name, v = pick_file(rng, case)
    desc = []

    def edit(hb):
        out, d = raw_syntax(random.Random(seed), hb)
        desc.append(d)
        return out
    seed = rng.randrange(2**32)
    v.header_edit = edit
    serialize(v)
    return f"{name}: header bytes: {desc[-1] if desc else ''}"


def m_preamble(rng, case):
    name, v = pick_file(rng, case)
    field = rng.choice(["minor", "major", "required_flags", "optional_flags", "reserved", "reserved2",
                        "header_offset", "header_length", "file_length", "header_crc32", "nocrc", "trailing"])
    if field == "nocrc":
        v.fix_preamble_crc = False
        v.pre["preamble_crc32"] = rng.randrange(2**32)
        return f"{name}: preamble CRC left wrong"
    if field == "trailing":
        v.trailing = rng.choice([b"\0", b"\0" * 64])
        return f"{name}: bytes after the header"
    if field in ("minor", "major"):
        val = rng.choice([0, 1, 2, 3, 4, 5, 99, 65535])
    elif field in ("required_flags", "optional_flags"):
        val = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 1 << 31, 2**32 - 1])
    elif field == "reserved":
        val = rng.choice([0, 1, 2**32 - 1])
    elif field == "reserved2":
        val = rng.choice([b"\0" * 8, b"\0" * 7 + b"\x01"])
    else:
        val = None
    if val is not None:
        v.pre[field] = val
        return f"{name}: preamble {field} -> {val!r}"
    delta = rng.choice([-64, -1, 1, 64, 2**40, 2**63])

    def edit(pre, field=field, delta=delta):
        pre[field] = (pre[field] + delta) % (2**32 if field == "header_crc32" else 2**64)
    v.pre_edit = edit
    return f"{name}: preamble {field} {delta:+}"


def m_shard_files(rng, case):
    """A sharded set's files: a shard missing, two shards swapped, the table naming other files."""
    if not case.shards:
        raise Skip
    op = rng.choice(["missing", "swap-names", "shard-header", "flags"])
    if op == "missing":
        case.removed.add(rng.choice(case.shards))
        return f"shard {sorted(case.removed)} removed"
    if op == "swap-names" and len(case.shards) >= 2:
        a, b = rng.sample(case.shards, 2)
        case.files[a], case.files[b] = case.files[b], case.files[a]
        return f"shards {a} and {b} swapped"
    if op == "shard-header":
        sh = case.files[rng.choice(case.shards)]
        key = rng.choice(["index", "start"])
        if isinstance(sh.header.get("shard"), dict):
            sh.header["shard"][key] = rng.choice([0, 1, 2, 3, -1, 2**63])
        return f"shard header {key} changed"
    v = case.files[rng.choice(case.shards + [case.main])]
    v.pre["required_flags"] = rng.choice([0, 1, 2, 3])
    return "flags of a set member changed"


def m_rans(rng, case):
    """A stream coded rans (format 1.6): its rans map, its table, its chunk words, the required flag
    bit 2, or its rows re-coded under other groups and increments (every checksum fixed)."""
    name, v = pick_file(rng, case)
    ss = [s for s in streams_of(v) if s.entry.get("coding") == "rans" and isinstance(s.entry.get("rans"), dict)]
    if not ss:
        raise Skip
    s = rng.choice(ss)
    r = s.entry["rans"]
    op = rng.choice(["field", "table", "words", "flag", "recode", "recode", "chunk-rows"])
    if op == "field":
        key = rng.choice(["alphabet", "increment", "group_rows", "group_phase", "model_bytes", "model_crc32"])
        old = r.get(key)
        r[key] = rng.choice([perturb_number(rng, old) if isinstance(old, int) else 0,
                             rng.choice([0, 1, 2, 255, 256, 257, 65535, 65536, 65537, 2**32, -1])])
        return f"{name}: {s.name}.rans.{key} {old!r} -> {r[key]!r}"
    if op == "table":
        try:
            g = fuzz_rans.read_table(s.model, s.entry["width"], r["alphabet"])
        except Exception:  # noqa: BLE001 - an earlier step broke it: random bytes instead
            s.model = bytes(rng.randrange(256) for _ in range(rng.choice([0, 4, 16])))
            return f"{name}: {s.name} table replaced by random bytes"
        g = g.copy()
        kind = rng.choice(["sum", "zero-top", "over", "wrap", "narrow", "second-frame"])
        m, sym = rng.randrange(g.shape[0]), rng.randrange(g.shape[1])
        if kind == "sum":
            g[m, sym] += rng.choice([1, -1]) if g[m, sym] else 1
        elif kind == "zero-top":   # the most frequent symbol's mass moved away: it decodes with g = 0
            top = int(np.argmax(g[m]))
            other = (top + 1) % g.shape[1]
            g[m, other] += g[m, top]
            g[m, top] = 0
        elif kind == "over":
            g[m, sym] = 65537
        elif kind == "wrap":     # sums to 2**16 modulo 2**32
            g[m, :] = 0
            g[m, 0], g[m, 1 % g.shape[1]] = 65537, 2**32 - 1
        if kind == "narrow":
            s.model = fuzz_rans.pack_table(g[:, :-1])
        else:
            s.model = fuzz_rans.pack_table(g)
        if kind == "second-frame":
            s.model += zstd_frame(b"x")
        if rng.random() < 0.9:
            r["model_bytes"], r["model_crc32"] = len(s.model), crc(s.model)
        return f"{name}: {s.name} table {kind} (column {m}, symbol {sym})"
    if op == "words":
        if not s.chunks:
            raise Skip
        k = rng.randrange(len(s.chunks))
        c = s.chunks[k]
        kind = rng.choice(["zero-word", "drop-word", "odd-byte", "flip", "empty", "first-word"])
        if kind == "zero-word":
            c = c + b"\0\0\0\0"
        elif kind == "drop-word":
            c = c[:-4]
        elif kind == "first-word":
            c = c[4:]
        elif kind == "odd-byte":
            c = c + b"\x01"
        elif kind == "flip" and c:
            b = bytearray(c)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            c = bytes(b)
        elif kind == "empty":
            c = b""
        s.chunks[k] = c
        return f"{name}: {s.name} chunk {k} words: {kind}"
    if op == "flag":
        v.pre["required_flags"] = v.pre.get("required_flags", 0) & ~FLAG_RANS_STREAMS
        return f"{name}: required flag bit 2 cleared"
    a = s.rows_array()
    if op == "chunk-rows":
        cr = rng.choice([1, 2, 3, 7, 63, 64, 65, 4096, 65536, 65537])
        s.store_rows(a, chunk_rows=cr)
        return f"{name}: {s.name} re-coded rans in chunks of {cr} rows"
    r["group_rows"] = rng.choice([0, 1, 2, 3, 7, 16, 64, 65536])
    r["group_phase"] = rng.randrange(r["group_rows"]) if r["group_rows"] else 0
    r["increment"] = rng.choice([0, 1, 256, 4096, 65536])
    s.store_rows(a)
    return f"{name}: {s.name} re-coded rans with groups {r['group_rows']} phase {r['group_phase']} " \
        f"increment {r['increment']}"


# weights: what a mutation step is drawn from
def mutations(donors):
    return [
        (14, "header-value", m_header_value),
        (10, "config", m_config),
        (3, "codec-id", lambda rng, c: m_codec_id(rng, c, donors)),
        (7, "labels", m_labels),
        (4, "rows", m_rows),
        (10, "stream-values", m_stream_values),
        (6, "stream-shape", m_stream_shape),
        (5, "stream-meta", m_stream_meta),
        (6, "chunk-table", m_chunk_table),
        (7, "zstd-frame", m_zstd_frame),
        (10, "array", m_array),
        (7, "sections", lambda rng, c: m_sections(rng, c, donors)),
        (4, "msgpack-section", m_msgpack_section),
        (4, "header-syntax", m_header_syntax),
        (3, "preamble", m_preamble),
        (2, "shard-files", m_shard_files),
        (4, "rans", m_rans),
    ]


class Skip(Exception):
    """The mutation does not apply to this file: draw another."""


def fix_set(case: Case) -> None:
    """Bring a sharded set's cross-file values up to date after its members were mutated."""
    if not case.shards:
        return
    m = case.files[case.main]
    if not case.keep_sha:
        sha = params_sha256(m.sections)
        if sha is not None:
            for v in case.files.values():
                if isinstance(v.header.get("codec"), dict) and "params_sha256" in v.header["codec"]:
                    v.header["codec"]["params_sha256"] = sha


def build(case: Case) -> dict:
    """The case's files as bytes (a sharded set's table fixed unless the mutation kept it)."""
    fix_set(case)
    out = {}
    for name in case.shards:
        if name not in case.removed:
            out[name] = serialize(case.files[name])
    m = case.files[case.main]
    if case.shards and not case.keep_table:
        s = m.section("shards")
        if s is not None:
            try:
                table = unpack(s.data)
                for entry in table["shards"]:
                    data = out.get(entry["file"])
                    if data is not None:
                        entry["bytes"] = len(data)
                        entry["sha256"] = hashlib.sha256(data).hexdigest()
                        entry["header_crc32"] = struct.unpack_from("<I", data, 48)[0]
                s.data = pack(table)
            except Exception:  # noqa: BLE001 - a table made hostile stays as it is
                pass
    out[case.main] = serialize(m)
    return out


def load_seed(files: dict, main: str) -> Case:
    """A seed case from file bytes; a manifest's shards are the other files."""
    shards = sorted(n for n in files if n != main)
    return Case({n: parse(d) for n, d in files.items()}, main, shards)


def make_case(seed_case: Case, step_seeds: list[int], donors) -> tuple[Case, list[str]]:
    """Apply the mutation steps (each from its own seed) to a copy of the seed case."""
    case = seed_case.clone()
    table = mutations(donors)
    weights = [w for w, _, _ in table]
    descs = []
    for step_seed in step_seeds:
        rng = random.Random(step_seed)
        for _attempt in range(20):
            _, label, fn = rng.choices(table, weights)[0]
            trial = case.clone()
            trial.keep_table, trial.keep_sha, trial.removed = case.keep_table, case.keep_sha, set(case.removed)
            try:
                d = fn(rng, trial)
            except Exception:  # noqa: BLE001 - Skip, or a part earlier steps made unreadable
                continue  # not applicable to what the earlier steps left: draw again
            case = trial
            descs.append(f"[{label}] {d}")
            break
    return case, descs


# keep the names importable for the checker and tests
__all__ = ["Case", "VFile", "Section", "make_case", "build", "load_seed", "Raw", "unpack", "pack"]
