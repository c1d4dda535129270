"""The benchmark tools of issue 14 that a GPU session or a full-corpus run relies on:
gpu_check.py's no-CUDA exit and its CPU dry run, corpus_rd.py's block-wise metrics."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
FIXTURE = ROOT / "slcodec" / "data" / "lite0_8x64_fp16.npy"


def _run(args, tmp_path, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_check_without_cuda_says_so_and_writes_nothing(tmp_path):
    p = _run([], tmp_path, {"OUT": str(tmp_path)})
    assert p.returncode == 3
    assert "no CUDA device" in p.stderr
    assert "Traceback" not in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_gpu_check_dry_run_on_cpu_measures_every_step(tmp_path):
    out = tmp_path / "g.json"
    p = _run(["--device", "cpu", "--source", str(FIXTURE), "--configs", "vq-h32", "topk", "--vq-steps", "5",
              "--repeats", "1", "--skip-tests", "--json", str(out)], tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    rec = json.loads(out.read_text())
    assert rec["dry_run_on_cpu"] is True
    assert rec["steps"]["source"]["labels"] == 512
    enc = rec["steps"]["encode"]
    assert set(enc) == {"vq-h32", "topk"}
    for r in enc.values():
        assert r["assign_labels_per_s"] > 0 and r["file_bits_per_label"] > 0
        assert r["top1"] == 1.0 and r["kl_T1"] >= 0
    dec = rec["steps"]["decode_labels_per_s"]
    assert list(dec) == ["512"]      # every batch size is capped at the 512 labels
    assert set(dec["512"]) == {"raw_host", "raw_resident", "vq-h32", "topk"}
    assert rec["failed"] == []


def test_corpus_rd_block_metrics_equal_the_whole_set():
    sys.path.insert(0, str(BENCH))
    try:
        import baselines as B
        import corpus_rd
    finally:
        sys.path.remove(str(BENCH))
    x = np.load(FIXTURE).astype(np.float32).reshape(-1, 1000)
    q = x + np.random.default_rng(0).normal(0, 0.5, size=x.shape).astype(np.float32)
    acc = corpus_rd.MetricSum(tail_from=400)
    for s in range(0, len(x), 150):                 # blocks that straddle the tail's start
        acc.add(s, x[s:s + 150], q[s:s + 150], batch=64)
    got = acc.result()
    whole, tail = B.metrics(x, q), B.metrics(x[400:], q[400:])
    for k in whole:
        assert got[k] == pytest.approx(whole[k], rel=1e-9, abs=1e-12)
        assert got[f"tail_{k}"] == pytest.approx(tail[k], rel=1e-9, abs=1e-12)
