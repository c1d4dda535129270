"""Wall time of the inspection commands, as a user runs them, against starting Python itself.

    python benchmarks/cli_startup.py [--repeats 15] [--out benchmarks/results/cli_startup.json]

Writes two label files of about 1 MB (fp16: 512 x 1000 labels; topk k=5: 60,000 x 1000 labels,
whose `verify` checks every stream row) and times, each as a fresh process, interleaved:

  * the baseline ``python -c pass``;
  * ``slcodec --version``, ``slcodec info F``, ``slcodec stats F``, ``slcodec verify F``.

Figures: the median wall time of --repeats runs, and that median minus the baseline's (what
slcodec adds to starting Python).  Target (issue 11): every command under 0.6 s.  A last column
says whether the command imported torch (a run with ``sys.modules`` inspected at exit).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_S = 0.6


def slcodec_command() -> list[str]:
    exe = shutil.which("slcodec")
    return [exe] if exe else [sys.executable, "-m", "slcodec"]


def make_files(folder: str) -> dict:
    sys.path.insert(0, os.path.join(HERE, ".."))
    import slcodec
    rng = np.random.default_rng(0)
    files = {}
    for name, shape, codec, opts in (("fp16", (512, 1000), "fp16", {}),
                                     ("topk", (60_000, 1000), "topk", {"k": 5})):
        path = os.path.join(folder, f"{name}.vqsl")
        slcodec.encode((rng.normal(size=shape) * 3).astype(np.float32), path, codec=codec, **opts)
        files[name] = path
    return files


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def imports_torch(args: list[str]) -> bool:
    code = ("import sys\nfrom slcodec.cli import main\nrc = main(sys.argv[1:])\n"
            "print('torch' in sys.modules)\nsys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cli_startup.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        files = make_files(folder)
        sizes = {k: os.path.getsize(p) for k, p in files.items()}
        cli = slcodec_command()
        cases = {"python -c pass": ([sys.executable, "-c", "pass"], None),
                 "slcodec --version": (cli + ["--version"], ["--version"])}
        for name, path in files.items():
            for command in ("info", "stats", "verify"):
                cases[f"slcodec {command} {name}.vqsl"] = (cli + [command, path], [command, path])
        times = {k: [] for k in cases}
        for _ in range(args.repeats):       # interleaved: a load change hits every case alike
            for k, (cmd, _) in cases.items():
                times[k].append(wall(cmd))
        base = statistics.median(times["python -c pass"])
        rows = []
        for k, (cmd, cli_args) in cases.items():
            med = statistics.median(times[k])
            rows.append({"command": k, "median_s": round(med, 4), "over_python_s": round(med - base, 4),
                         "min_s": round(min(times[k]), 4), "max_s": round(max(times[k]), 4),
                         "imports_torch": None if cli_args is None else imports_torch(cli_args)})
    print(f"median of {args.repeats} runs each (files: fp16 {sizes['fp16']:,} bytes, topk {sizes['topk']:,} bytes; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}):")
    print(f"| command | median (s) | over `python -c pass` (s) | min-max (s) | imports torch | < {TARGET_S} s |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        ok = "" if r["imports_torch"] is None else ("yes" if r["median_s"] < TARGET_S else "NO")
        torch_col = "" if r["imports_torch"] is None else ("yes" if r["imports_torch"] else "no")
        print(f"| `{r['command']}` | {r['median_s']:.3f} | {r['over_python_s']:.3f} | "
              f"{r['min_s']:.3f}-{r['max_s']:.3f} | {torch_col} | {ok} |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"repeats": args.repeats, "file_bytes": sizes, "cpus": os.cpu_count(),
                   "load_average": os.getloadavg()[0], "target_s": TARGET_S, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
