"""The slcodec command line: end to end in a subprocess, error handling in process."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

import slcodec
from slcodec.cli.commands import DEMO_FIXTURE
from slcodec.format.container import Container
from slcodec.pipeline.inputs import load_labels

MAGIC = b"\x89VQS\r\n\x1a\n"


def make_logits(shape, seed=0, dtype=np.float32):
    return (np.random.default_rng(seed).normal(size=shape) * 3).astype(dtype)


def run_cli(*args, cwd=None):
    env = dict(os.environ)
    env.pop("SLCODEC_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "slcodec", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("SLCODEC_DEBUG", raising=False)


def assert_one_line_error(rc, err, expected_rc=2):
    assert rc == expected_rc, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("slcodec: error:"), err


def dotfiles(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


@pytest.fixture
def x16_npy(tmp_path):
    x = make_logits((12, 16), dtype=np.float16)
    path = tmp_path / "x16.npy"
    np.save(path, x)
    return path, x


@pytest.fixture
def x32_npy(tmp_path):
    x = make_logits((3, 5, 20), seed=4)
    path = tmp_path / "x32.npy"
    np.save(path, x)
    return path, x


# --------------------------------------------------------------------------- end to end (subprocess)
def test_subprocess_encode_stats_json(tmp_path, x32_npy):
    src, x = x32_npy  # float32 .npy: memory-mapped, read-only
    out = tmp_path / "x.vqsl"
    enc = run_cli("encode", src, "-o", out, "--codec", "fp32", "-q")
    assert enc.returncode == 0, enc.stderr
    assert "Traceback" not in enc.stderr
    assert out.read_bytes()[:8] == MAGIC

    r = run_cli("stats", out, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    size = os.path.getsize(out)
    assert s["file_bytes"] == size
    assert sum(e["bytes"] for e in s["sections"]) == size
    assert s["labels"] == 15 and s["classes"] == 20 and s["codec"] == "fp32"
    assert s["bits_per_label"] == pytest.approx(size * 8 / 15)

    with slcodec.open(out) as reader:
        np.testing.assert_array_equal(reader.decode(None, as_="logits").numpy(), x)
    assert sorted(os.listdir(tmp_path)) == ["x.vqsl", "x32.npy"]
    # -q: a successful encode prints nothing at all (no library warnings either)
    assert enc.stderr == ""
    assert enc.stdout == ""


def test_subprocess_encode_reports_input(tmp_path, x16_npy):
    src, _ = x16_npy
    out = tmp_path / "x.vqsl"
    r = run_cli("encode", src, "-o", out, "--codec", "fp16")
    assert r.returncode == 0, r.stderr
    assert "read as LOGITS" in r.stderr
    assert f"wrote {out}" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("verify", out)
    assert r.returncode == 0
    assert r.stdout.strip() == f"{out}: OK"


def test_subprocess_version():
    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"slcodec {slcodec.__version__}"


def test_subprocess_error_is_one_line(tmp_path):
    x = make_logits((12, 16))
    x[5, 1] = np.nan
    src = tmp_path / "nan.npy"
    np.save(src, x)
    out = tmp_path / "out.vqsl"
    r = run_cli("encode", src, "-o", out, "--codec", "fp32")
    assert_one_line_error(r.returncode, r.stderr)
    assert str(src) in r.stderr and "NaN" in r.stderr
    assert not out.exists()
    assert dotfiles(tmp_path) == []


# --------------------------------------------------------------------------- commands (in process)
def test_encode_verify_stats_info(cli, tmp_path, x32_npy):
    src, x = x32_npy
    out = tmp_path / "x.vqsl"
    rc, _, err = cli("encode", src, "-o", out, "--codec", "fp32", "--teacher", "resnet18")
    assert rc == 0, err
    assert "wrote" in err and "bits/label" in err

    rc, stdout, _ = cli("verify", out)
    assert rc == 0
    assert stdout.strip() == f"{out}: OK"

    rc, stdout, _ = cli("verify", "--structure-only", out)
    assert rc == 0 and stdout.strip().endswith(": OK")

    rc, stdout, _ = cli("stats", out)
    assert rc == 0
    assert "bits/label" in stdout
    assert "streams/values" in stdout

    rc, stdout, _ = cli("stats", out, "--json")
    assert rc == 0
    s = json.loads(stdout)
    size = os.path.getsize(out)
    assert s["file_bytes"] == size
    assert sum(e["bytes"] for e in s["sections"]) == size
    assert s["labels"] == 15
    assert s["bits_per_label"] == size * 8 / 15
    assert s["shape"] == [3, 5, 20]
    assert s["images"] == 3 and s["augmentations_per_image"] == 5
    assert s["bits_per_image"] == size * 8 / 3
    assert s["groups"]["label_streams"]["bytes"] == next(e["bytes"] for e in s["sections"]
                                                         if e["name"] == "streams/values")
    assert s["fixed_bytes"] == size - s["groups"]["label_streams"]["bytes"]
    assert s["baselines"]["fp32"]["bits_per_label"] == 32 * 20

    rc, stdout, _ = cli("info", out)
    assert rc == 0
    assert "codec:  fp32" in stdout
    assert "streams/values" in stdout
    assert "resnet18" in stdout

    rc, stdout, _ = cli("info", out, "--json")
    assert rc == 0
    info = json.loads(stdout)
    assert info["header"]["labels"]["shape"] == [3, 5, 20]
    assert info["header"]["codec"]["id"] == "fp32"
    assert info["provenance"]["teacher"] == "resnet18"
    assert info["format_version"].startswith("1.")


def test_stats_reference_fp32(cli, tmp_path, x32_npy):
    src, _ = x32_npy
    out = tmp_path / "x.vqsl"
    assert cli("encode", src, "-o", out, "--codec", "fp32", "-q")[0] == 0
    rc, stdout, err = cli("stats", out, "--json", "--reference", src)
    assert rc == 0, err
    f = json.loads(stdout)["fidelity"]
    assert f["labels"] == 15
    assert f["top1_agreement"] == 1.0
    assert f["top5_overlap"] == 1.0
    assert set(f["kl"]) == {"1", "4"}   # stats --reference reports T = 1 and 4 unless told otherwise
    assert abs(f["kl"]["1"]) < 1e-6
    rc, stdout, _ = cli("stats", out, "--reference", src)
    assert rc == 0
    assert "top-1 agreement: 1.0000" in stdout


def test_stats_reference_topk_is_lossy(cli, tmp_path, x32_npy):
    src, _ = x32_npy
    out = tmp_path / "x.vqsl"
    assert cli("encode", src, "-o", out, "--codec", "topk", "--k", "2", "-q")[0] == 0
    rc, stdout, _ = cli("stats", out, "--json", "--reference", src)
    assert rc == 0
    s = json.loads(stdout)
    assert s["codec_config"] == {"k": 2}
    assert s["fidelity"]["top1_agreement"] == 1.0
    assert s["fidelity"]["kl"]["1"] > 1e-3


@pytest.mark.parametrize("name,fmt", [("out.pt", None), ("out.npy", None), ("out.h5", None), ("out.hdf5", None),
                                      ("out.bin", "npy"), ("out.data", "h5"), ("out.xyz", "pt"),
                                      ("out.pth", None)])
def test_decode_formats_fp16_bit_exact(cli, tmp_path, x16_npy, name, fmt):
    src, x = x16_npy
    vq = tmp_path / "x.vqsl"
    assert cli("encode", src, "-o", vq, "--codec", "fp16", "-q")[0] == 0
    out = tmp_path / name
    args = ["decode", vq, "-o", out, "--as", "logits"] + (["--format", fmt] if fmt else [])
    rc, _, err = cli(*args)
    assert rc == 0, err
    assert "wrote" in err
    expected_fmt = fmt or {".npy": "npy", ".h5": "h5", ".hdf5": "h5", ".pt": "pt", ".pth": "pt"}[out.suffix]
    if expected_fmt == "pt":
        values = torch.load(out, weights_only=True).numpy()
    elif expected_fmt == "npy":
        values = np.load(out, allow_pickle=False)
    else:
        with h5py.File(out, "r") as f:
            assert list(f) == ["logits"]
            values = f["logits"][()]
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, x.astype(np.float32))
    assert dotfiles(tmp_path) == []


def test_decode_probs_temperature_and_reload(cli, tmp_path, x32_npy):
    src, x = x32_npy
    vq = tmp_path / "x.vqsl"
    assert cli("encode", src, "-o", vq, "--codec", "fp32", "-q")[0] == 0
    out = tmp_path / "p.h5"
    assert cli("decode", vq, "-o", out, "--temperature", "2", "-q")[0] == 0
    back = load_labels(str(out))  # the dataset is named 'probs'
    assert back.kind == "probs"
    assert back.shape == (3, 5, 20)
    torch.testing.assert_close(torch.from_numpy(np.array(back.array)),
                               torch.softmax(torch.from_numpy(x) / 2, dim=-1), rtol=1e-6, atol=1e-7)
    out = tmp_path / "lp.pt"
    assert cli("decode", vq, "-o", out, "--as", "log_probs", "-q")[0] == 0
    torch.testing.assert_close(torch.load(out, weights_only=True), torch.log_softmax(torch.from_numpy(x), dim=-1),
                               rtol=1e-6, atol=1e-6)


def test_encode_h5_and_npz_key_inputs(cli, tmp_path):
    x = make_logits((12, 16), seed=8)
    h5 = tmp_path / "in.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("a/teacher", data=x)
        f.create_dataset("b", data=x + 1)
    out = tmp_path / "h.vqsl"
    rc, _, err = cli("encode", f"{h5}:a/teacher", "-o", out, "--codec", "fp32", "-q")
    assert rc == 0, err
    with slcodec.open(out) as r:
        np.testing.assert_array_equal(r.decode(None, as_="logits").numpy(), x)
    npz = tmp_path / "in.npz"
    np.savez(npz, first=x, second=x * 2)
    rc, _, err = cli("encode", f"{npz}:second", "-o", out, "--codec", "fp32", "-q")
    assert rc == 0, err
    with slcodec.open(out) as r:
        np.testing.assert_array_equal(r.decode(None, as_="logits").numpy(), x * 2)


def test_encode_input_kind_forced(cli, tmp_path):
    p = torch.softmax(torch.from_numpy(make_logits((12, 16))), 1).numpy()
    src = tmp_path / "p.npy"
    np.save(src, p)
    out = tmp_path / "p.vqsl"
    rc, _, err = cli("encode", src, "-o", out, "--codec", "fp32")
    assert rc == 0 and "read as PROBS" in err
    with slcodec.open(out) as r:
        assert r.source_kind == "probs"
    rc, _, err = cli("encode", src, "-o", out, "--codec", "fp32", "--input-kind", "logits")
    assert rc == 0 and "read as LOGITS" in err
    with slcodec.open(out) as r:
        assert r.source_kind == "logits"


def test_verify_several_files(cli, tmp_path, x16_npy):
    src, _ = x16_npy
    good = tmp_path / "good.vqsl"
    assert cli("encode", src, "-o", good, "--codec", "fp16", "-q")[0] == 0
    bad = tmp_path / "bad.vqsl"
    bad.write_bytes(good.read_bytes()[:-1])
    rc, stdout, _ = cli("verify", good, bad)
    assert rc == 1
    lines = stdout.splitlines()
    assert lines[0] == f"{good}: OK"
    assert lines[1].startswith(f"{bad}: INVALID")


def test_help(cli):
    rc, stdout, _ = cli("--help")
    assert rc == 0
    assert "encode" in stdout and "verify" in stdout
    rc, stdout, _ = cli("encode", "--help")
    assert rc == 0
    assert "--k" in stdout and "--input-kind" in stdout


def test_demo(cli, tmp_path):
    assert os.path.exists(DEMO_FIXTURE)
    rc, stdout, err = cli("demo", "--codecs", "fp16", "topk", "--output-dir", tmp_path, "--device", "cpu", "-q")
    assert rc == 0, err
    assert stdout.count("top-1 agreement") == 2
    assert "== codec fp16" in stdout and "== codec topk" in stdout
    for codec in ("fp16", "topk"):
        path = tmp_path / f"lite0_8x64.{codec}.vqsl"
        with Container.open(path) as c:
            assert c.verify() == []
            assert c.header["labels"]["shape"] == [8, 64, 1000]
            assert c.header["codec"]["id"] == codec


def test_demo_missing_output_dir(cli, tmp_path):
    rc, _, err = cli("demo", "--codecs", "fp16", "--output-dir", tmp_path / "nope")
    assert_one_line_error(rc, err)


# --------------------------------------------------------------------------- errors (in process)
def _write_npy(arr):
    return lambda p: np.save(p, arr)


def _nan():
    x = make_logits((12, 16))
    x[2, 3] = np.nan
    return x


def _truncated(save, suffix):
    def write(path):
        full = str(path) + ".full" + suffix
        save(full)
        data = open(full, "rb").read()
        os.unlink(full)
        open(path, "wb").write(data[:len(data) // 2])
    return write


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


INPUT_ERRORS = [
    ("nan.npy", _write_npy(_nan())),
    ("rank1.npy", _write_npy(make_logits((16,)))),
    ("c1.npy", _write_npy(make_logits((12, 1)))),
    ("int.npy", _write_npy(np.ones((12, 16), dtype=np.int32))),
    ("trunc.npy", _truncated(lambda p: np.save(p, make_logits((12, 16))), ".npy")),
    ("trunc.pt", _truncated(lambda p: torch.save(torch.from_numpy(make_logits((12, 16))), p), ".pt")),
    ("trunc.npz", _truncated(lambda p: np.savez(p, logits=make_logits((12, 16))), ".npz")),
    ("list.pt", lambda p: torch.save([1, 2, 3], p)),
    ("labels.csv", lambda p: open(p, "w").write("1,2\n")),
]


@pytest.mark.parametrize("name,write", INPUT_ERRORS, ids=[c[0] for c in INPUT_ERRORS])
def test_encode_bad_input(cli, tmp_path, name, write):
    src = tmp_path / name
    write(src)
    out = tmp_path / "out.vqsl"
    rc, stdout, err = cli("encode", src, "-o", out, "--codec", "fp32")
    assert_one_line_error(rc, err)
    assert str(src) in err
    assert stdout == ""
    assert not out.exists()
    assert dotfiles(tmp_path) == []


def test_encode_pickle_payload(cli, tmp_path):
    marker = tmp_path / "marker"
    src = tmp_path / "evil.pt"
    torch.save({"logits": torch.zeros(12, 16), "x": _Payload(str(marker))}, src)
    out = tmp_path / "out.vqsl"
    rc, _, err = cli("encode", src, "-o", out, "--codec", "fp32")
    assert_one_line_error(rc, err)
    assert str(src) in err
    assert not marker.exists()
    assert not out.exists()


def test_encode_missing_input(cli, tmp_path):
    src = tmp_path / "missing.npy"
    rc, _, err = cli("encode", src, "-o", tmp_path / "out.vqsl", "--codec", "fp32")
    assert_one_line_error(rc, err)
    assert str(src) in err


def test_encode_input_is_folder(cli, tmp_path):
    folder = tmp_path / "labels.npy"
    folder.mkdir()
    rc, _, err = cli("encode", folder, "-o", tmp_path / "out.vqsl", "--codec", "fp32")
    assert_one_line_error(rc, err)
    assert "folder" in err


def test_output_in_missing_folder(cli, tmp_path, x16_npy):
    src, _ = x16_npy
    out = tmp_path / "no" / "such" / "x.vqsl"
    rc, _, err = cli("encode", src, "-o", out, "--codec", "fp16")
    assert_one_line_error(rc, err)
    assert "does not exist" in err
    good = tmp_path / "good.vqsl"
    assert cli("encode", src, "-o", good, "--codec", "fp16", "-q")[0] == 0
    rc, _, err = cli("decode", good, "-o", out)
    assert_one_line_error(rc, err)
    assert not (tmp_path / "no").exists()


def test_output_is_a_folder(cli, tmp_path, x16_npy):
    src, _ = x16_npy
    folder = tmp_path / "out.vqsl"
    folder.mkdir()
    rc, _, err = cli("encode", src, "-o", folder, "--codec", "fp16")
    assert_one_line_error(rc, err)
    assert os.listdir(folder) == []


@pytest.mark.parametrize("extra,fragment", [
    (["--codec", "no-such-codec"], "unknown codec"),
    (["--codec", "fp16", "--bogus-flag"], "unrecognized arguments"),
    (["--codec", "fp16", "--k", "5"], "--k is not an option of codec 'fp16'"),
    (["--codec", "topk", "--k", "0"], "k must be"),
    (["--codec", "topk", "--k", "five"], "invalid int value"),
    (["--codec", "topk", "--k", "17"], "exceeds"),
    (["--codec", "fp16", "--input-kind", "maybe"], "invalid choice"),
    (["--codec", "fp16", "--input-kind", "probs"], "negative"),
    (["--codec", "fp16", "--device", "tpu"], "device"),
    (["--codec", "fp16", "--seed", "x"], "invalid int value"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_encode_usage_errors(cli, tmp_path, x16_npy, extra, fragment):
    src, _ = x16_npy
    out = tmp_path / "out.vqsl"
    rc, _, err = cli("encode", src, "-o", out, "-q", *extra)
    assert_one_line_error(rc, err)
    assert fragment in err
    assert not out.exists()
    assert dotfiles(tmp_path) == []


@pytest.mark.parametrize("args", [[], ["encode"], ["frobnicate"], ["decode", "x.vqsl"], ["verify"]], ids=repr)
def test_argument_errors(cli, args):
    rc, _, err = cli(*args)
    assert_one_line_error(rc, err)


def test_decode_temperature_with_logits(cli, tmp_path, x16_npy):
    src, _ = x16_npy
    vq = tmp_path / "x.vqsl"
    assert cli("encode", src, "-o", vq, "--codec", "fp16", "-q")[0] == 0
    out = tmp_path / "out.pt"
    rc, _, err = cli("decode", vq, "-o", out, "--as", "logits", "--temperature", "2")
    assert_one_line_error(rc, err)
    assert "temperature" in err
    assert not out.exists()


def test_stats_reference_shape_mismatch(cli, tmp_path, x16_npy):
    src, _ = x16_npy
    vq = tmp_path / "x.vqsl"
    assert cli("encode", src, "-o", vq, "--codec", "fp16", "-q")[0] == 0
    other = tmp_path / "other.npy"
    np.save(other, make_logits((6, 16)))
    rc, stdout, err = cli("stats", vq, "--reference", other)
    assert_one_line_error(rc, err)
    assert "shape" in err
    assert stdout == ""


@pytest.mark.parametrize("command", ["decode", "stats", "info", "verify"])
def test_missing_vqsl(cli, tmp_path, command):
    path = tmp_path / "none.vqsl"
    args = [command, path] + (["-o", tmp_path / "o.pt"] if command == "decode" else [])
    rc, _, err = cli(*args)
    assert_one_line_error(rc, err)
    assert str(path) in err


# --------------------------------------------------------------------------- corrupt containers
def _corruptions(good: bytes, stream_offset: int):
    def flip(data, pos):
        b = bytearray(data)
        b[pos] ^= 0xFF
        return bytes(b)
    return {
        "truncated": good[:-10],
        "padded": good + b"\0" * 64,
        "bad-magic": b"X" + good[1:],
        "preamble-crc": flip(good, 20),
        "header-crc": flip(good, len(good) - 20),
        "empty": b"",
        "short": good[:30],
        "not-vqsl": b"\x93NUMPY" + b"\0" * 200,
    }


CORRUPTIONS = ["truncated", "padded", "bad-magic", "preamble-crc", "header-crc", "empty", "short", "not-vqsl"]


@pytest.fixture
def good_vqsl(cli, tmp_path, x32_npy):
    src, _ = x32_npy
    path = tmp_path / "good.vqsl"
    assert cli("encode", src, "-o", path, "--codec", "fp32", "-q")[0] == 0
    with Container.open(path) as c:
        stream_offset = c.sections["streams/values"]["offset"]
    return path, path.read_bytes(), stream_offset


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_container(cli, tmp_path, good_vqsl, kind):
    _, good, offset = good_vqsl
    bad = tmp_path / "bad.vqsl"
    bad.write_bytes(_corruptions(good, offset)[kind])
    out = tmp_path / "out.pt"
    for args in (["decode", bad, "-o", out], ["stats", bad], ["stats", "--json", bad], ["info", bad],
                 ["info", "--json", bad]):
        rc, stdout, err = cli(*args)
        assert_one_line_error(rc, err)
        assert str(bad) in err
        assert stdout == ""
    assert not out.exists()
    rc, stdout, err = cli("verify", bad)
    assert rc == 1
    assert stdout.startswith(f"{bad}: INVALID")
    assert "Traceback" not in err


def test_damaged_stream_chunk(cli, tmp_path, good_vqsl):
    _, good, offset = good_vqsl
    b = bytearray(good)
    b[offset + 8] ^= 0xFF
    bad = tmp_path / "bad.vqsl"
    bad.write_bytes(bytes(b))
    out = tmp_path / "out.npy"
    rc, _, err = cli("decode", bad, "-o", out)
    assert_one_line_error(rc, err)
    assert "checksum" in err
    assert not out.exists()
    rc, stdout, _ = cli("verify", bad)
    assert rc == 1
    assert "INVALID" in stdout and "streams/values" in stdout


# --------------------------------------------------------------------------- nothing clobbered
PRECIOUS = b"precious bytes \x00\x01\x02 that must survive"


def test_failed_commands_do_not_clobber_output(cli, tmp_path, x32_npy, good_vqsl):
    src, x = x32_npy
    good_path, good, offset = good_vqsl
    work = tmp_path / "work"
    work.mkdir()
    target = work / "labels.vqsl"
    target.write_bytes(PRECIOUS)

    # encode fails while reading the input
    nan_src = tmp_path / "nan.npy"
    np.save(nan_src, _nan())
    rc, _, err = cli("encode", nan_src, "-o", target, "--codec", "fp32")
    assert_one_line_error(rc, err)
    assert target.read_bytes() == PRECIOUS
    assert dotfiles(work) == []

    # encode fails inside the writer (values beyond the fp16 range)
    big = tmp_path / "big.npy"
    np.save(big, make_logits((12, 16)) * 1e6)
    rc, _, err = cli("encode", big, "-o", target, "--codec", "fp16", "-q")
    assert_one_line_error(rc, err)
    assert "float16" in err
    assert target.read_bytes() == PRECIOUS
    assert dotfiles(work) == []

    # decode of a damaged container (header, then a stream chunk) onto the same target
    for pos in (len(good) - 20, offset + 8):
        damaged = bytearray(good)
        damaged[pos] ^= 0xFF
        bad = tmp_path / "bad.vqsl"
        bad.write_bytes(bytes(damaged))
        rc, _, err = cli("decode", bad, "-o", target, "--format", "npy")
        assert_one_line_error(rc, err)
        assert target.read_bytes() == PRECIOUS
        assert dotfiles(work) == []

    # a successful encode replaces it with a valid file
    rc, _, err = cli("encode", src, "-o", target, "--codec", "fp32", "-q")
    assert rc == 0, err
    assert target.read_bytes()[:8] == MAGIC
    assert cli("verify", target)[0] == 0
    with slcodec.open(target) as r:
        np.testing.assert_array_equal(r.decode(None, as_="logits").numpy(), x)
    assert dotfiles(work) == []
    assert os.listdir(work) == ["labels.vqsl"]

    # and a successful decode replaces an existing output too
    out = work / "decoded.npy"
    out.write_bytes(PRECIOUS)
    assert cli("decode", target, "-o", out, "--as", "logits", "-q")[0] == 0
    np.testing.assert_array_equal(np.load(out), x)
    assert dotfiles(work) == []


def test_encode_notes_a_decoder_too_large_for_the_set(cli, tmp_path):
    rc, _, err = cli("encode", DEMO_FIXTURE, "-o", tmp_path / "a.vqsl", "--codec", "vq", "--steps", "20")
    assert rc == 0, err
    assert "note: the codec's fixed part" in err and "--hidden 32" in err
    rc, _, err = cli("encode", DEMO_FIXTURE, "-o", tmp_path / "b.vqsl", "--codec", "vq", "--steps", "20",
                     "--hidden", "32", "--decoder-layers", "0")
    assert rc == 0, err
    assert "note:" not in err


def test_stats_compare_with_the_frameworks(cli, tmp_path):
    out = tmp_path / "t.vqsl"
    rc, _, err = cli("encode", DEMO_FIXTURE, "-o", out, "--codec", "topk", "--k", "5")
    assert rc == 0, err
    rc, stdout, err = cli("stats", out, "--compare", "--image-bytes", "13820")
    assert rc == 0, err
    assert "SRe2L/CDA FP16" in stdout and "FKD top-5" in stdout and "LPQLD MR-10" in stdout
    assert "labels share" in stdout
    rc, stdout, _ = cli("stats", out, "--compare", "--image-bytes", "13820", "--json")
    s = json.loads(stdout)
    rows = {r["layout"]: r for r in s["compare"]["rows"]}
    n, C = s["labels"], s["classes"]                                  # 512 labels x 1000 classes
    batches = -(-n // 1024)
    assert rows["SRe2L/CDA FP16"]["bytes"] == n * (2 * C + 4 * 4 + 1 + 8) + batches * 40
    assert rows["FKD top-5"]["bytes"] == n * (4 * 4 + 1 + 2 * 5 * 4)
    assert rows["LPQLD MR-10"]["bytes"] == n * (8 + 1 + 10 * 4) + batches * 40
    mine = s["compare"]["rows"][0]
    assert mine["bytes"] == s["file_bytes"] and mine["x_this_file"] == 1.0
    share = rows["SRe2L/CDA FP16"]["label_share"]
    per_img = rows["SRe2L/CDA FP16"]["bits_per_image"]
    assert abs(share - per_img / (per_img + 8 * 13820)) < 1e-12
    assert_one_line_error(*cli("stats", out, "--image-bytes", "5")[:3:2])
