"""Time of a vq fit with 1, 2, ... torch threads (the `fit_threads` option), in the same run.

    nice -n 19 python benchmarks/fit_threads.py [--threads 1 2] [--repeats 3] [--steps 300]
                                                [--labels slcodec/data/lite0_8x64_fp16.npy]

Fits the default vq configuration (only ``steps`` shortened; the per-step cost is what threads
change) on a real label set - by default the committed EfficientNet-Lite0 fixture, 512 labels x
1000 classes - once per thread count per repeat, the thread counts taking turns, and reports the
median fit time of each and its ratio to one thread.  ``fit_threads=0`` (the default since issue
11) leaves torch's own count, which is the number of cores.  The machine's load average is
printed with the figures: threads only help when the cores are otherwise idle.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from slcodec.codecs import Context  # noqa: E402
from slcodec.codecs.vq import VQCodec  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", default=os.path.join(HERE, "..", "slcodec", "data", "lite0_8x64_fp16.npy"))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "fit_threads.json"))
    args = ap.parse_args(argv)
    x = np.load(args.labels).astype(np.float32)
    x = torch.from_numpy(x.reshape(-1, x.shape[-1]))
    times = {t: [] for t in args.threads}
    load = []
    for _ in range(args.repeats):
        for t in args.threads:
            codec = VQCodec(steps=args.steps, fit_threads=t)
            t0 = time.perf_counter()
            codec.fit(x, Context(classes=x.shape[1], seed=0))
            times[t].append(time.perf_counter() - t0)
            load.append(os.getloadavg()[0])
            print(f"  fit_threads={t}: {times[t][-1]:.2f} s (load average {load[-1]:.1f})", flush=True)
    base = statistics.median(times[args.threads[0]])
    rows = [{"threads": t, "median_s": round(statistics.median(v), 2), "runs_s": [round(s, 2) for s in v],
             "ratio_to_first": round(statistics.median(v) / base, 3)} for t, v in times.items()]
    print(f"vq fit, {x.shape[0]} labels x {x.shape[1]} classes, {args.steps} steps, default config; "
          f"{os.cpu_count()} CPUs, torch default threads {torch.get_num_threads()}, "
          f"load average {min(load):.1f}-{max(load):.1f} during the runs; median of {args.repeats}:")
    for r in rows:
        print(f"  fit_threads={r['threads']}: {r['median_s']:.2f} s ({r['ratio_to_first']:.2f}x the time of "
              f"{args.threads[0]} thread(s); runs {r['runs_s']})")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"labels": list(x.shape), "steps": args.steps, "cpus": os.cpu_count(),
                   "load_average": [min(load), max(load)], "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
