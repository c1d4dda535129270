#!/usr/bin/env python3
"""Regenerate every benchmark table: rate-distortion, throughput, downstream accuracy.

    python benchmarks/run_all.py --quick     # smoke run, under 10 minutes on 2 shared CPU cores
    python benchmarks/run_all.py             # the full run (see BENCHMARKS.md for its time)

Each step is a subprocess (its stdout - the markdown tables - goes to
``benchmarks/results/<step>[_quick].md``, its stderr to the console); the timings go to
``benchmarks/results/run_all[_quick].json``.  ``--only`` runs some steps.  A failed step is
reported and the others still run; the exit code is 1 if any failed.

Steps (quick | full):
  rate_distortion  ``--quick`` (10 baseline settings, 2 vq rates, few steps) | all settings, >= 4 vq rates
  throughput       ``--tile 2 --repeats 3 --vq-opt steps=200`` | tile 11, 5 repeats; both: vq, vq-h64, vq-h32, topk, fp16
  downstream       ``--quick`` | ``--ipc 10 50 --seeds 3 --codec vq --bits 4 6`` with the small-C vq config
                   (hidden 32, no residual layer; the image prior turns on by itself at C = 10)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SMALL_C = ["--vq-opt", "hidden=32", "--vq-opt", "decoder_layers=0", "--vq-opt", "param_dtype=float16"]


def steps(quick: bool) -> dict[str, list[str]]:
    if quick:
        return {
            "rate_distortion": ["rate_distortion.py", "--quick"],
            "throughput": ["throughput.py", "--tile", "2", "--repeats", "3", "--vq-opt", "steps=200",
                           "--codecs", "vq", "vq-h64", "vq-h32", "topk", "fp16",
                           "--json", str(RESULTS / "throughput_quick.json")],
            "downstream": ["downstream.py", "--quick"],
        }
    return {
        "rate_distortion": ["rate_distortion.py"],
        "throughput": ["throughput.py", "--codecs", "vq", "vq-h64", "vq-h32", "topk", "fp16",
                       "--json", str(RESULTS / "throughput.json")],
        "downstream": ["downstream.py", "--ipc", "10", "50", "--seeds", "3", "--codec", "vq", "--bits", "4", "6",
                       *SMALL_C],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=["rate_distortion", "throughput", "downstream"])
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    record = {"quick": args.quick, "steps": {}}
    failed = []
    t_all = time.perf_counter()
    for name, cmd in steps(args.quick).items():
        if args.only and name not in args.only:
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
