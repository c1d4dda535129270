"""slcodec.Writer: streaming writes, the fit sample, atomic commit, spooled streams, RowReader."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import slcodec
import slcodec.pipeline.reader as api
import slcodec.pipeline.encode as encode_mod
import slcodec.pipeline.writer as writer_mod
from slcodec.codecs.base import Codec, get_codec_class
from slcodec.format.container import Container, ContainerWriter, SpooledStreamBuilder, StreamBuilder
from slcodec.errors import ConfigError, InputError
from slcodec.pipeline.inputs import as_source
from slcodec.pipeline.rows import RowReader, fit_rows

MAGIC = b"\x89VQS\r\n\x1a\n"


def make_logits(shape, seed=0, dtype=np.float32):
    return (np.random.default_rng(seed).normal(size=shape) * 3).astype(dtype)


def payloads(path):
    """Section name -> payload bytes (everything but the header's timings)."""
    with Container.open(path) as c:
        return {name: bytes(c._payload(sec)) for name, sec in c.sections.items()}, c.header


class Fitted(Codec):
    """A test codec with parameters: remembers every sample it was fitted on."""

    codec_id = "test-fitted"
    samples: list = []

    def fit(self, labels, ctx):
        Fitted.samples.append(labels.clone())
        self.mean = labels.mean(dim=0).numpy().astype(np.float32)

    def get_params(self):
        return {"mean": self.mean}

    def set_params(self, params, ctx):
        self.mean = params["mean"]

    def encode(self, labels, ctx):
        return {"values": labels.cpu().numpy().astype(np.float32)}

    def decode(self, streams, ctx):
        return streams["values"].to(ctx.device, torch.float32)

    def stream_specs(self, classes):
        return {"values": ("float32", classes)}


@pytest.fixture
def fitted(monkeypatch):
    """Make codec id 'test-fitted' known to the writer and the reader (not registered globally)."""
    def lookup(cid):
        return Fitted if cid == "test-fitted" else get_codec_class(cid)
    monkeypatch.setattr(writer_mod, "get_codec_class", lookup)
    monkeypatch.setattr(api, "get_codec_class", lookup)
    Fitted.samples = []
    return Fitted


# --------------------------------------------------------------------------- equivalence with encode
@pytest.mark.parametrize("codec,opts", [("fp32", {}), ("fp16", {}), ("topk", {"k": 4})])
def test_batches_give_the_file_encode_writes(tmp_path, codec, opts):
    x = make_logits((6, 7, 20), seed=1)
    ref = str(tmp_path / "ref.vqsl")
    slcodec.encode(x, ref, codec=codec, provenance={"teacher": "t"}, **opts)
    out = str(tmp_path / "w.vqsl")
    flat = x.reshape(-1, 20)
    with slcodec.Writer(out, codec, classes=20, shape=[6, 7], provenance={"teacher": "t"}, **opts) as w:
        for start, n in ((0, 5), (5, 1), (6, 0), (6, 30), (36, 6)):
            w.append(torch.from_numpy(flat[start:start + n]) if start % 2 else flat[start:start + n])
        assert w.count == 42
    a, ha = payloads(ref)
    b, hb = payloads(out)
    assert a.keys() == b.keys()
    for name in a:
        if name != "provenance":  # encode also records the source file's name and shape
            assert a[name] == b[name], name
    assert ha["labels"] == hb["labels"] and ha["codec"]["config"] == hb["codec"]["config"]
    with slcodec.open(out) as r:
        assert r.shape == (6, 7, 20)
        if codec != "topk":
            np.testing.assert_array_equal(r.decode(None, as_="logits").numpy(), x.astype(
                np.float16 if codec == "fp16" else np.float32).astype(np.float32))


def test_flat_shape_and_source_dtype(tmp_path):
    x = make_logits((9, 12), dtype=np.float16)
    out = str(tmp_path / "w.vqsl")
    with slcodec.Writer(out, "fp16", classes=12) as w:
        w.append(torch.from_numpy(x[:4]))
        w.append(x[4:])
    with slcodec.open(out) as r:
        assert r.shape == (9, 12)
        assert r.header["labels"]["source_dtype"] == "float16"
        assert np.array_equal(r.decode(None, as_="logits").numpy(), x.astype(np.float32))


# --------------------------------------------------------------------------- fitting
def test_fit_on_the_first_rows_and_held_rows_are_encoded(tmp_path, fitted):
    x = make_logits((23, 8), seed=2)
    out = str(tmp_path / "w.vqsl")
    with slcodec.Writer(out, "test-fitted", classes=8, fit_sample=10) as w:
        assert w.needs_fit and w.fit_sample == 10
        w.append(x[:4])
        w.append(x[4:8])
        assert not w.fitted and w.count == 0 and w._held_rows == 8   # held, bounded by the sample
        w.append(x[8:14])
        assert w.fitted and w.count == 14 and w._held_rows == 0
        w.append(x[14:])
    assert len(fitted.samples) == 1
    np.testing.assert_array_equal(fitted.samples[0].numpy(), x[:10])
    with slcodec.open(out) as r:
        np.testing.assert_array_equal(r.decode(None, as_="logits").numpy(), x)
    with Container.open(out) as c:
        np.testing.assert_array_equal(c.read_array("params/mean"), torch.from_numpy(x[:10]).mean(dim=0).numpy())


def test_close_fits_on_what_was_held_when_the_sample_never_fills(tmp_path, fitted):
    x = make_logits((5, 8), seed=3)
    out = str(tmp_path / "w.vqsl")
    with slcodec.Writer(out, "test-fitted", classes=8, fit_sample=100) as w:
        w.append(x[:2])
        w.append(x[2:])
        assert not w.fitted
    np.testing.assert_array_equal(fitted.samples[0].numpy(), x)
    with slcodec.open(out) as r:
        np.testing.assert_array_equal(r.decode(None, as_="logits").numpy(), x)


def test_explicit_fit_and_held_rows(tmp_path, fitted):
    x = make_logits((12, 8), seed=4)
    out = str(tmp_path / "w.vqsl")
    with slcodec.Writer(out, "test-fitted", classes=8, fit_sample=100) as w:
        w.append(x[:3])
        w.fit(x[::2])
        assert w.count == 3
        with pytest.raises(ValueError, match="already fitted"):
            w.fit(x)
        w.append(x[3:])
    np.testing.assert_array_equal(fitted.samples[0].numpy(), x[::2])
    with slcodec.open(out) as r:
        np.testing.assert_array_equal(r.decode(None, as_="logits").numpy(), x)


def test_held_rows_are_copies(tmp_path, fitted):
    buf = make_logits((4, 8), seed=5)
    first = buf.copy()
    out = str(tmp_path / "w.vqsl")
    with slcodec.Writer(out, "test-fitted", classes=8, fit_sample=8) as w:
        w.append(buf)
        buf[:] = 0  # a teacher loop reuses its output buffer
        w.append(buf)
    with slcodec.open(out) as r:
        np.testing.assert_array_equal(r.decode(slice(0, 4), as_="logits").numpy(), first)


def test_encode_fits_on_evenly_spaced_rows(tmp_path, fitted):
    x = make_logits((101, 8), seed=6)
    slcodec.encode(x, str(tmp_path / "e.vqsl"), codec="test-fitted", fit_sample=11)
    np.testing.assert_array_equal(fitted.samples[0].numpy(), x[::10])
    fitted.samples.clear()
    slcodec.encode(x[:7], str(tmp_path / "f.vqsl"), codec="test-fitted", fit_sample=11)
    np.testing.assert_array_equal(fitted.samples[0].numpy(), x[:7])


def test_codecs_without_parameters_hold_nothing(tmp_path):
    with slcodec.Writer(str(tmp_path / "w.vqsl"), "topk", classes=8, k=2) as w:
        assert not w.needs_fit
        w.append(make_logits((3, 8)))
        assert w.fitted and w.count == 3 and w._held == []


def test_fit_sample_is_the_codec_option_when_it_has_one(tmp_path):
    w = slcodec.Writer(str(tmp_path / "w.vqsl"), "vq", classes=8, fit_sample=123)
    assert w.fit_sample == 123 and w.codec.config["fit_sample"] == 123
    w.abort()
    w = slcodec.Writer(str(tmp_path / "w.vqsl"), "vq", classes=8)
    assert w.fit_sample == w.codec.config["fit_sample"]
    w.abort()
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- failure and atomicity
def test_exception_inside_the_block_leaves_the_old_file_and_nothing_else(tmp_path):
    out = tmp_path / "out.vqsl"
    out.write_bytes(b"precious")
    with pytest.raises(RuntimeError, match="teacher crashed"):
        with slcodec.Writer(str(out), "fp16", classes=8) as w:
            w.append(make_logits((5000, 8)))
            assert os.listdir(tmp_path) == ["out.vqsl"]  # spools have no name
            raise RuntimeError("teacher crashed")
    assert out.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["out.vqsl"]
    with pytest.raises(ValueError, match="aborted"):
        w.append(make_logits((1, 8)))


def test_encode_failure_aborts(tmp_path):
    out = tmp_path / "out.vqsl"
    out.write_bytes(b"precious")
    w = slcodec.Writer(str(out), "fp16", classes=8)
    w.append(make_logits((3, 8)))
    with pytest.raises(ConfigError, match="float16 range"):
        w.append(make_logits((3, 8)) * 1e6)
    with pytest.raises(ValueError, match="aborted"):
        w.close()
    assert out.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["out.vqsl"]


def test_bad_rows_are_refused_and_the_writer_goes_on(tmp_path):
    out = str(tmp_path / "w.vqsl")
    x = make_logits((6, 8))
    with slcodec.Writer(out, "fp32", classes=8, shape=[2, 3]) as w:
        w.append(x[:2])
        bad = x[2:4].copy()
        bad[1, 3] = np.nan
        with pytest.raises(InputError, match="label row 3"):
            w.append(bad)
        with pytest.raises(InputError, match="expected"):
            w.append(make_logits((2, 9)))
        with pytest.raises(InputError, match="floating point"):
            w.append(np.zeros((2, 8), dtype=np.int32))
        with pytest.raises(ConfigError, match="declared shape"):
            w.append(make_logits((5, 8)))
        w.append(x[2:])
    with slcodec.open(out) as r:
        assert r.shape == (2, 3, 8)
        np.testing.assert_array_equal(r.decode(None, as_="logits").numpy().reshape(6, 8), x)


def test_close_checks_count_and_emptiness(tmp_path):
    w = slcodec.Writer(str(tmp_path / "a.vqsl"), "fp32", classes=8, shape=[4])
    w.append(make_logits((3, 8)))
    with pytest.raises(ConfigError, match="needs 4"):
        w.close()
    w = slcodec.Writer(str(tmp_path / "b.vqsl"), "fp32", classes=8)
    with pytest.raises(ConfigError, match="no labels"):
        w.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs,err", [
    (dict(classes=1), ConfigError), (dict(classes=8, source_kind="softmax"), ConfigError),
    (dict(classes=8, shape=[0]), ConfigError), (dict(classes=8, shape=[2, 2, 2]), ConfigError),
    (dict(classes=8, fit_sample=0), ConfigError), (dict(classes=8, k=3), ConfigError),
    (dict(classes=8, device="tpu"), ConfigError),
], ids=repr)
def test_bad_arguments(tmp_path, kwargs, err):
    with pytest.raises(err):
        slcodec.Writer(str(tmp_path / "w.vqsl"), "fp16", **kwargs)
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        slcodec.Writer(str(tmp_path / "no" / "w.vqsl"), "fp16", classes=8)


