"""Hostile and damaged files: one crafted file for every MUST-reject rule of FORMAT.md.

Each case says which rule must fire; the file is then also given to `slcodec verify`
(exit 1) and to `slcodec stats` (exit 2, one line, no traceback).
"""
import copy
import os
import struct

import msgpack
import numpy as np
import pytest
import zstandard

import slcodec
from slcodec import cli
from slcodec.format.container import Container, ContainerWriter, StreamBuilder
from slcodec.errors import FormatError

from craft import crc, parse, rebuild, section

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "spec", "golden")
BASE = open(os.path.join(GOLDEN, "v1.0-topk5-logits.vqsl"), "rb").read()
LABELS = {"count": 6, "shape": [2, 3, 10], "classes": 10, "source_kind": "logits"}


def full_read(path):
    """Everything a user can do with a file: open, decode every label, verify every byte."""
    with slcodec.open(path) as r:
        r.decode(None)
    with Container.open(path) as c:
        for sec in c.header["sections"]:
            if sec["kind"] == "stream":
                s = c.stream(sec["name"])
                for k in range(s.nchunks):
                    s.read_chunk(k)
            elif sec["kind"] == "array":
                c.read_array(sec["name"])
            else:
                c.read_msgpack(sec["name"])
        problems = c.verify()  # every section checksum, chunk indexes included
        if problems:
            raise FormatError(problems[0], rule="verify")


def header_edit(fn):
    def make():
        _, h = parse(BASE)
        h = copy.deepcopy(h)
        fn(h)
        return rebuild(BASE, header=h)
    return make


def body_edit(fn):
    """Change bytes of the body (sections + padding), keeping the header and preamble as they are."""
    def make():
        pre, h = parse(BASE)
        body = bytearray(BASE[64:pre["header_offset"]])
        fn(body, h)
        return BASE[:64] + bytes(body) + BASE[pre["header_offset"]:]
    return make


def body_and_header_edit(fn):
    def make():
        pre, h = parse(BASE)
        h = copy.deepcopy(h)
        body = bytearray(BASE[64:pre["header_offset"]])
        fn(body, h)
        return rebuild(BASE, header=h, body=bytes(body))
    return make


def topk_file(ids, values, classes=10, k=None, tamper=None, extra_array=None, stream_names=("ids", "values"),
              chunk_rows=4096, raw_msgpack=None):
    """A topk file written from scratch with the container writer (so every CRC is right);
    ``raw_msgpack``: {section name: msgpack bytes} stored as they are."""
    def make(tmp):
        p = os.path.join(tmp, "crafted-src.vqsl")
        kk = k or ids.shape[1]
        with ContainerWriter(p, verify=False) as w:
            if extra_array is not None:
                w.add_array("params/extra", extra_array)
            for name, raw in (raw_msgpack or {}).items():
                w._add(name, "msgpack", raw, {})
            bi = StreamBuilder("uint16", ids.shape[1], chunk_rows=chunk_rows)
            bi.append(ids)
            bv = StreamBuilder("float16", values.shape[1], chunk_rows=chunk_rows)
            bv.append(values)
            if tamper:
                tamper(bi, bv)
            w.add_stream("streams/" + stream_names[0], bi)
            w.add_stream("streams/" + stream_names[1], bv)
            w.commit({"labels": dict(LABELS, count=len(ids), shape=[len(ids), classes], classes=classes),
                      "codec": {"id": "topk", "config": {"k": kk}}})
        return open(p, "rb").read()
    return make


def golden_header_edit(name, fn):
    """A golden file with its header edited by ``fn`` (checksums recomputed)."""
    def make():
        data = open(os.path.join(GOLDEN, name), "rb").read()
        _, h = parse(data)
        h = copy.deepcopy(h)
        fn(h)
        return rebuild(data, header=h)
    return make


IDS = np.tile(np.arange(3, dtype=np.uint16), (6, 1))
VALS = np.full((6, 3), 0.2, dtype=np.float16)


