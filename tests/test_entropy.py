"""The rans stream coding (format 1.6): FORMAT.md's decoder written out in plain Python against
constriction's bytes, round trips and random access through the container, per-image contexts
against a flat table and zstd, the writer's per-stream choice, and hostile rans sections."""
import os
import zlib

import numpy as np
import pytest

from slcodec.errors import FormatError
from slcodec.format import entropy
from slcodec.format.container import (CHUNK_ENTRY, FLAG_RANS_STREAMS, Container, ContainerWriter,
                                      SpooledStreamBuilder, StreamBuilder)

from craft import parse, rebuild

HEADER = {"labels": {"count": 1, "shape": [1, 2], "classes": 2, "source_kind": "logits"},
          "codec": {"id": "fp32", "config": {}}}


# --------------------------------------------------------------------------- FORMAT.md, in plain Python
def ref_frequencies(weights, top):
    """FORMAT.md: A = floor(2**24 (2**24 - S) / W), f = 1 + floor(w A / 2**24), the rest of 2**24 to
    symbol top (the column's first most frequent symbol in the stored table)."""
    S, W = len(weights), sum(weights)
    A = (1 << 24) * ((1 << 24) - S) // W
    f = [1 + w * A // (1 << 24) for w in weights]
    f[top] += (1 << 24) - sum(f)
    return f


def ref_decode_chunk(data: bytes, n: int, table, first_row: int, group_rows: int, group_phase: int, inc: int):
    """A chunk decoded as FORMAT.md says, one symbol at a time, with Python integers only."""
    width, S = len(table), len(table[0])
    words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]
    state = words.pop() if words else 0
    if words:
        state = (state << 32) | words.pop()
    if group_rows and inc:
        groups = [(first_row + group_phase + r) // group_rows for r in range(n)]
        pos = [r - groups.index(groups[r]) for r in range(n)]
    else:
        groups, pos = [0] * n, [0] * n
    order = sorted(((pos[r], m, r) for r in range(n) for m in range(width)))
    counts = {}
    out = [[None] * width for _ in range(n)]
    for _, m, r in order:
        w = [table[m][s] + inc * counts.get((groups[r], m, s), 0) for s in range(S)]
        f = ref_frequencies(w, table[m].index(max(table[m])))
        q = state & ((1 << 24) - 1)
        cdf = 0
        for s in range(S):
            if q < cdf + f[s]:
                break
            cdf += f[s]
        state = f[s] * (state >> 24) + q - cdf
        if state < (1 << 32) and words:
            state = (state << 32) | words.pop()
        out[r][m] = s
        counts[(groups[r], m, s)] = counts.get((groups[r], m, s), 0) + 1
    assert state == 0 and not words, "the chunk did not end at the coder's initial state"
    return np.array(out)


def image_like(rng, images, views, width, S, share=0.7):
    """Symbols where the views of an image mostly repeat a few symbols of their own."""
    pref = rng.integers(0, S, (images, width, 3))
    pick = pref[np.arange(images * views)[:, None] // views, np.arange(width)[None, :],
                rng.integers(0, 3, (images * views, width))]
    noise = rng.integers(0, S, (images * views, width))
    return np.where(rng.random((images * views, width)) < share, pick, noise)


def table_of(block, S):
    counts = np.stack([np.bincount(block[:, m], minlength=S) for m in range(block.shape[1])])
    return entropy.normalise_counts(counts).astype(np.int64)


@pytest.mark.parametrize("inc,group_rows,phase", [(0, 0, 0), (4096, 7, 0), (65536, 7, 3), (256, 5, 4), (1024, 1, 0)])
def test_constriction_bytes_decode_by_the_spec(inc, group_rows, phase):
    """constriction's output for our integer model decodes, symbol by symbol, with the decoder of
    FORMAT.md (pure Python): the format does not depend on constriction's float quantiser."""
    rng = np.random.default_rng(inc + group_rows)
    block = image_like(rng, 6, 7, 3, 11)[:37]
    table = table_of(block, 11)
    data = entropy.encode_chunk(block, table, 14, group_rows, phase, inc)
    ref = ref_decode_chunk(data, len(block), table.tolist(), 14, group_rows, phase, inc)
    np.testing.assert_array_equal(ref, block)
    got = entropy.decode_chunk(data, len(block), table, 14, group_rows, phase, inc, np.uint8, "x")
    np.testing.assert_array_equal(got, block)


def test_frequencies_match_the_spec():
    rng = np.random.default_rng(3)
    w = rng.integers(0, 5000, (50, 9))
    w[:, 0] += 1
    w[7] = [4, 4, 0, 0, 0, 0, 0, 0, 0]
    w[8] = [(1 << 32) + 5, 0, 1, 0, 0, 0, 0, 0, 0]   # the largest weight a chunk can reach
    top = rng.integers(0, 9, 50)
    f = entropy.frequencies(w, top)
    assert (f.sum(1) == 1 << 24).all() and (f >= 1).all()
    assert f.tolist() == [ref_frequencies(row, int(t)) for row, t in zip(w.tolist(), top)]


def test_normalised_table():
    counts = np.array([[0, 5, 1, 0, 1000000], [3, 0, 0, 0, 0]])
    t = entropy.normalise_counts(counts)
    assert t.sum(1).tolist() == [entropy.TABLE_TOTAL] * 2
    assert ((t > 0) == (counts > 0)).all()        # every symbol that occurs, and only those


# --------------------------------------------------------------------------- through the container
def write_stream(path, rows, coding, chunk_rows, group_rows=0, phase=0, dtype="uint8", spooled=False):
    rows = rows.astype(dtype)
    kw = {"folder": os.path.dirname(path)} if spooled else {}
    cls = SpooledStreamBuilder if spooled else StreamBuilder
    b = cls(dtype, rows.shape[1], chunk_rows=chunk_rows, coding=coding, group_rows=group_rows,
            group_phase=phase, **kw)
    for lo in range(0, len(rows), 50):
        b.append(rows[lo:lo + 50])
    with ContainerWriter(path) as w:
        w.add_stream("streams/s", b)
        w.commit(HEADER)
    b.close()
    with Container.open(path) as c:
        return c.stream("streams/s").sec["length"]   # the stream's bytes (model and index included)


@pytest.mark.parametrize("spooled", [False, True])
def test_round_trip_and_random_access(tmp_path, spooled):
    """Random rows across chunk and image boundaries (chunks of 45 rows, images of 20 starting at
    row 20 - phase) equal the full decode; the file is 1.6 with required bit 2."""
    rng = np.random.default_rng(0)
    rows = image_like(rng, 16, 20, 4, 40).astype(np.uint16)
    p = str(tmp_path / "r.vqsl")
    write_stream(p, rows, "rans", 45, group_rows=20, phase=7, dtype="uint16", spooled=spooled)
    with Container.open(p) as c:
        assert c.preamble.minor == 6 and c.preamble.required_flags == FLAG_RANS_STREAMS
        s = c.stream("streams/s")
        assert s.sec["coding"] == "rans" and s.sec["rans"]["increment"] > 0 and s.sec["filters"] == []
        full = s.read_rows(0, len(rows))
        np.testing.assert_array_equal(full, rows)
        assert c.verify() == []
    with Container.open(p) as c:   # fresh reader: no chunk cached
        pick = rng.permutation(len(rows))[:60]
        np.testing.assert_array_equal(c.stream("streams/s").take(pick), rows[pick])
        np.testing.assert_array_equal(c.stream("streams/s").read_rows(43, 91), rows[43:91])


def test_image_contexts_beat_a_flat_table_and_zstd(tmp_path):
    """On views that repeat their image's symbols, per-image adaptive counts code smaller than one
    static table and than zstd; a flat set (no groups) uses the static table, which on skewed
    symbols codes smaller than zstd."""
    rng = np.random.default_rng(1)
    skewed = np.minimum(rng.geometric(0.15, (1200, 4)) - 1, 63)
    for rows, names in ((image_like(rng, 40, 30, 4, 64), ("image", "flat", "zstd")), (skewed, ("flat", "zstd"))):
        sizes = {}
        for name in names:
            p = str(tmp_path / f"{name}.vqsl")
            sizes[name] = write_stream(p, rows, "zstd" if name == "zstd" else "rans", 120,
                                       group_rows=30 if name == "image" else 0)
            with Container.open(p) as c:
                np.testing.assert_array_equal(c.stream("streams/s").read_rows(0, len(rows)), rows)
                if name == "flat":
                    assert c.stream("streams/s").sec["rans"]["increment"] == 0
        if "image" in sizes:
            assert sizes["image"] < 0.85 * min(sizes["flat"], sizes["zstd"]), sizes
        else:
            assert sizes["flat"] < sizes["zstd"], sizes


def test_auto_stores_the_smaller_coding(tmp_path):
    rng = np.random.default_rng(2)
    for rows, group, want in ((image_like(rng, 20, 30, 2, 16), 30, "rans"),
                              # a short random sequence repeated: zstd's matches win
                              (np.tile(rng.integers(0, 256, (17, 2)), (40, 1)), 30, "zstd")):
        sizes = {c: write_stream(str(tmp_path / f"{c}.vqsl"), rows, c, 120, group_rows=group)
                 for c in ("rans", "zstd", "auto")}
        with Container.open(str(tmp_path / "auto.vqsl")) as c:
            assert c.stream("streams/s").sec["coding"] == want
        assert sizes["auto"] == min(sizes["rans"], sizes["zstd"])   # stream bytes, model and index included
    # what rans cannot code goes to zstd: a float stream, a symbol >= 2**16
    for rows, dtype in ((rng.random((50, 2)), "float16"), (np.full((50, 1), 1 << 16), "uint32")):
        p = str(tmp_path / "x.vqsl")
        write_stream(p, rows, "auto", 20, dtype=dtype)
        with Container.open(p) as c:
            assert c.stream("streams/s").sec["coding"] == "zstd"
            assert c.preamble.required_flags == 0


# --------------------------------------------------------------------------- the writer, vq
def _vq_labels(images=12, views=40, classes=24, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (images, 1, classes))
    return (means + rng.normal(0, 0.7, (images, views, classes))).astype(np.float32)


VQ_TINY = dict(codes=2, codebook_size=16, code_dim=4, hidden=32, steps=40, train_batch=64, param_dtype="float16")


def test_vq_writer_codes_streams_by_size_and_decodes_as_zstd(tmp_path, monkeypatch):
    """vq's streams are coded per stream by size; the labels decode exactly as from the zstd file."""
    import slcodec
    from slcodec.pipeline import writer
    x = _vq_labels(images=24)   # 960 labels: enough that rans pays for the codes (480 do not)
    a, b = str(tmp_path / "auto.vqsl"), str(tmp_path / "zstd.vqsl")
    slcodec.encode(x, a, codec="vq", seed=0, **VQ_TINY)
    monkeypatch.setattr(writer, "ENTROPY_CODED", ())
    slcodec.encode(x, b, codec="vq", seed=0, **VQ_TINY)
    with slcodec.open(a) as ra, slcodec.open(b) as rb:
        np.testing.assert_array_equal(ra.decode(None).numpy(), rb.decode(None).numpy())
        pick = np.array([0, 39, 40, 41, 200, 959, 13, 333, 520])
        np.testing.assert_array_equal(ra.decode(pick).numpy(), rb.decode(pick).numpy())
    with Container.open(a) as ca, Container.open(b) as cb:
        assert cb.preamble.required_flags == 0
        for name in ("streams/codes", "streams/top1"):
            sa, sb = ca.stream(name), cb.stream(name)
            assert sa.sec["chunk_rows"] % 40 == 0            # chunks of whole images
            np.testing.assert_array_equal(sa.read_rows(0, sa.rows), sb.read_rows(0, sb.rows))
            if sa.sec["coding"] == "rans":
                assert sa.sec["rans"]["group_rows"] == 40
                # rans chosen only when smaller than zstd of the same chunks
                zs = StreamBuilder(sa.sec["dtype"], sa.width, chunk_rows=sa.chunk_rows, coding="zstd")
                zs.append(sa.read_rows(0, sa.rows))
                assert sa.sec["length"] < len(zs.finish()[1])
        assert ca.stream("streams/codes").sec["coding"] == "rans"
        assert ca.preamble.required_flags == FLAG_RANS_STREAMS and ca.preamble.minor >= 6


def test_sharded_vq_set_keeps_image_groups(tmp_path):
    """Shards start mid-image: each shard's groups are phased so they are still the images; split
    and merge copy rans streams and decode the same labels."""
    import slcodec
    from slcodec.format.shards import merge
    x = _vq_labels(images=6, views=40)
    one, sharded, merged = (str(tmp_path / n) for n in ("one.vqsl", "set.vqsl", "merged.vqsl"))
    slcodec.encode(x, one, codec="vq", seed=0, **VQ_TINY)
    slcodec.encode(x, sharded, codec="vq", seed=0, shard_rows=100, **VQ_TINY)
    with slcodec.open(sharded) as r:
        entries = r.entries
        with Container.open(os.path.join(tmp_path, entries[1]["file"])) as c:
            sec = c.stream("streams/codes").sec
            if sec["coding"] == "rans":
                assert sec["rans"]["group_phase"] == 100 % 40
    merge(sharded, merged)
    with slcodec.open(one) as a, slcodec.open(sharded) as b, slcodec.open(merged) as m:
        want = a.decode(None).numpy()
        np.testing.assert_array_equal(b.decode(None).numpy(), want)
        np.testing.assert_array_equal(m.decode(None).numpy(), want)


# --------------------------------------------------------------------------- hostile rans sections
def rans_payload(model: bytes, chunks) -> list:
    index = bytearray()
    end = len(model)
    for ch in chunks:
        end += len(ch)
        index += CHUNK_ENTRY.pack(end, zlib.crc32(ch) & 0xFFFFFFFF, 0)
    return [model, *chunks, bytes(index)]


def hostile(path, model=None, chunks=None, rans=None, rows=None, table=None, meta=None):
    """A container with one rans stream of 2 chunks of 30 rows (images of 10 views), with one thing
    replaced: the table (uint32 array, packed as the format says), the model bytes, the coded chunks,
    the rans map's fields or the row count; every CRC valid."""
    rng = np.random.default_rng(5)
    block = image_like(rng, 6, 10, 2, 9)
    good = table_of(block, 9)
    chunk_list = [entropy.encode_chunk(block[k * 30:(k + 1) * 30], good, k * 30, 10, 0, 4096) for k in range(2)]
    if table is not None:
        model = entropy.pack_model(table)
    model = entropy.pack_model(good) if model is None else model
    chunks = chunk_list if chunks is None else chunks(chunk_list)
    meta_over, meta = meta, {"dtype": "uint8", "rows": 60 if rows is None else rows, "width": 2, "chunk_rows": 30, "coding": "rans",
            "filters": [], "rans": dict({"alphabet": 9, "increment": 4096, "group_rows": 10, "group_phase": 0,
                                         "model_bytes": len(model), "model_crc32": zlib.crc32(model) & 0xFFFFFFFF},
                                        **(rans or {}))}
    meta.update(meta_over or {})
    w = ContainerWriter(path, verify=False)
    w._add_parts("streams/s", "stream", rans_payload(model, chunks), meta)
    w.commit(HEADER)
    return block


def rejected(path, rule, match):
    """Reading the stream raises FormatError(rule) whose message matches; `slcodec verify` exits 1."""
    from slcodec.cli import main as cli_main
    with pytest.raises(FormatError, match=match) as e:
        with Container.open(path) as c:
            c.stream("streams/s").read_rows(0, c.stream("streams/s").rows)
    assert e.value.rule == rule
    assert cli_main(["verify", "--structure-only", path]) == 1


def test_hostile_baseline_decodes(tmp_path):
    p = str(tmp_path / "ok.vqsl")
    block = hostile(p)
    with Container.open(p) as c:
        np.testing.assert_array_equal(c.stream("streams/s").read_rows(0, 60), block)
        assert c.verify() == []


def _table_sum_wrong():
    t = np.zeros((2, 9), dtype=np.uint32)
    t[:, :] = 7000
    return t


def _zero_for_used():
    t = np.zeros((2, 9), dtype=np.uint32)
    t[:, 0] = entropy.TABLE_TOTAL     # all mass on symbol 0: the coded symbols decode, but occur with frequency 0
    return t


def _oversize():
    t = np.zeros((2, 9), dtype=np.uint32)
    t[:, 0] = entropy.TABLE_TOTAL + 1
    t[:, 1] = (1 << 32) - 1           # sums to 2**16 modulo 2**32: each count is checked, not only the sum
    return t


CASES = {
    "table-sums-wrong": (dict(table=_table_sum_wrong()), "section-content", "sums to"),
    "table-zero-for-a-symbol-that-occurs": (dict(table=_zero_for_used()), "section-content",
                                           "frequency in the stored table is 0|not a valid rANS|more than its"),
    "table-oversize-count": (dict(table=_oversize()), "section-content", "exceeds"),
    "table-wrong-size": (dict(table=np.full((2, 8), 8192, dtype=np.uint32)), "section-content", "declares"),
    "table-not-zstd": (dict(model=b"\x00" * 16), "section-content", "not a zstd frame"),
    "table-two-frames": (dict(model=None, rans=None), None, None),   # filled below
    "chunk-truncated": (dict(chunks=lambda c: [c[0][:-4], c[1]]), "section-content",
                        "more than its|not a valid rANS|frequency in the stored table is 0"),
    "chunk-not-whole-words": (dict(chunks=lambda c: [c[0] + b"\x01", c[1]]), "section-content", "32-bit words"),
    "chunk-ends-in-zero-word": (dict(chunks=lambda c: [c[0] + b"\0\0\0\0", c[1]]), "section-content",
                                "not a valid rANS"),
    "chunk-of-a-shorter-stream": (dict(chunks=lambda c: [c[0][:8], c[1]]), "section-content",
                                  "more than its|frequency in the stored table is 0|not a valid rANS"),
    "fewer-rows-than-coded": (dict(rows=55), "section-content", "more than its|frequency"),
    "group-phase-out-of-range": (dict(rans={"group_phase": 10}), "section-content", "group_phase"),
    "alphabet-too-large-for-dtype": (dict(rans={"alphabet": 300}), "section-content", "does not fit"),
    "model-over-counter-cap": (dict(rans={"alphabet": 256, "group_rows": 1}, meta={"chunk_rows": 20000}),
                               "section-content", "counters"),
    "chunk-rows-over-cap": (dict(meta={"chunk_rows": 70000}), "section-content", "exceed"),
    "model-bytes-past-the-section": (dict(rans={"model_bytes": 1 << 20}), "section-content", "do not fit"),
    "model-crc-wrong": (dict(rans={"model_crc32": 1}), "section-crc", "checksum"),
    "increment-too-large": (dict(header_rans={"increment": (1 << 16) + 1}), "header-schema", "increment"),
    "alphabet-one": (dict(header_rans={"alphabet": 1}), "header-schema", "alphabet"),
}
del CASES["table-two-frames"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_rans_section_is_rejected(tmp_path, case):
    kw, rule, match = CASES[case]
    p = str(tmp_path / f"{case}.vqsl")
    header_rans = kw.pop("header_rans", None)
    hostile(p, **kw)
    if header_rans:   # values the writer's own schema check refuses: put into the header afterwards
        data = open(p, "rb").read()
        _, header = parse(data)
        header["sections"][0]["rans"].update(header_rans)
        open(p, "wb").write(rebuild(data, header=header))
    rejected(p, rule, match)


def test_table_with_a_second_frame_is_rejected(tmp_path):
    import zstandard
    good = entropy.pack_model(np.full((2, 9), 0, dtype=np.uint32) + np.array([[entropy.TABLE_TOTAL] + [0] * 8]))
    p = str(tmp_path / "two.vqsl")
    hostile(p, model=good + zstandard.ZstdCompressor().compress(b"x"))
    rejected(p, "section-content", "exactly one")


def test_rans_stream_of_no_rows(tmp_path):
    """FORMAT.md: chunk 0 starts at model_bytes (end[-1] = model_bytes), so a stream of no rows is its
    table and an empty index.  The reader took the end of no chunk as 0, so the writer's own
    verification failed on such a stream (found by the fuzz checker, benchmarks/fuzz_rans.py); and
    the table of a stream without chunks is still checked by verify."""
    p = str(tmp_path / "empty.vqsl")
    write_stream(p, np.zeros((0, 2), np.uint8), "rans", 45)
    with Container.open(p) as c:
        assert c.stream("streams/s").sec["coding"] == "rans"
        assert c.stream("streams/s").read_rows(0, 0).shape == (0, 2)
        assert c.verify() == []
    bad = np.zeros((2, 9), dtype=np.uint32)
    bad[:, 0] = 7000   # columns that do not sum to 65,536
    model = entropy.pack_model(bad)
    q = str(tmp_path / "empty-bad-table.vqsl")
    w = ContainerWriter(q, verify=False)
    w._add_parts("streams/s", "stream", rans_payload(model, []),
                 {"dtype": "uint8", "rows": 0, "width": 2, "chunk_rows": 30, "coding": "rans", "filters": [],
                  "rans": {"alphabet": 9, "increment": 0, "group_rows": 0, "group_phase": 0,
                           "model_bytes": len(model), "model_crc32": zlib.crc32(model) & 0xFFFFFFFF}})
    w.commit(HEADER)
    with Container.open(q) as c:
        problems = c.verify()
    assert len(problems) == 1 and "sums to" in problems[0]


def test_rans_stream_without_the_required_flag_is_rejected(tmp_path):
    p = str(tmp_path / "ok.vqsl")
    hostile(p)
    data = open(p, "rb").read()
    q = str(tmp_path / "noflag.vqsl")
    open(q, "wb").write(rebuild(data, required_flags=0))
    with pytest.raises(FormatError, match="required flag bit 2") as e:
        Container.open(q)
    assert e.value.rule == "section-content"


def test_a_1_5_reader_refuses_the_file(tmp_path, monkeypatch):
    """A reader that does not know bit 2 rejects the file by `required-flags` before reading anything."""
    from slcodec.format import container
    p = str(tmp_path / "ok.vqsl")
    hostile(p)
    monkeypatch.setattr(container, "KNOWN_REQUIRED_FLAGS", container.FLAG_MANIFEST | container.FLAG_EXTERNAL_PARAMS)
    with pytest.raises(FormatError) as e:
        Container.open(p)
    assert e.value.rule == "required-flags"
    pre, _ = parse(open(p, "rb").read())
    assert pre["minor"] == 6


def test_golden_rans_file_decodes_by_the_spec():
    """The released 1.6 golden file holds a rans stream (per-image counts) whose chunks the plain
    decoder of FORMAT.md reads to the rows slcodec's reader gives."""
    golden = os.path.join(os.path.dirname(__file__), "..", "spec", "golden", "v1.6-vq-rans-logits.vqsl")
    with Container.open(golden) as c:
        assert c.preamble.minor == 6 and c.preamble.required_flags == FLAG_RANS_STREAMS
        s = c.stream("streams/codes")
        r = s.sec["rans"]
        assert s.sec["coding"] == "rans" and r["group_rows"] == 64 and r["increment"] > 0
        table = s._model().tolist()
        for k in range(s.nchunks):
            data = bytes(s._payload[s._starts[k]:s._ends[k]])
            n = s.chunk_rows_of(k)
            ref = ref_decode_chunk(data, n, table, k * s.chunk_rows, r["group_rows"], r["group_phase"], r["increment"])
            np.testing.assert_array_equal(ref, s.read_rows(k * s.chunk_rows, k * s.chunk_rows + n))


# --------------------------------------------------------------------------- the fast wave model, same bytes
def _zipf_chunk(rng, n, width, S, group_rows, first):
    """Rows whose groups favour a few symbols each (as vq's views of an image), any symbol possible."""
    p = 1.0 / np.arange(1, S + 1) ** 1.2
    p /= p.sum()
    g = (first + np.arange(n)) // max(group_rows, 1)
    out = np.empty((n, width), dtype=np.int64)
    for k in np.unique(g):
        rows = np.flatnonzero(g == k)
        for m in range(width):
            out[rows, m] = rng.permutation(S)[rng.choice(S, size=len(rows), p=p)]
    return out


SAME_BYTES = [  # (S, width, n, first_row, group_rows, group_phase, increment)
    (2, 1, 50, 0, 7, 0, 65536),
    (11, 3, 37, 14, 7, 3, 4096),        # partial groups at both ends
    (11, 3, 37, 14, 5, 4, 256),
    (203, 6, 1000, 150, 300, 0, 4096),  # vq's codes: a chunk starting and ending mid-image
    (203, 6, 900, 0, 300, 0, 16384),    # whole images
    (1016, 1, 700, 33, 120, 7, 1024),   # vq's top1
    (5000, 2, 80, 3, 40, 39, 65536),
    (40, 4, 60, 0, 1, 0, 1024),         # a group per row: one wave
    (40, 4, 60, 9, 500, 0, 4096),       # one partial group: a wave per row
    (203, 6, 300, 0, 0, 0, 0),          # static table
    (1016, 1, 500, 5, 300, 0, 0),       # groups but increment 0: static
]


@pytest.mark.parametrize("S,width,n,first,group_rows,phase,inc", SAME_BYTES)
def test_wave_model_writes_the_bytes_of_the_former_implementation(S, width, n, first, group_rows, phase, inc):
    """The float64 wave model (one A per wave, weights updated in place) gives constriction the
    same rows as the former int64 implementation (tests/entropy_before.py): same bytes, same rows
    decoded by both, and the same ideal code lengths, so the same increment is chosen."""
    import entropy_before as before
    rng = np.random.default_rng(S * 7 + n + inc)
    for trial in range(2):
        block = _zipf_chunk(rng, n, width, S, group_rows, first + phase)
        if trial:   # a table with zeros: symbols that never occur in the stream
            block = np.minimum(block, S // 2)
        table = table_of(block, S)
        data = entropy.encode_chunk(block, table, first, group_rows, phase, inc)
        assert data == before.encode_chunk(block, table, first, group_rows, phase, inc)
        for dec in (entropy.decode_chunk, before.decode_chunk):
            np.testing.assert_array_equal(dec(data, n, table, first, group_rows, phase, inc, np.uint16, "x"), block)
        for i in entropy.INCREMENTS:
            assert entropy.estimate_bits([block], table, [first], group_rows, phase, i) == \
                before.estimate_bits([block], table, [first], group_rows, phase, i)
        assert entropy.choose_increment([block, block[:n // 2]], table, [first, first], group_rows, phase, n) == \
            before.choose_increment([block, block[:n // 2]], table, [first, first], group_rows, phase, n)
        lay = entropy.ChunkLayout(first, n, group_rows, phase, inc)
        if lay.adaptive:   # a wave's groups are a slice of the chunk's groups, not gathered rows
            assert all(isinstance(s, slice) for s in entropy._WaveModel(table, lay, inc).spans)


def test_wave_model_rejects_what_the_former_implementation_rejected():
    """Damaged chunks (bytes flipped, words dropped or added, a wrong row count) raise the same
    FormatError, or decode to the same rows, with both implementations."""
    import entropy_before as before
    rng = np.random.default_rng(11)
    block = _zipf_chunk(rng, 90, 3, 30, 20, 5)
    block = np.minimum(block, 28)
    table = table_of(block, 30)            # symbol 29 never occurs: its stored frequency is 0
    assert (table[:, 29] == 0).all()
    data = entropy.encode_chunk(block, table, 5, 20, 0, 4096)
    outcomes = set()
    for k in range(40):
        d = bytearray(data)
        kind = k % 4
        if kind == 0:
            i = int(rng.integers(len(d)))
            d[i] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            d = d[:-4 * int(rng.integers(1, 3))]
        elif kind == 2:
            d += rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        n = 90 if kind != 3 else int(rng.integers(60, 120))
        got = []
        for dec in (entropy.decode_chunk, before.decode_chunk):
            try:
                got.append(dec(bytes(d), n, table, 5, 20, 0, 4096, np.uint8, "x").tolist())
            except FormatError as e:
                got.append((e.rule, str(e)))
        assert got[0] == got[1], k
        outcomes.add(type(got[0]).__name__)
    assert "tuple" in outcomes            # some were rejected
