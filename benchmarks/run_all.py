#!/usr/bin/env python3
"""Regenerate every benchmark table: rate-distortion, throughput, downstream accuracy.

    python benchmarks/run_all.py --quick     # smoke run, under 10 minutes on 2 shared CPU cores
    python benchmarks/run_all.py             # the full run (see BENCHMARKS.md for its time)

Each step is a subprocess (its stdout - the markdown tables - goes to
``benchmarks/results/<step>[_quick].md``, its stderr to the console); the timings go to
``benchmarks/results/run_all[_quick].json``.  ``--only`` runs some steps.  A failed step is
reported and the others still run; the exit code is 1 if any failed.

Steps (quick | full):
  corpus_rd        the 1,000-class corpus (``benchmarks/data/imagenet_corpus.py``; skipped, with the command
                   that makes it, when its ``.npy`` is not in ``benchmarks/.cache/``): ``--small`` corpus
                   (60,000 labels), sparse k=5, imgprior k=8, FKD top-5 | the full corpus (300,000 labels),
                   every method and the held-out images (hours on 2 cores: see BENCHMARKS.md section 15)
  rate_distortion  ``--quick`` (10 baseline settings, 2 vq rates, few steps) | all settings, >= 4 vq rates
  throughput       ``--tile 2 --repeats 3 --vq-opt steps=200`` | tile 11, 5 repeats; both: vq, vq-h64, vq-h32, topk, fp16
  downstream       ``--quick`` | ``--ipc 10 50 --seeds 3 --codec vq --bits 4 6`` with the small-C vq config
                   (hidden 32, no residual layer; the image prior turns on by itself at C = 10)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SMALL_C = ["--vq-opt", "hidden=32", "--vq-opt", "decoder_layers=0", "--vq-opt", "param_dtype=float16"]


CACHE = HERE / ".cache"
#: a step that needs a cached data file: (file, the command that makes it)
NEEDS = {"corpus_rd": {True: (CACHE / "corpus_small.npy", "python benchmarks/data/imagenet_corpus.py --small"),
                       False: (CACHE / "corpus_full.npy", "python benchmarks/data/imagenet_corpus.py")}}


def steps(quick: bool) -> dict[str, list[str]]:
    if quick:
        return {
            "corpus_rd": ["corpus_rd.py", str(CACHE / "corpus_small.npy"), "--out", str(RESULTS / "corpus_rd_small_quick"),
                          "--only", "sparse", "imgprior", "fkd_topk", "--configs", "k=5", "k=8", "k=5,zstd_level=19"],
            "rate_distortion": ["rate_distortion.py", "--quick"],
            "throughput": ["throughput.py", "--tile", "2", "--repeats", "3", "--vq-opt", "steps=200",
                           "--codecs", "vq", "vq-h64", "vq-h32", "topk", "fp16",
                           "--json", str(RESULTS / "throughput_quick.json")],
            "downstream": ["downstream.py", "--quick"],
        }
    return {
        "corpus_rd": ["corpus_rd.py", str(CACHE / "corpus_full.npy"), "--out", str(RESULTS / "corpus_rd_full"),
                      "--heldout"],
        "rate_distortion": ["rate_distortion.py"],
        "throughput": ["throughput.py", "--codecs", "vq", "vq-h64", "vq-h32", "topk", "fp16",
                       "--json", str(RESULTS / "throughput.json")],
        "downstream": ["downstream.py", "--ipc", "10", "50", "--seeds", "3", "--codec", "vq", "--bits", "4", "6",
                       *SMALL_C],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=["corpus_rd", "rate_distortion", "throughput", "downstream"])
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    record = {"quick": args.quick, "steps": {}}
    failed = []
    t_all = time.perf_counter()
    for name, cmd in steps(args.quick).items():
        if args.only and name not in args.only:
            continue
        need = NEEDS.get(name, {}).get(args.quick)
        if need and not need[0].exists():
            msg = f"skipped: {os.path.relpath(need[0], HERE.parent)} is missing (make it with: {need[1]})"
            record["steps"][name] = {"skipped": msg}
            print(f"== {name}: {msg}", file=sys.stderr, flush=True)
            continue
        full = [sys.executable, str(HERE / cmd[0]), *cmd[1:]]
        print(f"== {name}: {' '.join(['python', 'benchmarks/' + cmd[0], *cmd[1:]])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        out_md = RESULTS / f"{name}{suffix}.md"
        with open(out_md, "w") as out:
            rc = subprocess.call(full, stdout=out, cwd=HERE.parent)
        dt = time.perf_counter() - t0
        record["steps"][name] = {"command": " ".join(["python", "benchmarks/" + cmd[0], *cmd[1:]]),
                                 "seconds": round(dt, 1), "returncode": rc, "output": str(out_md.relative_to(HERE.parent))}
        print(f"== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {dt:.0f} s -> {out_md}",
              file=sys.stderr, flush=True)
        if rc:
            failed.append(name)
    record["total_seconds"] = round(time.perf_counter() - t_all, 1)
    (RESULTS / f"run_all{suffix}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"total {record['total_seconds']:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