def _msgpack_ext_header():
    _, h = parse(BASE)
    h["created_by"] = msgpack.ExtType(5, b"evil")
    return rebuild(BASE, header_bytes=msgpack.packb(h, use_bin_type=True))


def _non_string_key_header():
    _, h = parse(BASE)
    h[7] = "int key"
    return rebuild(BASE, header_bytes=msgpack.packb(h, use_bin_type=True))


def _header_with(h, splice=None, extra_pairs=()):
    """Header bytes of ``h`` with hand-made parts msgpack.packb will not make: ``splice`` maps a
    marker string to the raw bytes that replace its packed form; ``extra_pairs`` are (key bytes,
    value bytes) appended to the top-level map (a repeated key, a binary key)."""
    raw = msgpack.packb(h, use_bin_type=True)
    for marker, replacement in (splice or {}).items():
        packed = msgpack.packb(marker)
        assert raw.count(packed) == 1
        raw = raw.replace(packed, replacement)
    if extra_pairs:
        n = len(h) + len(extra_pairs)
        head = 1 if len(h) < 16 else 3
        raw = b"\xde" + struct.pack(">H", n) + raw[head:] + b"".join(k + v for k, v in extra_pairs)
    return raw


def _header_bytes_key():
    _, h = parse(BASE)
    return rebuild(BASE, header_bytes=_header_with(h, extra_pairs=[(msgpack.packb(b"evil", use_bin_type=True),
                                                                    msgpack.packb(1))]))


def _header_duplicate_key():
    _, h = parse(BASE)  # a second "created_by": one reader would take the first value, another the last
    return rebuild(BASE, header_bytes=_header_with(h, extra_pairs=[(msgpack.packb("created_by"),
                                                                    msgpack.packb("someone else"))]))


def _header_deep_nesting():
    _, h = parse(BASE)  # codec.info {"x": [[[...1000 levels...]]]}: json and repr of it recurse that deep
    h["codec"]["info"] = {"x": "DEEP-MARKER"}
    return rebuild(BASE, header_bytes=_header_with(h, splice={"DEEP-MARKER": b"\x91" * 1000 + b"\x01"}))


def _nested(depth):
    obj = 1
    for _ in range(depth):
        obj = [obj]
    return obj


def _zero_size_array(name):
    """An array section of no bytes whose shape has a dimension of 2**64 - 1 (0 * anything = 0)."""
    def edit(h):
        end = h["sections"][-1]["offset"] + h["sections"][-1]["length"]
        h["sections"].append({"name": name, "kind": "array", "offset": (end + 63) // 64 * 64, "length": 0,
                              "crc32": 0, "dtype": "uint8", "shape": [0, 2**64 - 1]})
    return header_edit(edit)


def _chunk_followed_by(extra):
    """The values stream's one chunk (a valid frame) with ``extra`` stored after it in the chunk."""
    def tamper(bi, bv):
        bv._flush(bv._pending_rows)
        bv._chunks[0] = bv._chunks[0] + (extra() if callable(extra) else extra)
    return tamper


SKIPPABLE_FRAME = struct.pack("<II", 0x184D2A50, 4) + b"skip"


def _flip(data, pos):
    b = bytearray(data)
    b[pos] ^= 0x01
    return bytes(b)


def _set(**kw):
    return lambda: rebuild(BASE, **kw)


def _first_section_padding(body, h):
    s = h["sections"][0]
    end = s["offset"] + s["length"] - 64
    assert (s["offset"] + s["length"]) % 64 != 0, "test needs a padded section"
    body[end] = 0x7F


def _stream_chunk_byte(body, h):
    s = section(h, "streams/values")
    body[s["offset"] - 64 + 3] ^= 0xFF


def _stream_chunk_byte_section_crc_fixed(body, h):
    s = section(h, "streams/values")
    body[s["offset"] - 64 + 3] ^= 0xFF
    s["crc32"] = crc(bytes(body[s["offset"] - 64:s["offset"] - 64 + s["length"]]))


