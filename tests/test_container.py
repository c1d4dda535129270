"""The container layer on its own: sections round-trip, streams give random access, writes are atomic."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slcodec.container import ALIGN, Container, ContainerWriter, StreamBuilder
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
    reject (here: an unknown required feature; bits 0 and 1 are format 1.1's) never replaces the output."""
    p = tmp_path / "x.vqsl"
    p.write_bytes(b"previous")
    with pytest.raises(FormatError) as e:
        write(p, required_flags=0x4)
    assert e.value.rule == "required-flags"
    assert p.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["x.vqsl"]


def test_container_layer_does_not_import_torch(tmp_path):
    """stats and verify must work on a machine without torch."""
    code = ("import sys, slcodec.container, slcodec.stats, slcodec.schema, slcodec.cli;"
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