def test_sigkill_while_writing_leaves_no_file(tmp_path):
    out = tmp_path / "out.vqsl"
    out.write_bytes(b"precious")
    script = textwrap.dedent(f"""
        import sys, time, numpy as np, slcodec
        w = slcodec.Writer({str(out)!r}, "fp16", classes=64)
        for i in range(3):
            w.append(np.random.default_rng(i).normal(size=(20000, 64)).astype(np.float32))
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=str(tmp_path))
    try:
        assert proc.stdout.readline().strip() == b"ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert out.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["out.vqsl"]


# --------------------------------------------------------------------------- extra sections
def test_extra_streams_and_msgpack(tmp_path):
    out = str(tmp_path / "w.vqsl")
    with slcodec.Writer(out, "fp16", classes=8, augment={"mode": "explicit", "fields": ["flip"]}) as w:
        flip = w.add_stream("augment/flip", "uint8", 1)
        flip.append(np.array([1, 0, 1], np.uint8))
        w.add_msgpack("augment/info", {"a": 1})
        for name in ("streams/x", "params/y", "augment", "provenance", "augment/flip"):
            with pytest.raises(ValueError):
                w.add_stream(name, "uint8", 1)
        w.append(make_logits((3, 8)))
    with Container.open(out) as c:
        assert c.read_msgpack("augment") == {"mode": "explicit", "fields": ["flip"]}
        assert c.read_msgpack("augment/info") == {"a": 1}
        assert c.stream("augment/flip").read_rows(0, 3)[:, 0].tolist() == [1, 0, 1]
        assert c.verify() == []


# --------------------------------------------------------------------------- spooled streams
@given(dtype=st.sampled_from(["uint8", "uint16", "float16", "float32"]), width=st.integers(1, 5),
       chunk=st.integers(1, 9), sizes=st.lists(st.integers(0, 13), max_size=6), coding=st.sampled_from(["zstd", "raw"]))
def test_spooled_builder_writes_the_same_bytes(tmp_path_factory, dtype, width, chunk, sizes, coding):
    tmp = tmp_path_factory.mktemp("spool")
    rng = np.random.default_rng(sum(sizes) + width)
    a = StreamBuilder(dtype, width, chunk_rows=chunk, coding=coding)
    b = SpooledStreamBuilder(dtype, width, chunk_rows=chunk, coding=coding, folder=str(tmp))
    for n in sizes:
        rows = (rng.random((n, width)) * 200).astype(dtype)
        a.append(rows)
        b.append(rows)
    assert b._chunks == []  # nothing kept in memory but the index
    paths = []
    for name, builder in (("a", a), ("b", b)):
        p = str(tmp / f"{name}.vqsl")
        with ContainerWriter(p) as w:
            w.add_stream("streams/s", builder)
            w.commit({"labels": {"count": 1, "shape": [1, 2], "classes": 2, "source_kind": "logits"},
                      "codec": {"id": "fp32", "config": {}}})
        paths.append(p)
    b.close()
    assert open(paths[0], "rb").read() == open(paths[1], "rb").read()
    assert sorted(os.listdir(tmp)) == ["a.vqsl", "b.vqsl"]


# --------------------------------------------------------------------------- RowReader and larger-than-memory inputs
def test_row_reader_reads_memmaps_with_file_reads(tmp_path):
    x = make_logits((50, 6, 7), dtype=np.float16)
    p = str(tmp_path / "x.npy")
    np.save(p, x)
    mm = np.load(p, mmap_mode="r")
    rows = mm.reshape(-1, 7)
    with RowReader(rows) as rr:
        assert rr.uses_file_reads
        np.testing.assert_array_equal(rr.read(7, 133), x.reshape(-1, 7)[7:133])
        idx = np.array([0, 1, 2, 9, 10, 299])
        np.testing.assert_array_equal(rr.take(idx), x.reshape(-1, 7)[idx])
        np.testing.assert_array_equal(fit_rows(300, 4), [0, 100, 199, 299])
        np.testing.assert_array_equal(rr.take(fit_rows(300, 4)), x.reshape(-1, 7)[[0, 100, 199, 299]])
    # a map with an offset (as slcodec maps contiguous .h5 datasets) and a view that starts later
    raw = str(tmp_path / "raw.bin")
    with open(raw, "wb") as f:
        f.write(b"\0" * 5000 + x.tobytes())
    mm2 = np.memmap(raw, mode="r", dtype=np.float16, shape=(300, 7), offset=5000)
    with RowReader(mm2) as rr:
        assert rr.uses_file_reads
        np.testing.assert_array_equal(rr.read(0, 300), x.reshape(-1, 7))
    with RowReader(mm2[10:]) as rr:
        assert rr.uses_file_reads
        np.testing.assert_array_equal(rr.read(0, 5), x.reshape(-1, 7)[10:15])
    cow = np.load(p, mmap_mode="c").reshape(-1, 7)
    cow[0, 0] = 99  # private change, not in the file
    with RowReader(cow) as rr:
        assert not rr.uses_file_reads
        assert rr.read(0, 1)[0, 0] == 99
    with RowReader(x.reshape(-1, 7)) as rr:
        assert not rr.uses_file_reads
        np.testing.assert_array_equal(rr.read(3, 9), x.reshape(-1, 7)[3:9])


def test_encode_of_a_memmap_equals_encode_of_the_array(tmp_path, monkeypatch):
    x = make_logits((40, 6, 9), seed=8, dtype=np.float16)
    p = str(tmp_path / "x.npy")
    np.save(p, x)
    monkeypatch.setattr(encode_mod, "ENCODE_BLOCK_BYTES", 36 * 16)  # blocks of 16 rows
    src = as_source(np.load(p, mmap_mode="r"), path=p)
    a, b = str(tmp_path / "a.vqsl"), str(tmp_path / "b.vqsl")
    slcodec.encode(src, a, codec="topk", k=3)
    slcodec.encode(x, b, codec="topk", k=3)
    pa, _ = payloads(a)
    pb, _ = payloads(b)
    for name in pa:
        if name != "provenance":
            assert pa[name] == pb[name]
    assert encode_mod.encode_block_rows(9, 65536) == 16


def test_encode_block_rows():
    assert encode_mod.encode_block_rows(1000, 65536) == 8192
    assert encode_mod.encode_block_rows(1000, 100) == 100
    assert encode_mod.encode_block_rows(10, 65536) == 65536
    assert encode_mod.encode_block_rows(1 << 24, 65536) == 1


# --------------------------------------------------------------------------- outputs: temporaries and permissions
def _cli(*args, umask=None, prelude="", cwd=None):
    """Run the command line in a fresh interpreter (optionally under ``umask``, after ``prelude``)."""
    env = dict(os.environ)
    env.pop("SLCODEC_DEBUG", None)
    code = prelude + "\nimport sys\nfrom slcodec.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300, preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def _hidden(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


# A full disk, as a BufferedWriter meets it: every write of the file's raw stream fails with
# ENOSPC, so bytes stay buffered and the flush in close() fails again.
FULL_DISK = textwrap.dedent("""
    import errno, io, os
    class _FullRaw(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")
    _fdopen = os.fdopen
    def _full_fdopen(fd, mode="r", *args, **kwargs):
        if "b" in mode and os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            return io.BufferedRandom(_FullRaw(fd, "r+"))
        return _fdopen(fd, mode, *args, **kwargs)
    os.fdopen = _full_fdopen
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_full_disk_during_encode_leaves_the_old_output_and_no_temporary_file(tmp_path):
    src = tmp_path / "x.npy"
    np.save(src, make_logits((40, 8)))
    out = tmp_path / "out.vqsl"
    out.write_bytes(b"precious")
    r = _cli("encode", src, "-o", out, "--codec", "fp16", "-q", prelude=FULL_DISK)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "No space left on device" in r.stderr and "Traceback" not in r.stderr
    assert out.read_bytes() == b"precious"
    assert _hidden(tmp_path) == []  # the temporary file is removed though closing it failed


def test_a_killed_sharded_encode_leaves_temporaries_the_next_encode_removes(tmp_path):
    out = tmp_path / "set.vqsl"
    src = tmp_path / "x.npy"
    np.save(src, make_logits((35, 8)))
    script = textwrap.dedent(f"""
        import os, signal, numpy as np, slcodec
        w = slcodec.Writer({str(out)!r}, "fp16", classes=8, shard_rows=10)
        w.append(np.load({str(src)!r}))  # three complete shards, in temporary files until close
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    stale = _hidden(tmp_path)
    assert len(stale) == 3 and all(n.startswith(".set-") and n.endswith(".tmp") for n in stale), stale
    # temporaries that must stay: a live process's (this one), and names of no known scheme
    from slcodec.format.atomic import temp_name
    live = tmp_path / temp_name("set-0123abcd-00000.vqsl")
    live.write_bytes(b"in progress")
    other = tmp_path / ".set.vqsl.abc123.tmp"
    other.write_bytes(b"someone else's")
    r = _cli("encode", src, "-o", out, "--codec", "fp16", "--shard-rows", "20", "-q")
    assert r.returncode == 0, r.stderr
    assert _hidden(tmp_path) == sorted([live.name, other.name])
    with slcodec.open(str(out)) as reader:
        assert len(reader.entries) == 2
        assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "set.vqsl", "x.npy",
                                                       *[e["file"] for e in reader.entries]])


def test_aborting_after_a_failed_flush_removes_the_temporary_file(tmp_path):
    import errno

    class FullDisk:
        """A file object whose buffered bytes can never be written."""
        def __init__(self, f):
            self.f, self.closed = f, False

        def write(self, b):
            return len(b)

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.f.close()
            self.closed = True
            self.flush()

    w = ContainerWriter(str(tmp_path / "out.vqsl"))
    w._f = w._out.file = FullDisk(w._f)
    w.add_array("a", np.zeros(4, np.float32))
    assert len(os.listdir(tmp_path)) == 1
    w.abort()  # the write failed: throw away what was made, whatever closing says
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_output_gets_the_mode_a_plain_open_gives(tmp_path, umask):
    src = tmp_path / "x.npy"
    np.save(src, make_logits((6, 8)))
    vq = tmp_path / "x.vqsl"
    assert _cli("encode", src, "-o", vq, "--codec", "fp16", "-q", umask=umask).returncode == 0
    want = 0o666 & ~umask
    assert os.stat(vq).st_mode & 0o777 == want
    for name in ("d.pt", "d.npy", "d.h5"):
        r = _cli("decode", vq, "-o", tmp_path / name, "-q", umask=umask)
        assert r.returncode == 0, r.stderr
        assert os.stat(tmp_path / name).st_mode & 0o777 == want, name
    # a replaced output keeps its mode, as a truncating open() would
    os.chmod(tmp_path / "d.npy", 0o604)
    assert _cli("decode", vq, "-o", tmp_path / "d.npy", "-q", umask=umask).returncode == 0
    assert os.stat(tmp_path / "d.npy").st_mode & 0o777 == 0o604
    # an exported folder gets what a plain mkdir gives
    sys.path.insert(0, os.path.dirname(__file__))
    try:
        from test_importers import make_sre2l
    finally:
        sys.path.pop(0)
    from slcodec.frameworks.importers import import_folder
    make_sre2l(str(tmp_path / "sre2l"))
    imported = str(tmp_path / "i.vqsl")
    import_folder(str(tmp_path / "sre2l"), imported, "sre2l", codec="fp16")
    r = _cli("export", imported, "-o", tmp_path / "back", "-q", umask=umask)
    assert r.returncode == 0, r.stderr
    assert os.stat(tmp_path / "back").st_mode & 0o777 == 0o777 & ~umask
    assert _hidden(tmp_path) == []