def _stream_index_unsorted(body, h):
    s = section(h, "streams/values")
    start = s["offset"] - 64 + s["length"] - 16  # the single chunk's index entry
    end, ccrc, _ = struct.unpack_from("<QII", body, start)
    struct.pack_into("<QII", body, start, end + 1, ccrc, 0)
    s["crc32"] = crc(bytes(body[s["offset"] - 64:s["offset"] - 64 + s["length"]]))


def _stream_index_reserved(body, h):
    s = section(h, "streams/values")
    start = s["offset"] - 64 + s["length"] - 16
    end, ccrc, _ = struct.unpack_from("<QII", body, start)
    struct.pack_into("<QII", body, start, end, ccrc, 1)
    s["crc32"] = crc(bytes(body[s["offset"] - 64:s["offset"] - 64 + s["length"]]))


def _replace_chunk(new_chunk):
    def tamper(bi, bv):
        bv._flush(bv._pending_rows)
        bv._chunks[0] = new_chunk
    return tamper


CASES = {
    # rule: truncated
    "shorter-than-preamble": ("truncated", lambda: BASE[:40]),
    "cut-at-the-end": ("truncated", lambda: BASE[:-1]),
    "bytes-appended": ("truncated", lambda: BASE + b"\0"),
    "empty-file": ("truncated", lambda: b""),
    # rule: magic
    "bad-magic": ("magic", lambda: b"PK\x03\x04" + BASE[4:]),
    "crlf-converted-to-lf": ("magic", lambda: BASE[:4] + b"\n" + BASE[6:]),
    # rule: preamble-crc
    "preamble-field-changed": ("preamble-crc", lambda: _flip(BASE, 49)),
    "preamble-crc-changed": ("preamble-crc", lambda: _flip(BASE, 61)),
    # rule: version
    "newer-major": ("version", _set(major=2)),
    "major-zero": ("version", _set(major=0)),
    # rule: required-flags
    "unknown-required-flag": ("required-flags", _set(required_flags=0x8)),  # bits 0..2 are defined (1.1, 1.6)
    # rule: preamble-reserved
    "reserved-word-set": ("preamble-reserved", _set(reserved=1)),
    "reserved-bytes-set": ("preamble-reserved", _set(reserved2=b"\0\0\0\x01\0\0\0\0")),
    # rule: header-bounds
    "huge-header-length": ("header-bounds", _set(header_length=1 << 40)),
    "header-not-ending-file": ("header-bounds", lambda: rebuild(BASE, header_bytes=parse_header_bytes() + b"\0",
                                                                 header_length=len(parse_header_bytes()))),
    "header-inside-preamble": ("header-bounds", _set(header_offset=0)),
    "header-unaligned": ("header-bounds", lambda: rebuild(BASE, body=parse_body() + b"\0")),
    # rule: header-crc
    "header-byte-flipped": ("header-crc", lambda: _flip(BASE, len(BASE) - 5)),
    # rule: header-syntax
    "header-not-msgpack": ("header-syntax", lambda: rebuild(BASE, header_bytes=b"\xc1\xc1\xc1")),
    "header-trailing-bytes": ("header-syntax", lambda: rebuild(BASE, header_bytes=parse_header_bytes() + b"\xc0")),
    "header-ext-type": ("header-syntax", _msgpack_ext_header),
    "header-int-key": ("header-syntax", _non_string_key_header),
    # issue 12: keys are strings and unique; nesting and value counts are capped (FORMAT.md)
    "header-bytes-key": ("header-syntax", _header_bytes_key),
    "header-duplicate-key": ("header-syntax", _header_duplicate_key),
    "header-deep-nesting": ("header-syntax", _header_deep_nesting),
    "section-bytes-key": ("header-syntax", topk_file(IDS, VALS, raw_msgpack={
        "augment": msgpack.packb({b"teacher": "x"}, use_bin_type=True)})),
    "section-duplicate-key": ("header-syntax", topk_file(IDS, VALS, raw_msgpack={
        "augment": b"\x82" + msgpack.packb("teacher") + msgpack.packb("a") + msgpack.packb("teacher")
        + msgpack.packb("b")})),
    "section-deep-nesting": ("header-syntax", topk_file(IDS, VALS, raw_msgpack={
        "augment": msgpack.packb({"x": _nested(17)})})),
    # rule: header-schema
    "header-is-a-list": ("header-schema", lambda: rebuild(BASE, header_bytes=msgpack.packb([1, 2]))),
    "missing-labels": ("header-schema", header_edit(lambda h: h.pop("labels"))),
    "one-class": ("header-schema", header_edit(lambda h: h["labels"].update(classes=1))),
    "classes-over-cap": ("header-schema", header_edit(
        lambda h: h["labels"].update(classes=2**20 + 1, shape=[2, 3, 2**20 + 1]))),
    "negative-count": ("header-schema", header_edit(lambda h: h["labels"].update(count=-6))),
    "count-is-a-string": ("header-schema", header_edit(lambda h: h["labels"].update(count="6"))),
    "unknown-section-kind": ("header-schema", header_edit(lambda h: h["sections"][0].update(kind="blob"))),
    "unknown-dtype": ("header-schema", header_edit(lambda h: section(h, "streams/ids").update(dtype="float128"))),
    "unknown-coding": ("header-schema", header_edit(lambda h: section(h, "streams/ids").update(coding="lz4"))),
    "unknown-filter": ("header-schema", header_edit(lambda h: section(h, "streams/ids").update(filters=["rot13"]))),
    "negative-offset": ("header-schema", header_edit(lambda h: h["sections"][0].update(offset=-64))),
    # rule: section-layout
    "duplicate-section-name": ("section-layout", header_edit(
        lambda h: h["sections"][1].update(name=h["sections"][0]["name"]))),
    "sections-unsorted": ("section-layout", header_edit(
        lambda h: h["sections"].insert(0, h["sections"].pop(1)))),
    "sections-overlap": ("section-layout", header_edit(
        lambda h: h["sections"][1].update(offset=h["sections"][0]["offset"]))),
    "section-unaligned": ("section-layout", header_edit(lambda h: h["sections"][0].update(offset=65))),
    "section-runs-into-header": ("section-layout", header_edit(
        lambda h: h["sections"][-1].update(length=h["sections"][-1]["length"] + 4096))),
    "section-huge-length": ("section-layout", header_edit(lambda h: h["sections"][-1].update(length=2**63))),
    "nonzero-padding": ("section-layout", body_edit(_first_section_padding)),
    "gap-before-header": ("section-layout", lambda: rebuild(BASE, body=parse_body() + b"\0" * 64)),
    # rule: section-content
    "chunk-index-too-big": ("section-content", header_edit(
        lambda h: section(h, "streams/ids").update(rows=10**9, chunk_rows=1))),
    "chunk-over-size-cap": ("section-content", header_edit(
        lambda h: section(h, "streams/ids").update(chunk_rows=2**30))),
    "filter-listed-twice": ("section-content", header_edit(
        lambda h: section(h, "streams/ids").update(filters=["transpose", "transpose"]))),
    "filters-out-of-order": ("section-content", header_edit(
        lambda h: section(h, "streams/values").update(filters=["byteshuffle", "transpose"]))),
    "zero-size-array-huge-dim": ("section-content", _zero_size_array("extra")),
    "zero-size-params-huge-dim": ("section-content", _zero_size_array("params/extra")),
    "chunk-trailing-bytes": ("section-content", topk_file(IDS, VALS, tamper=_chunk_followed_by(b"\0"))),
    "chunk-two-frames": ("section-content", topk_file(IDS, VALS, tamper=_chunk_followed_by(
        lambda: zstandard.ZstdCompressor().compress(b"")))),
    "chunk-skippable-frame-after": ("section-content", topk_file(
        IDS, VALS, tamper=_chunk_followed_by(SKIPPABLE_FRAME))),
    "chunk-index-unsorted": ("section-content", body_and_header_edit(_stream_index_unsorted)),
    "chunk-index-reserved": ("section-content", body_and_header_edit(_stream_index_reserved)),
    "chunk-declares-wrong-size": ("section-content", topk_file(
        IDS, VALS, tamper=_replace_chunk(zstandard.ZstdCompressor().compress(b"\0" * 35)))),
    "chunk-declares-huge-size": ("section-content", topk_file(
        IDS, VALS, tamper=_replace_chunk(zstandard.ZstdCompressor().compress(b"\0" * (1 << 20))))),
    "chunk-not-zstd": ("section-content", topk_file(IDS, VALS, tamper=_replace_chunk(b"not a zstd frame at all"))),
    "chunk-without-content-size": ("section-content", topk_file(
        IDS, VALS, tamper=_replace_chunk(zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 36)))),
    # rule: section-crc
    "section-byte-flipped": ("section-crc", body_edit(_stream_chunk_byte)),
    "chunk-byte-flipped-section-crc-fixed": ("section-crc", body_and_header_edit(_stream_chunk_byte_section_crc_fixed)),
    # rule: labels
    "count-mismatch": ("labels", header_edit(lambda h: h["labels"].update(count=7))),
    "classes-mismatch": ("labels", header_edit(lambda h: h["labels"].update(classes=999))),
    # rule: codec
    "unknown-codec": ("codec", header_edit(lambda h: h["codec"].update(id="nope"))),
    "bad-codec-config": ("codec", header_edit(lambda h: h["codec"].update(config={"k": 0}))),
    "unknown-codec-option": ("codec", header_edit(lambda h: h["codec"].update(config={"k": 5, "evil": 1}))),
    # found by benchmarks/fuzz.py: a bare number where FORMAT.md's vq table says a list
    "vq-temperature-not-a-list": ("codec", golden_header_edit(
        "v1.2-vq-image-bias-logits.vqsl", lambda h: h["codec"]["config"].update(temperature=4096))),
    # rule: codec-params
    "unexpected-params": ("codec-params", topk_file(IDS, VALS, extra_array=np.zeros(4, np.float32))),
    # rule: codec-streams
    "missing-stream": ("codec-streams", topk_file(IDS, VALS, stream_names=("ids", "other"))),
    "stream-wrong-width": ("codec-streams", topk_file(IDS, VALS, k=4)),
    "class-id-out-of-range": ("codec-streams", topk_file(IDS + 10, VALS)),
}


