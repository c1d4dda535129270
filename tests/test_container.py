"""The container layer on its own: sections round-trip, streams give random access, writes are atomic."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slcodec.format.container import ALIGN, Container, ContainerWriter, StreamBuilder
from slcodec.errors import FormatError

HEADER = {"labels": {"count": 0, "shape": [0, 2], "classes": 2, "source_kind": "logits"},
          "codec": {"id": "none", "config": {}}}


def write(path, arrays=(), streams=(), msgs=(), **kw):
    with ContainerWriter(path) as w:
        for name, arr in arrays:
            w.add_array(name, arr)
        for name, b in streams:
            w.add_stream(name, b)
        for name, obj in msgs:
            w.add_msgpack(name, obj)
        w.commit(HEADER, **kw)


def test_array_and_msgpack_sections_round_trip(tmp_path):
    p = tmp_path / "a.vqsl"
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    b = np.array([[1, -2], [3, 4]], dtype=np.int16)
    write(p, arrays=[("params/a", a), ("params/b", b)], msgs=[("provenance", {"teacher": "x", "n": [1, 2]})])
    with Container.open(p) as c:
        np.testing.assert_array_equal(c.read_array("params/a"), a)
        np.testing.assert_array_equal(c.read_array("params/b"), b)
        assert c.read_msgpack("provenance") == {"teacher": "x", "n": [1, 2]}
        for sec in c.header["sections"]:
            assert sec["offset"] % ALIGN == 0
        assert c.verify() == []


def test_array_sections_are_memory_mapped_and_read_only(tmp_path):
    p = tmp_path / "a.vqsl"
    write(p, arrays=[("params/w", np.ones((64, 64), np.float32))])
    with Container.open(p) as c:
        arr = c.read_array("params/w")
        assert not arr.flags.writeable
        assert arr.base is not None  # a view of the map, not a copy


@given(rows=st.integers(0, 300), width=st.integers(1, 7), chunk=st.integers(1, 64),
       dtype=st.sampled_from(["uint8", "uint16", "int32", "float16", "float32", "uint64"]),
       coding=st.sampled_from(["zstd", "raw"]), seed=st.integers(0, 2**32 - 1))
def test_stream_random_access(tmp_path_factory, rows, width, chunk, dtype, coding, seed):
    rng = np.random.default_rng(seed)
    arr = (rng.integers(0, 200, size=(rows, width))).astype(dtype)
    b = StreamBuilder(dtype, width, chunk_rows=chunk, coding=coding)
    for part in np.array_split(arr, 3):  # appended in uneven batches
        b.append(part)
    p = tmp_path_factory.mktemp("s") / "s.vqsl"
    write(p, streams=[("streams/x", b)])
    with Container.open(p) as c:
        s = c.stream("streams/x")
        assert (s.rows, s.width) == (rows, width)
        np.testing.assert_array_equal(s.read_rows(0, rows), arr)
        if rows:
            lo, hi = sorted(rng.integers(0, rows + 1, size=2))
            np.testing.assert_array_equal(s.read_rows(lo, hi), arr[lo:hi])
            idx = rng.integers(0, rows, size=17)
            np.testing.assert_array_equal(s.take(idx), arr[idx])
        assert c.verify() == []


def test_stream_rejects_out_of_range_rows(tmp_path):
    b = StreamBuilder("uint8", 1, chunk_rows=4)
    b.append(np.arange(10, dtype=np.uint8))
    p = tmp_path / "s.vqsl"
    write(p, streams=[("streams/x", b)])
    with Container.open(p) as c:
        with pytest.raises(IndexError):
            c.stream("streams/x").read_rows(5, 11)
        with pytest.raises(IndexError):
            c.stream("streams/x").take([10])


def test_failed_write_leaves_existing_file_and_no_temp(tmp_path):
    p = tmp_path / "out.vqsl"
    p.write_bytes(b"precious")
    with pytest.raises(RuntimeError):
        with ContainerWriter(p) as w:
            w.add_array("params/a", np.zeros(3))
            raise RuntimeError("teacher crashed")
    assert p.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["out.vqsl"]


def test_commit_replaces_existing_file_with_valid_one(tmp_path):
    p = tmp_path / "out.vqsl"
    p.write_bytes(b"old")
    os.chmod(p, 0o640)
    write(p, arrays=[("params/a", np.zeros(3))])
    with Container.open(p) as c:
        assert c.verify() == []
    assert os.stat(p).st_mode & 0o777 == 0o640  # the replaced file's mode is kept
    assert sorted(os.listdir(tmp_path)) == ["out.vqsl"]


def test_writer_refuses_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        ContainerWriter(tmp_path / "nope" / "x.vqsl")


def test_duplicate_section_name_refused_by_writer(tmp_path):
    with ContainerWriter(tmp_path / "x.vqsl") as w:
        w.add_array("params/a", np.zeros(1))
        with pytest.raises(ValueError):
            w.add_array("params/a", np.zeros(1))


def test_unknown_optional_flag_is_ignored(tmp_path):
    p = tmp_path / "x.vqsl"
    write(p, optional_flags=0x80000000)
    with Container.open(p) as c:
        assert c.preamble.optional_flags == 0x80000000
        assert c.verify() == []


def test_writer_verifies_its_output(tmp_path):
    """The writer re-opens what it wrote before moving it into place; a file our own reader would
    reject (here: an unknown required feature; bits 0 and 1 are format 1.1's, bit 2 1.6's) never replaces the output."""
    p = tmp_path / "x.vqsl"
    p.write_bytes(b"previous")
    with pytest.raises(FormatError) as e:
        write(p, required_flags=0x8)
    assert e.value.rule == "required-flags"
    assert p.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["x.vqsl"]


def test_container_layer_does_not_import_torch(tmp_path):
    """stats and verify must work on a machine without torch."""
    code = ("import sys, slcodec.format.container, slcodec.format.stats, slcodec.format.schema, slcodec.cli;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_stats_and_structure_verify_run_without_torch(tmp_path):
    """Block the torch import and run `stats` and `verify --structure-only` on a golden file."""
    golden = os.path.join(os.path.dirname(__file__), "..", "spec", "golden", "v1.0-topk5-logits.vqsl")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from slcodec.cli import main\n"
            f"assert main(['stats', {golden!r}]) == 0\n"
            f"assert main(['verify', '--structure-only', {golden!r}]) == 0\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "bits/label" in out.stdout and "OK" in out.stdout


# ---------------------------------------------------------------- msgpack and section rules (issue 12)
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=40)


@given(msgpack_values)
def test_msgpack_walk_accepts_what_the_writer_packs(obj):
    """The structure walk agrees with msgpack on every value a writer makes (every type, widths)."""
    from slcodec.format.container import _pack_msgpack, _unpack_msgpack
    assert _unpack_msgpack(_pack_msgpack(obj), "value", 1 << 20) == obj


def test_msgpack_caps_are_exact():
    import msgpack

    from slcodec.format.container import MAX_MSGPACK_DEPTH, MAX_MSGPACK_ITEMS, _unpack_msgpack

    def nested(depth):
        obj = 0
        for _ in range(depth):
            obj = {"k": obj}
        return obj
    assert _unpack_msgpack(msgpack.packb(nested(MAX_MSGPACK_DEPTH)), "v", 1 << 20) == nested(MAX_MSGPACK_DEPTH)
    for too_deep in (msgpack.packb(nested(MAX_MSGPACK_DEPTH + 1)), b"\x91" * MAX_MSGPACK_DEPTH + b"\x90"):
        with pytest.raises(FormatError, match="nesting") as e:
            _unpack_msgpack(too_deep, "v", 1 << 20)
        assert e.value.rule == "header-syntax"
    # a container's declared size counts before its items are read: no walk over 2**32 items
    with pytest.raises(FormatError, match="values"):
        _unpack_msgpack(b"\xdf\xff\xff\xff\xff", "v", 1 << 20)
    items = [None] * (MAX_MSGPACK_ITEMS - 1)  # the list itself is one more value
    assert len(_unpack_msgpack(msgpack.packb(items), "v", 1 << 20)) == MAX_MSGPACK_ITEMS - 1
    with pytest.raises(FormatError, match="values"):
        _unpack_msgpack(msgpack.packb(items + [None]), "v", 1 << 20)


def test_writer_refuses_a_msgpack_section_readers_would_reject(tmp_path):
    deep = 0
    for _ in range(40):
        deep = [deep]
    with ContainerWriter(tmp_path / "a.vqsl") as w:
        with pytest.raises(ValueError, match="nesting"):
            w.add_msgpack("provenance", {"x": deep})
        with pytest.raises(ValueError, match="not a string"):
            w.add_msgpack("provenance", {b"bytes": 1})


def _meta_problem(sec):
    from slcodec.format.container import _check_section_meta
    problems = []

    def bad(msg, rule):
        problems.append((rule, msg))
        raise FormatError(msg, rule=rule)
    try:
        _check_section_meta(sec, bad)
    except FormatError:
        pass
    return problems


def test_array_shape_bound_counts_zero_dimensions_as_one():
    def arr(shape, dtype="uint8"):
        return {"name": "x", "kind": "array", "offset": 64, "length": 0, "crc32": 0, "dtype": dtype, "shape": shape}
    assert _meta_problem(arr([0, 2**48])) == []
    assert _meta_problem(arr([0, 2**45], "float64")) == []
    assert _meta_problem(arr([3, 0, 2**47])) != []          # 3 * 2**47 > 2**48
    assert _meta_problem(arr([0, 2**48 + 1]))[0][0] == "section-content"
    assert _meta_problem(arr([0, 2**45 + 1], "float64"))[0][0] == "section-content"


def test_only_the_specified_filter_order_is_accepted():
    def stream(filters):
        return {"name": "s", "kind": "stream", "offset": 64, "length": 64, "crc32": 0, "dtype": "uint16",
                "rows": 1, "width": 2, "chunk_rows": 1, "coding": "zstd", "filters": filters}
    for ok in ([], ["transpose"], ["byteshuffle"], ["transpose", "byteshuffle"]):
        assert _meta_problem(stream(ok)) == [], ok
    assert _meta_problem(stream(["byteshuffle", "transpose"]))[0][0] == "section-content"


def test_stream_chunk_cache_is_bounded_in_bytes(tmp_path, monkeypatch):
    """Up to 8 chunks are cached, but never more than STREAM_CACHE_BYTES of them (a hostile
    stream of 64 MiB chunks would otherwise keep 512 MiB)."""
    import slcodec.format.container as container
    b = StreamBuilder("uint8", 256, chunk_rows=4)  # 1 KiB chunks
    b.append((np.arange(16 * 256).reshape(16, 256) % 251).astype(np.uint8))
    p = tmp_path / "s.vqsl"
    write(p, streams=[("s", b)])
    with Container.open(p) as c:
        s = c.stream("s")
        for k in range(4):
            s.read_chunk(k)
        assert len(s._cache) == 4
        monkeypatch.setattr(container, "STREAM_CACHE_BYTES", 2500)
        s._cache.clear()
        for k in range(4):
            s.read_chunk(k)
        assert list(s._cache) == [2, 3]
        np.testing.assert_array_equal(s.read_rows(0, 16), np.arange(16 * 256).reshape(16, 256) % 251)


@pytest.mark.parametrize("size", [15, 16, 255, 256, 65535, 65536])
def test_msgpack_walk_handles_every_length_width(size):
    """fix/8/16/32-bit lengths of str, bin, array and map (hypothesis draws only short ones)."""
    from slcodec.format.container import _pack_msgpack, _unpack_msgpack
    for obj in ("s" * size, b"b" * size, [1] * size, {str(i): i for i in range(size)}, 2**size if size < 64 else -1):
        assert _unpack_msgpack(_pack_msgpack(obj), "value", 1 << 20) == obj
