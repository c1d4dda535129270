"""Streaming-write memory benchmark: encode a label set 4x larger than the memory allowed.

The input is a float16 logit set ``[N, 1000]`` built by tiling the committed real-teacher
fixture (``slcodec/data/lite0_8x64_fp16.npy``, 512 labels of EfficientNet-Lite0) with a
small per-tile perturbation (Gaussian noise of sigma 0.1 and a per-tile class roll), so the
label statistics stay realistic.  Each measured run is a fresh child process that first sets
``RLIMIT_DATA`` (private writable + anonymous memory: what the process itself allocates,
page cache excluded) to a quarter of the input size, then imports slcodec/torch and encodes:

* ``writer``: a teacher loop that produces the batches in memory and ``append()``s them to a
  :class:`slcodec.Writer` - the labels never exist anywhere as FP16;
* ``encode``: what ``slcodec encode input.npy --input-kind logits`` does - ``load_labels``
  (memory map + validation scan) then :func:`slcodec.encode`;
* ``encode-src``: :func:`slcodec.encode` of a memory-mapped ``LabelSource`` built without the
  validation scan (the encode path alone).

Reported per run: peak RSS (``ru_maxrss``), the RSS after the imports, the peak of the
process's anonymous memory (RSS minus file-backed pages, sampled every millisecond by a
thread: a lower bound), wall time, the output size.  In ``encode`` mode the validation scan
of ``slcodec.pipeline.inputs`` reads the whole input through its memory map, so ``ru_maxrss`` also
counts those clean file-backed pages (page cache the kernel reclaims under pressure); the
``RLIMIT_DATA`` allowance and the anonymous peak are what show the process's own memory
there.  Figures are medians of ``--repeats`` runs.

Usage::

    python benchmarks/streaming_memory.py --size-mb 1200 --codecs topk --repeats 3
    python benchmarks/streaming_memory.py --size-mb 2000 --codecs vq --modes writer --repeats 1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "slcodec", "data", "lite0_8x64_fp16.npy")
#: vq is run small (hidden 64, 200 steps, a 4096-label fit sample): this measures memory, not fidelity
CODEC_OPTS = {"topk": {"k": 5}, "fp16": {}, "vq": {"steps": 200, "fit_sample": 4096, "hidden": 64}}
TEACHER_BATCH_TILES = 2  # writer mode: the teacher hands over 2 x 512 = 1024 labels at a time (a relabel batch)


def tile(base: np.ndarray, t: int) -> np.ndarray:
    """Tile number t of the synthetic set: the fixture, rolled and perturbed (deterministic)."""
    rng = np.random.default_rng(t)
    x = np.roll(base, t % base.shape[1], axis=1).astype(np.float32)
    x += rng.normal(0.0, 0.1, size=x.shape).astype(np.float32)
    return x.astype(np.float16)


def base_rows() -> np.ndarray:
    return np.load(FIXTURE).reshape(-1, 1000)


def make_input(path: str, rows: int) -> None:
    base = base_rows()
    header = {"descr": "<f2", "fortran_order": False, "shape": (rows, 1000)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        done, t = 0, 0
        while done < rows:
            block = tile(base, t)[: rows - done]
            f.write(block.tobytes())
            done += block.shape[0]
            t += 1


def status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "VmData"):
                out[key] = int(value.split()[0]) * 1024
    return out


class AnonSampler:
    """Samples resident - shared (file-backed) pages from /proc/self/statm in a thread."""

    def __init__(self, period=0.001):
        import threading
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._t = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._t.start()

    def sample(self):
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        self.peak = max(self.peak, (int(fields[1]) - int(fields[2])) * self._page)

    def _run(self, period):
        while not self._stop.wait(period):
            self.sample()

    def stop(self):
        self._stop.set()
        self._t.join()
        self.sample()
        return self.peak


# --------------------------------------------------------------------------- child
def child(args) -> None:
    limit = int(args.limit_mb * (1 << 20))
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    import torch
    torch.set_num_threads(args.threads)
    import slcodec
    from slcodec.pipeline.inputs import LabelSource, load_labels

    base_rows_ = base_rows()
    base_rss = status()["VmRSS"]
    opts = CODEC_OPTS.get(args.codec, {})
    sampler = AnonSampler()
    t0 = time.perf_counter()
    if args.mode == "writer":
        rows, done, t = args.rows, 0, 0
        with slcodec.Writer(args.out, args.codec, classes=1000, source_kind="logits", **opts) as w:
            while done < rows:
                # the "teacher" output of one batch
                block = np.concatenate([tile(base_rows_, t + j) for j in range(TEACHER_BATCH_TILES)])[: rows - done]
                w.append(block)
                done += block.shape[0]
                t += TEACHER_BATCH_TILES
    else:
        if args.mode == "encode":
            src = load_labels(args.input, "logits")
        else:
            src = LabelSource(np.load(args.input, mmap_mode="r"), "logits", "given", args.input)
        slcodec.encode(src, args.out, codec=args.codec, batch_size=args.batch_size, **opts)
    wall = time.perf_counter() - t0
    anon_peak = sampler.stop()
    st = status()
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "base_rss": base_rss, "anon_peak": anon_peak, "end": st, "wall_s": wall,
                      "out_bytes": os.path.getsize(args.out)}))


# --------------------------------------------------------------------------- parent
def run_child(mode, codec, inp, out, rows, limit_mb, batch_size, threads):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mode", mode, "--codec", codec,
           "--input", inp, "--out", out, "--rows", str(rows), "--limit-mb", str(limit_mb),
           "--batch-size", str(batch_size), "--threads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1], "rc": p.returncode}
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_output(out, inp, rows):
    """Top-1 agreement of 64 evenly spaced decoded labels with the input (a sanity check)."""
    import torch

    import slcodec
    with slcodec.open(out) as r:
        assert r.count == rows, (r.count, rows)
        idx = np.linspace(0, rows - 1, 64).round().astype(np.int64)
        src = torch.from_numpy(np.load(inp, mmap_mode="r")[idx].astype(np.float32))
        got = r.decode(idx, as_="logits" if r.decoded_kind == "logits" else "probs")
        return float((got.argmax(1) == src.argmax(1)).float().mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=1200, help="input size in MiB (FP16 [N, 1000])")
    ap.add_argument("--codecs", nargs="+", default=["topk"])
    ap.add_argument("--modes", nargs="+", default=["writer", "encode"], choices=["writer", "encode", "encode-src"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ratio", type=float, default=4.0, help="input size / memory allowed (RLIMIT_DATA)")
    ap.add_argument("--batch-size", type=int, default=1024, help="rows per block for encode mode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="folder for the input and outputs (default: a temp folder)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--codec", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--limit-mb", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    rows = int(args.size_mb * (1 << 20) // 2000)
    input_bytes = rows * 2000
    limit_mb = input_bytes / args.ratio / (1 << 20)
    work = args.workdir or tempfile.mkdtemp(prefix="slcodec-streaming-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    os.makedirs(work, exist_ok=True)
    inp = os.path.join(work, "labels.npy")
    t0 = time.perf_counter()
    if not (os.path.exists(inp) and np.load(inp, mmap_mode="r").shape == (rows, 1000)):
        make_input(inp, rows)
    print(f"input: {inp} [{rows:,}, 1000] float16 = {input_bytes / 2**20:,.0f} MiB "
          f"(made in {time.perf_counter() - t0:.0f} s); allowed memory (RLIMIT_DATA) = input / {args.ratio:g} "
          f"= {limit_mb:,.0f} MiB; {args.threads} threads; medians of {args.repeats} runs")
    print(f"{'mode':<10} {'codec':<5} {'peak RSS MiB':>12} {'after imports':>13} {'anon peak':>9} "
          f"{'input/peak RSS':>14} {'wall s':>7} {'out MiB':>8} {'top-1 ok':>8}")
    try:
        for codec in args.codecs:
            for mode in args.modes:
                res = []
                out = os.path.join(work, f"out.{mode}.{codec}.vqsl")
                for _ in range(args.repeats):
                    r = run_child(mode, codec, inp, out, rows, limit_mb, args.batch_size, args.threads)
                    if "error" in r:
                        print(f"{mode:<10} {codec:<5} FAILED under the limit (rc {r['rc']}): {r['error']}")
                        break
                    res.append(r)
                if not res:
                    continue
                agree = check_output(out, inp, rows) if mode != "writer" else float("nan")
                peak = statistics.median(r["peak_rss"] for r in res)
                base = statistics.median(r["base_rss"] for r in res)
                anon = statistics.median(r["anon_peak"] for r in res)
                wall = statistics.median(r["wall_s"] for r in res)
                print(f"{mode:<10} {codec:<5} {peak / 2**20:>12,.0f} {base / 2**20:>13,.0f} {anon / 2**20:>9,.0f} "
                      f"{input_bytes / peak:>14.2f} {wall:>7.1f} {res[-1]['out_bytes'] / 2**20:>8.1f} "
                      f"{agree:>8.3f}", flush=True)
                os.unlink(out)
    finally:
        if not args.workdir:
            os.unlink(inp)
            os.rmdir(work)


if __name__ == "__main__":
    main()