def parse_header_bytes():
    pre, _ = parse(BASE)
    return BASE[pre["header_offset"]:]


def parse_body():
    pre, _ = parse(BASE)
    return BASE[64:pre["header_offset"]]


def test_base_file_is_valid(tmp_path):
    p = tmp_path / "base.vqsl"
    p.write_bytes(BASE)
    full_read(p)
    assert cli.main(["verify", str(p)]) == 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_rejects(case, tmp_path, capsys):
    rule, make = CASES[case]
    try:
        data = make(str(tmp_path))
    except TypeError:
        data = make()
    p = tmp_path / f"{case}.vqsl"
    p.write_bytes(data)
    with pytest.raises(FormatError) as e:
        full_read(p)
    assert e.value.rule == rule, f"{case}: expected rule {rule}, got {e.value.rule}: {e.value}"
    assert str(p) in str(e.value)  # the message names the file
    capsys.readouterr()
    assert cli.main(["verify", str(p)]) == 1
    assert "INVALID" in capsys.readouterr().out
    rc = cli.main(["stats", str(p)]) if rule not in ("section-content", "section-crc", "codec", "codec-params",
                                                       "codec-streams", "labels") else cli.main(["decode", str(p), "-o", str(tmp_path / "o.npy")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("slcodec: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o.npy").exists()


def test_every_rule_in_format_md_has_a_case():
    text = open(os.path.join(os.path.dirname(__file__), "..", "FORMAT.md")).read()
    table = text.split("## What a reader MUST reject", 1)[1].split("\n## ", 1)[0]
    rules = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    from test_shards import SHARD_CASES  # the sharded-set rules (format 1.1) need a set of files each
    assert rules == {rule for rule, _ in CASES.values()} | {case[0] for case in SHARD_CASES.values()}


def test_msgpack_section_size_cap(tmp_path, monkeypatch):
    import slcodec.format.container as container
    monkeypatch.setattr(container, "MAX_MSGPACK_SECTION_BYTES", 8)
    p = tmp_path / "x.vqsl"
    p.write_bytes(BASE)
    with Container.open(p) as c:
        with pytest.raises(FormatError) as e:
            c.read_msgpack("provenance")
    assert e.value.rule == "section-content"


CORPUS = os.path.join(os.path.dirname(__file__), "attacks")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(CORPUS) if f.endswith(".vqsl")))
def test_corpus_file_rejected(name, capsys):
    """The committed hostile files (tests/make_attacks.py): each is rejected by the rule in its name."""
    rule = name.split("--", 1)[0]
    path = os.path.join(CORPUS, name)
    with pytest.raises(FormatError) as e:
        full_read(path)
    assert e.value.rule == rule
    assert cli.main(["verify", path]) == 1
    capsys.readouterr()


