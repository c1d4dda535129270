"""The command line as a new user meets it (issue 11): torch-free inspection commands, progress,
fit threads, KL at the temperatures asked for, decode's output format, the --compare table,
the resolved configuration, --help, the demo's output folder.  All through a subprocess."""
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest

from slcodec.format.container import Container

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "spec", "golden")
ATTACKS = os.path.join(ROOT, "tests", "attacks")
#: a vq config that fits in about a second
TINY_VQ = ["--codec", "vq", "--steps", "60", "--hidden", "16", "--code-dim", "4", "--train-batch", "64",
           "--fit-threads", "1"]


def _env(extra_path=None):
    env = dict(os.environ)
    env.pop("SLCODEC_DEBUG", None)
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(*args, extra_path=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "slcodec", *map(str, args)], capture_output=True, text=True,
                          env=_env(extra_path), cwd=cwd, timeout=300)


def run_in_terminal(*args, cwd=None):
    """Run slcodec with stdout and stderr on a pseudo-terminal (120 columns); (exit code, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "slcodec", *map(str, args)], stdin=slave, stdout=slave,
                            stderr=slave, env=_env(), cwd=cwd, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:   # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=300), out.decode(errors="replace")


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory):
    """A folder that, first on PYTHONPATH, makes `import torch` fail."""
    folder = tmp_path_factory.mktemp("no_torch")
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked for this test')\n")
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                           env=_env(str(folder)))
    assert probe.returncode != 0 and "blocked" in probe.stderr
    return str(folder)


def logits(shape, seed=0):
    return (np.random.default_rng(seed).normal(size=shape) * 3).astype(np.float32)


@pytest.fixture(scope="module")
def topk_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("topk")
    np.save(folder / "x.npy", logits((300, 40)))
    r = run_cli("encode", folder / "x.npy", "-o", folder / "x.vqsl", "--codec", "topk", "--k", "3", "-q")
    assert r.returncode == 0, r.stderr
    return folder


@pytest.fixture(scope="module")
def vq_file(tmp_path_factory):
    """A vq file written with --bits only (M and K left for the codec to choose)."""
    folder = tmp_path_factory.mktemp("vq")
    np.save(folder / "x.npy", logits((256, 30), seed=1))
    r = run_cli("encode", folder / "x.npy", "-o", folder / "x.vqsl", "--bits", "12", *TINY_VQ)
    assert r.returncode == 0, r.stderr
    return folder, r.stderr


# --------------------------------------------------------------------------- 3: no torch to inspect
#: every golden file: one per codec and format feature, a sharded set and its shards
GOLDEN_FILES = sorted(name for name in os.listdir(GOLDEN) if name.endswith(".vqsl"))


def test_every_codec_module_loads_without_torch(no_torch):
    script = ("from slcodec.codecs.base import codec_ids, get_codec_class\n"
              "ids = codec_ids()\nprint(' '.join(ids))\n"
              "for cid in ids:\n    get_codec_class(cid)(**{})\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(no_torch), timeout=120)
    assert r.returncode == 0, r.stderr
    assert {"fp16", "fp32", "topk", "sparse", "vq"} <= set(r.stdout.split())


def test_version_info_stats_verify_run_without_torch(no_torch):
    r = run_cli("--version", extra_path=no_torch)
    assert r.returncode == 0 and r.stdout.startswith("slcodec "), r.stderr
    paths = [os.path.join(GOLDEN, name) for name in GOLDEN_FILES]
    assert len(paths) >= 11
    r = run_cli("verify", *paths, extra_path=no_torch)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(": OK") == len(paths)
    for path in paths:
        for command in (("info",), ("info", "--json"), ("stats",), ("stats", "--json"), ("stats", "--compare")):
            r = run_cli(*command, path, extra_path=no_torch)
            assert r.returncode == 0, (command, path, r.stderr)
            assert "torch" not in r.stderr


def test_verify_runs_the_codec_checks_without_torch(no_torch):
    # a class id >= C is found only by the codec's stream check: without torch it must still run
    bad = os.path.join(ATTACKS, "codec-streams--class-id-out-of-range.vqsl")
    r = run_cli("verify", bad, extra_path=no_torch)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "INVALID" in r.stdout and "out of range" in r.stdout
    r = run_cli("verify", os.path.join(ATTACKS, "codec-params--unexpected-params.vqsl"), extra_path=no_torch)
    assert r.returncode == 1 and "INVALID" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("name, minor", [("v1.2-sparse-k5-logits.vqsl", 2),
                                         ("v1.3-sparse-k2-prior-classes-logits.vqsl", 3),
                                         ("v1.2-vq-image-bias-logits.vqsl", 2),
                                         ("v1.5-vq-int8-logits.vqsl", 5)])
def test_split_and_merge_without_torch_keep_the_format_minor(no_torch, tmp_path, name, minor):
    src = os.path.join(GOLDEN, name)
    r = run_cli("split", src, "-o", tmp_path / "set.vqsl", "--shards", "2", "-q", extra_path=no_torch)
    assert r.returncode == 0, r.stderr
    with Container.open(str(tmp_path / "set.vqsl")) as c:
        assert c.is_manifest and c.preamble.minor == minor     # the codec feature's minor, not just 1
    r = run_cli("stats", tmp_path / "set.vqsl", extra_path=no_torch)
    assert r.returncode == 0, r.stderr
    r = run_cli("merge", tmp_path / "set.vqsl", "-o", tmp_path / "one.vqsl", "-q", extra_path=no_torch)
    assert r.returncode == 0, r.stderr
    with Container.open(str(tmp_path / "one.vqsl")) as c:
        assert c.preamble.minor == minor
    r = run_cli("verify", tmp_path / "one.vqsl", tmp_path / "set.vqsl", extra_path=no_torch)
    assert r.returncode == 0, r.stdout + r.stderr


def test_encode_without_torch_says_what_is_missing(no_torch, tmp_path):
    np.save(tmp_path / "x.npy", logits((8, 5)))
    r = run_cli("encode", tmp_path / "x.npy", "-o", tmp_path / "x.vqsl", "--codec", "fp16", extra_path=no_torch)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "torch" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.vqsl").exists()


# --------------------------------------------------------------------------- 4: progress of the fit
def test_vq_fit_shows_progress_on_a_terminal_only(tmp_path):
    np.save(tmp_path / "x.npy", logits((256, 30)))
    args = ["encode", tmp_path / "x.npy", "-o", tmp_path / "x.vqsl", *TINY_VQ]
    rc, out = run_in_terminal(*args)
    assert rc == 0, out
    fit = [part for part in re.split(r"[\r\n]+", out) if part.startswith("vq fit")]
    assert fit, out
    last = fit[-1]
    assert "100%" in last and "60/60" in last, last                     # steps done / steps
    assert re.search(r"loss \d+\.\d{4}", last), last                     # the current loss
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", last), last               # elapsed < ETA
    rc, out = run_in_terminal(*args, "--quiet")
    assert rc == 0 and "vq fit" not in out and out.strip() == "", out
    r = run_cli(*args)                                                     # not a terminal: no bars
    assert r.returncode == 0 and "vq fit" not in r.stderr and "\r" not in r.stderr, r.stderr


# --------------------------------------------------------------------------- 5: fit threads
def test_fit_threads_default_is_torchs_own_count(vq_file, tmp_path):
    folder, _ = vq_file
    np.save(tmp_path / "x.npy", logits((128, 20)))
    r = run_cli("encode", tmp_path / "x.npy", "-o", tmp_path / "d.vqsl", "--codec", "vq", "--steps", "20",
                "--hidden", "16", "--code-dim", "4", "--train-batch", "32", "-q")
    assert r.returncode == 0, r.stderr
    info = json.loads(run_cli("info", tmp_path / "d.vqsl", "--json").stdout)
    assert info["header"]["codec"]["config"]["fit_threads"] == 0          # 0: leave torch's count alone
    info = json.loads(run_cli("info", folder / "x.vqsl", "--json").stdout)
    assert info["header"]["codec"]["config"]["fit_threads"] == 1          # the flag is kept
    script = ("import torch, numpy as np\n"
              "from slcodec.codecs.vq import VQCodec\nfrom slcodec.codecs.base import Context\n"
              "torch.set_num_threads(3)\nseen = []\n"
              "class Probe(VQCodec):\n"
              "    def _fit(self, labels, ctx):\n"
              "        seen.append(torch.get_num_threads())\n"
              "        return super()._fit(labels, ctx)\n"
              "x = torch.randn(64, 10)\n"
              "Probe(steps=4, hidden=8, code_dim=2, train_batch=16).fit(x, Context(classes=10))\n"
              "Probe(steps=4, hidden=8, code_dim=2, train_batch=16, fit_threads=1).fit(x, Context(classes=10))\n"
              "print(seen, torch.get_num_threads())\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[3,", "1]", "3"]                         # default keeps 3; the flag sets 1


# --------------------------------------------------------------------------- 6: KL at the asked temperatures
def _mean_kl(ref, decoded_log_probs, t):
    z = ref / t
    lp = z - z.max(1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
    return float((np.exp(lp) * (lp - decoded_log_probs)).sum(1).clip(min=0).astype(np.float64).mean())


def test_stats_reference_reports_kl_at_each_temperature_with_spread(topk_file):
    folder = topk_file
    x = np.load(folder / "x.npy")
    r = run_cli("stats", folder / "x.vqsl", "--reference", folder / "x.npy", "--json")
    assert r.returncode == 0, r.stderr
    fid = json.loads(r.stdout)["fidelity"]
    assert sorted(fid["kl"]) == ["1", "4"]                                # the default: T = 1 and 4
    r = run_cli("stats", folder / "x.vqsl", "--reference", folder / "x.npy", "--json", "--temperature", "1", "2", "8")
    fid = json.loads(r.stdout)["fidelity"]
    assert sorted(fid["kl"], key=float) == ["1", "2", "8"]
    for t in ("1", "2", "8"):
        r = run_cli("decode", folder / "x.vqsl", "-o", folder / f"d{t}.npy", "--as", "log_probs", "--temperature", t)
        assert r.returncode == 0, r.stderr
        want = _mean_kl(x, np.load(folder / f"d{t}.npy"), float(t))
        assert fid["kl"][t] == pytest.approx(want, rel=1e-3, abs=1e-6)
        sp = fid["kl_spread"][t]
        assert 0 <= sp["median"] <= sp["p99"] <= sp["max"] and fid["kl"][t] <= sp["max"]
    assert fid["kl"]["1"] != fid["kl"]["8"]
    text = run_cli("stats", folder / "x.vqsl", "--reference", folder / "x.npy", "--temperature", "1", "4").stdout
    assert re.search(r"T\s+mean\s+median\s+p99\s+max", text), text
    assert len(re.findall(r"^\s+(1|4)\s+\d+\.\d{5}\s+\d+\.\d{5}\s+\d+\.\d{5}\s+\d+\.\d{5}$", text, re.M)) == 2, text
    r = run_cli("stats", folder / "x.vqsl", "--temperature", "2")
    assert r.returncode == 2 and "--reference" in r.stderr
    r = run_cli("stats", folder / "x.vqsl", "--reference", folder / "x.npy", "--temperature", "0")
    assert r.returncode == 2 and "positive" in r.stderr and r.stderr.count("\n") == 1, r.stderr


# --------------------------------------------------------------------------- 7: decode's output format
def test_decode_refuses_an_unknown_extension_without_format(topk_file, tmp_path):
    src = topk_file / "x.vqsl"
    r = run_cli("decode", src, "-o", tmp_path / "t.csv")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "t.csv" in r.stderr and "--format" in r.stderr
    assert os.listdir(tmp_path) == []
    r = run_cli("decode", src, "-o", tmp_path / "noext")
    assert r.returncode == 2 and os.listdir(tmp_path) == []
    r = run_cli("decode", src, "-o", tmp_path / "t.csv", "--format", "npy", "-q")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "t.csv").shape == (300, 40)


# --------------------------------------------------------------------------- 9: --compare
def test_compare_defines_each_layout_once_and_no_ratio_reads_zero(tmp_path):
    fixture = os.path.join(ROOT, "slcodec", "data", "lite0_8x64_fp16.npy")
    r = run_cli("encode", fixture, "-o", tmp_path / "v.vqsl", *TINY_VQ, "-q")
    assert r.returncode == 0, r.stderr
    out = run_cli("stats", tmp_path / "v.vqsl", "--compare").stdout
    assert not re.search(r"(?<![\d.])0\.0x", out), out
    assert "FKD top5" not in out                            # the packed top-k is not called FKD
    fkd = [line for line in out.splitlines() if "FKD top-5" in line]
    assert len(fkd) == 2, out                               # its table row and its one-line definition
    assert "float32" in fkd[1]
    table = out.split("storage of this label set")[1].split("what each layout stores:")
    rows = [line.split()[0:2] for line in table[0].splitlines()[2:] if line.startswith("  ") and "(" not in line[:4]]
    defined = table[1]
    for name in ("this file", "SRe2L/CDA FP16", "SRe2L/CDA FP32", "FKD top-5", "LPQLD MR-10"):
        assert f"    {name}" in defined, (name, defined)
    assert rows
    demo = subprocess.run([sys.executable, "-m", "slcodec", "demo", "--codecs", "topk", "fp16"], capture_output=True,
                          text=True, env=_env(), timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert not re.search(r"(?<![\d.])0\.0x", demo.stdout), demo.stdout


# --------------------------------------------------------------------------- 10: resolved configuration
def test_resolved_configuration_is_printed_not_none(vq_file):
    folder, summary = vq_file
    info = json.loads(run_cli("info", folder / "x.vqsl", "--json").stdout)
    codec = info["header"]["codec"]
    assert codec["config"]["codes"] is None and codec["config"]["codebook_size"] is None   # left to the codec
    m, k = codec["info"]["M"], codec["info"]["K"]
    want = f"codes={m} codebook_size={k}"
    assert want in summary, summary                                        # the encode summary
    text = run_cli("info", folder / "x.vqsl").stdout
    assert want in text and "None" not in text.split("sections:")[0], text
    assert "loss_history: [" not in text and "(info --json)" in text       # history only in --json
    assert isinstance(codec["info"]["loss_history"], list) and codec["info"]["loss_history"]
    stats = run_cli("stats", folder / "x.vqsl").stdout
    assert want in stats.splitlines()[0] and "None" not in stats.splitlines()[0], stats
    js = json.loads(run_cli("stats", folder / "x.vqsl", "--json").stdout)
    assert js["codec_resolved_config"]["codes"] == m and js["codec_resolved_config"]["codebook_size"] == k


# --------------------------------------------------------------------------- 11: --help
def test_every_option_has_a_description():
    script = (
        "import argparse\nfrom slcodec.cli import build_parser\n"
        "missing = []\n"
        "top = build_parser()\n"
        "for action in top._actions:\n"
        "    if isinstance(action, argparse._SubParsersAction):\n"
        "        for name, sub in action.choices.items():\n"
        "            missing += [(name, a.option_strings or a.dest) for a in sub._actions if not (a.help or '').strip()]\n"
        "print(missing)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
    decode = run_cli("decode", "--help").stdout
    assert "(default: probs)" in " ".join(decode.split())
    encode = " ".join(run_cli("encode", "--help").stdout.split())
    hidden = encode.split("--hidden HIDDEN")[-1].split(" --")[0]
    assert hidden.lower().count("default") == 1, hidden
    assert "(default: None)" not in encode
    k = encode.split("--k K")[-1].split(" --")[0]
    assert "sparse 8" in k and "topk 5" in k, k                           # each codec's own default


# --------------------------------------------------------------------------- 12: demo output and the example
def test_demo_cleans_up_its_temporary_folder_or_keeps_the_given_one(tmp_path):
    r = run_cli("demo", "--codecs", "topk", "-q")
    assert r.returncode == 0, r.stderr
    found = re.search(r"temporary folder, (\S+), now removed", r.stdout)
    assert found, r.stdout
    assert not os.path.exists(found.group(1).rstrip(";,"))
    r = run_cli("demo", "--codecs", "topk", "-q", "--output-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp_path) == ["lite0_8x64.topk.vqsl"]
    assert "temporary" not in r.stdout


def test_train_student_example_explains_its_columns():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "train_student.py"), "--quick",
                        "--epochs", "1", "--workers", "0"], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "mean training loss" in r.stdout and "KL" in r.stdout
    assert re.search(r"largest difference between the curves: \S+ \(", r.stdout), r.stdout   # and how to read it
    helptext = " ".join(subprocess.run([sys.executable, os.path.join(ROOT, "examples", "train_student.py"), "--help"],
                                       capture_output=True, text=True, env=_env(), timeout=120).stdout.split())
    quick = re.search(r"--quick\s+(\w.*?)\s+--epochs EPOCHS\s", helptext).group(1)
    assert "(seconds)" not in quick and "--codec vq" in quick and "steps" in quick, quick


def test_busy_machine_note_only_when_threads_would_fight_for_busy_cores():
    from slcodec.cli.reports import busy_machine_note
    note = busy_machine_note(0, 2, 12.0, 2)
    assert note and "--fit-threads 1" in note and "12.0" in note
    assert busy_machine_note(0, 2, 0.3, 2) is None          # idle cores: torch's count is the right one
    assert busy_machine_note(1, 2, 12.0, 2) is None         # the user chose a thread count
    assert busy_machine_note(None, 2, 12.0, 2) is None      # a codec without fit_threads
    assert busy_machine_note(0, 1, 12.0, 2) is None         # one thread anyway
    assert busy_machine_note(0, 2, None, 2) is None         # no load average on this platform


@pytest.mark.parametrize("name, rc, words", [("torch", 2, "needs torch"), ("slcodec.pipeline.writer", 3, "internal error")])
def test_an_import_error_names_a_missing_dependency_but_not_our_own_bug(monkeypatch, capsys, name, rc, words):
    from slcodec.cli import commands, main

    def broken(args):
        raise ImportError(f"cannot import {name}", name=name)
    monkeypatch.setattr(commands, "cmd_info", broken)
    monkeypatch.delenv("SLCODEC_DEBUG", raising=False)
    assert main(["info", os.path.join(GOLDEN, "v1.0-fp16-logits.vqsl")]) == rc
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err


def test_a_closed_stdout_is_not_an_error():
    """`slcodec stats F | head -1`: the reader of stdout goes away; slcodec stops quietly (exit 141,
    as for a tool killed by SIGPIPE) instead of printing 'error: Broken pipe' and exiting 2."""
    r, w = os.pipe()
    os.close(r)                      # the reader is gone before slcodec writes a byte
    try:
        p = subprocess.run([sys.executable, "-m", "slcodec", "stats", os.path.join(GOLDEN, "v1.0-fp16-logits.vqsl")],
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 141, p.stderr
    assert p.stderr == ""