def test_corpus_covers_every_case():
    assert {f.split("--", 1)[1][:-len(".vqsl")] for f in os.listdir(CORPUS) if f.endswith(".vqsl")} == set(CASES)


# ---------------------------------------------------------------- issue 12: cost bombs and resources
# Hostile inputs too big for the committed corpus, or checks of how a rejection is reported.

def test_msgpack_value_count_cap(tmp_path, capsys):
    """An ``augment`` section of 2**20 nils in one array is 2**20 + 1 values: one over the cap
    (1 MiB of msgpack that a reader would otherwise turn into 2**20 Python objects; a section of
    64 MiB of empty lists took verify 47 s and 5 GB)."""
    from slcodec.format.container import MAX_MSGPACK_ITEMS
    raw = b"\xdd" + struct.pack(">I", MAX_MSGPACK_ITEMS) + b"\xc0" * MAX_MSGPACK_ITEMS
    p = tmp_path / "many-values.vqsl"
    p.write_bytes(topk_file(IDS, VALS, raw_msgpack={"augment": raw})(str(tmp_path)))
    with Container.open(p) as c:
        with pytest.raises(FormatError) as e:
            c.read_msgpack("augment")
    assert e.value.rule == "header-syntax" and "values" in str(e.value)
    assert cli.main(["verify", str(p)]) == 1
    # one value fewer is accepted: the cap is the documented number, not lower
    p.write_bytes(topk_file(IDS, VALS, raw_msgpack={"augment": raw[:1] + struct.pack(">I", MAX_MSGPACK_ITEMS - 1)
                                                    + raw[5:-1]})(str(tmp_path)))
    with Container.open(p) as c:
        assert len(c.read_msgpack("augment")) == MAX_MSGPACK_ITEMS - 1


def test_out_of_memory_is_not_reported_as_damage(tmp_path, monkeypatch, capsys):
    """Resource exhaustion while verifying is said as such (exit 2), never "INVALID" (exit 1)."""
    import slcodec.format.container as container
    from slcodec.errors import ResourceError
    p = tmp_path / "base.vqsl"
    p.write_bytes(BASE)

    real_unpackb = container.msgpack.unpackb

    def no_memory_for_sections(data, **kw):  # the header still parses; the msgpack sections run out
        if bytes(data[:5]) == b"\x81\xa4mode" or b"teacher" in bytes(data):
            raise MemoryError
        return real_unpackb(data, **kw)
    monkeypatch.setattr(container.msgpack, "unpackb", no_memory_for_sections)
    with Container.open(p) as c:
        with pytest.raises(ResourceError) as e:
            c.verify()
    assert "out of memory" in str(e.value) and str(p) in str(e.value)
    capsys.readouterr()
    assert cli.main(["verify", str(p)]) == 2
    out, err = capsys.readouterr()
    assert "INVALID" not in out and "out of memory" in err and err.count("\n") == 1


def test_verify_holds_one_chunk_at_a_time(tmp_path):
    """A stream whose chunks inflate hugely (here 8 chunks of 16 MiB from ~4 KB) is verified
    with the memory of one chunk: chunks are inflated and checked, not filtered or cached."""
    import tracemalloc

    from craft import add_raw_stream
    chunk_bytes = 16 << 20
    frame = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(b"\0" * chunk_bytes)
    p = tmp_path / "inflating.vqsl"
    data = topk_file(IDS, VALS)(str(tmp_path))
    with Container.from_bytes(data) as src, ContainerWriter(p, verify=False) as w:
        for sec in src.header["sections"]:
            w._add(sec["name"], sec["kind"], src._payload(sec), {k: v for k, v in sec.items()
                                                                  if k not in ("name", "kind", "offset", "length", "crc32")})
        add_raw_stream(w, "extra/inflating", [frame] * 8, "uint16", 1024, chunk_bytes // 2048)
        w.commit({k: v for k, v in src.header.items() if k != "sections"})
    assert os.path.getsize(p) < 64 << 10
    with Container.open(p) as c:
        tracemalloc.start()
        try:
            assert c.verify() == []
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 2 * chunk_bytes, f"verify peaked at {peak:,} bytes for {chunk_bytes:,}-byte chunks"


def test_decode_result_the_machine_cannot_hold(tmp_path, capsys):
    """A valid 4 Mi-label topk file of 2**20 classes (a few KB: the streams are all zeros) asks
    decode(None) for a 16 TiB result: a ResourceError naming the file, not the allocator's error."""
    from slcodec.errors import ResourceError
    n, classes = 1 << 22, 1 << 20
    p = tmp_path / "huge-result.vqsl"
    with ContainerWriter(p, verify=False) as w:
        ids = StreamBuilder("uint32", 1, chunk_rows=n)
        ids.append(np.zeros((n, 1), np.uint32))
        vals = StreamBuilder("float16", 1, chunk_rows=n)
        vals.append(np.full((n, 1), 0.5, np.float16))
        w.add_stream("streams/ids", ids)
        w.add_stream("streams/values", vals)
        w.commit({"labels": {"count": n, "shape": [n, classes], "classes": classes, "source_kind": "probs"},
                  "codec": {"id": "topk", "config": {"k": 1}}})
    assert os.path.getsize(p) < 64 << 10
    with slcodec.open(p) as r:
        assert r.decode(slice(5, 7)).shape == (2, classes)  # a small request is served
        with pytest.raises(ResourceError) as e:
            r.decode(None)
    assert str(p) in str(e.value)
    capsys.readouterr()
    assert cli.main(["decode", str(p), "-o", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slcodec: error:") and err.count("\n") == 1 and "internal" not in err


def test_many_small_chunks_share_one_decompressor(tmp_path, monkeypatch):
    """A stream of many one-row chunks (found by benchmarks/fuzz.py: 1,000,000 of them, 29 MB,
    took verify over 10 s of CPU, ~12 us a chunk, most of it making a zstd context per chunk):
    every chunk is inflated with the same context (per thread), not a new one each."""
    import zstandard as zstd

    import slcodec.format.container as container
    from craft import add_raw_stream
    made = []

    real = zstd.ZstdDecompressor

    def counting(*a, **kw):
        made.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(container.zstandard, "ZstdDecompressor", counting)
    monkeypatch.setattr(container, "_DCTX", container.threading.local())
    frame = zstd.ZstdCompressor(write_content_size=True).compress(b"\0" * 4)
    p = tmp_path / "many-chunks.vqsl"
    data = topk_file(IDS, VALS)(str(tmp_path))
    with Container.from_bytes(data) as src, ContainerWriter(p, verify=False) as w:
        for sec in src.header["sections"]:
            w._add(sec["name"], sec["kind"], src._payload(sec), {k: v for k, v in sec.items()
                                                                  if k not in ("name", "kind", "offset", "length", "crc32")})
        add_raw_stream(w, "augment/coords", [frame] * 2000, "float32", 1, 1)
        w.commit({k: v for k, v in src.header.items() if k != "sections"})
    with Container.open(p) as c:
        assert c.verify() == []
    assert len(made) == 1
