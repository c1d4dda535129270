#!/usr/bin/env python3
"""Scale: millions of labels on one machine (issue 17), measured; ImageNet-21K projected from it.

Subcommands (each writes ``benchmarks/results/scale_<what>_<n>.json`` and prints a summary; the
runs of BENCHMARKS.md section 12, all with ``--source slcodec/data/lite0_8x64_fp16.npy``)::

    # N labels (C = 1000) streamed through slcodec.Writer, then decoded by a shuffled DataLoader
    nice -n 19 python benchmarks/scale.py stream --n 5000000 --steps 500 --decode-batches 300 --keep
    # slcodec encode of an FP16 .npy on disk: one process, --distributed (2 gloo ranks), --shards 4
    nice -n 19 python benchmarks/scale.py cli --n 1000000 --steps 300
    # C = 21,841: fit / assignment / decode speed and the fixed part
    nice -n 19 python benchmarks/scale.py wide --n 32768 --steps 60 --fit-sample 16384
    # (run by `stream`, in a fresh process) shuffled DataLoader decode of a file against a baseline file
    python benchmarks/scale.py decode FILE --baseline SMALL_FILE
    # ImageNet-21K IPC 10 x 300 views from the result files above
    python benchmarks/scale.py project --stream R/scale_stream_5M.json --decode R/scale_decode_5000000.json \
        --wide R/scale_wide_32768.json --extra-bits "real labels, section 1 (held-out)=45.54"

Speeds are reported in wall time and in CPU seconds of the process (all threads): on shared
cores the CPU time is what the work costs; ``--threads`` defaults to 1 for that reason.

The labels (15M labels of real teacher output would be 30 GB of FP16, too much to write here) come from
a generator of real labels: a real teacher corpus (``--source``; by default the first that
exists of ``benchmarks/.cache/corpus_full.npy``, ``corpus_small.npy`` (issue 14:
EfficientNet-Lite0 on seeded views of recovered images), ``lite0_40x300.npy``, and the fixture
``slcodec/data/lite0_8x64_fp16.npy``) tiled: copy ``c`` of the corpus holds, for base row ``b``
of base image ``i``, the logits ``s[c, i] * x[b] + noise[(b + o[c]) % 8192]`` where
``s[c, i] = exp(N(0, 0.15))`` (a per-image confidence change: another image of the same class),
``o[c]`` a seeded offset and ``noise`` a seeded bank of 8192 x C N(0, 0.25) values. Every row
is computable from its index alone, so the fit sample can be drawn evenly over the whole set,
as ``slcodec encode`` draws it. The tiling is stated in every result file.

Wide labels (C = 21,841, ``wide``): each tiled 1,000-class row is scattered into 21,841
classes by a seeded class map (the 1,000 classes go to 1,000 random ids), every 1,000-class
logit also gets 3 seeded "sibling" classes (a 21K hierarchy puts many near-synonyms next to each
ImageNet-1K class) at ``x_c - 1 - |N(0, 1)|``, and the remaining classes a tail at the row's
mean logit minus 2 of its standard deviations plus a seeded per-class prior N(0, 0.5) and
row noise N(0, 0.5): so the tail holds a visible share of mass, as a 21K teacher's does. The
median top-1 probability and tail mass are printed and stored.

Memory: a thread samples VmRSS / RssAnon of the process every 0.2 s; at 1M, 5M, 15M labels (and
every million) the current VmRSS, RssAnon, VmHWM and the largest VmRSS since the last print are
printed. The generator reads the corpus with file reads (slcodec.pipeline.rows.RowReader), so its
pages are not resident.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
CACHE = os.path.join(HERE, ".cache")
RESULTS = os.path.join(HERE, "results")
SOURCES = [os.path.join(CACHE, "corpus_full.npy"), os.path.join(CACHE, "corpus_small.npy"),
           os.path.join(CACHE, "lite0_40x300.npy"), os.path.join(ROOT, "slcodec", "data", "lite0_8x64_fp16.npy")]
BANK_ROWS = 8192
SCALE_SIGMA, NOISE_SIGMA = 0.15, 0.25
WIDE_CLASSES = 21841


# --------------------------------------------------------------------------- memory
def proc_status(pid="self") -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile of a process in MiB (missing fields: 0)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(val.split()[0]) / 1024
    except OSError:
        pass
    return {k: out.get(k, 0.0) for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def private_mib(pid="self") -> float:
    """Private (clean + dirty) memory of a process in MiB: what it holds that no other process shares."""
    tot = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    tot += int(line.split()[1])
    except OSError:
        return float("nan")
    return tot / 1024


class MemSampler(threading.Thread):
    """Samples VmRSS and RssAnon every ``period`` s; ``take()`` returns the maxima since the last take."""

    def __init__(self, period=0.2):
        super().__init__(daemon=True)
        self.period = period
        self.max_rss = self.max_anon = 0.0
        self.all_rss = self.all_anon = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def run(self):
        while not self._stop.is_set():
            s = proc_status()
            with self._lock:
                self.max_rss = max(self.max_rss, s["VmRSS"])
                self.max_anon = max(self.max_anon, s["RssAnon"])
                self.all_rss = max(self.all_rss, s["VmRSS"])
                self.all_anon = max(self.all_anon, s["RssAnon"])
            self._stop.wait(self.period)

    def take(self):
        s = proc_status()
        with self._lock:
            out = (max(self.max_rss, s["VmRSS"]), max(self.max_anon, s["RssAnon"]))
            self.max_rss = self.max_anon = 0.0
        return out

    def stop(self):
        self._stop.set()


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants (from /proc/*/stat)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def run_measured(cmd, env=None, log=None) -> dict:
    """Run ``cmd``; sample its process tree every 0.2 s: the largest sum of VmRSS / RssAnon over the
    tree, the largest VmHWM of one process. Returns wall seconds and those peaks (MiB)."""
    t0 = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL
    p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    peak_sum = peak_anon = peak_hwm = 0.0
    ranks = 0
    while True:
        done, status, ru = os.wait4(p.pid, os.WNOHANG)   # ru: the child's CPU, reaped descendants included
        if done:
            p.returncode = os.waitstatus_to_exitcode(status)
            break
        pids = tree_pids(p.pid)
        stats = [proc_status(q) for q in pids]
        peak_sum = max(peak_sum, sum(s["VmRSS"] for s in stats))
        peak_anon = max(peak_anon, sum(s["RssAnon"] for s in stats))
        peak_hwm = max([peak_hwm] + [s["VmHWM"] for s in stats])
        ranks = max(ranks, len(pids))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if log:
        out.close()
    if p.returncode != 0:
        tail = open(log).read()[-3000:] if log else ""
        raise SystemExit(f"{' '.join(cmd)} failed (exit {p.returncode}):\n{tail}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_tree_rss_mib": peak_sum, "peak_tree_anon_mib": peak_anon,
            "peak_process_hwm_mib": peak_hwm, "processes_seen": ranks}


# --------------------------------------------------------------------------- labels
def pick_source(path):
    if path:
        return path
    for p in SOURCES:
        if os.path.exists(p):
            return p
    raise SystemExit("no label source found")


class TiledCorpus:
    """Rows of a real teacher corpus, tiled with a seeded per-copy perturbation (module docstring).

    ``rows(idx)``: float32 ``[len(idx), C]`` for any sorted global row indices.
    """

    def __init__(self, path, n, seed=0):
        from slcodec.pipeline.rows import RowReader
        arr = np.load(path, mmap_mode="r")
        self.path = path
        self.views = int(arr.shape[1]) if arr.ndim == 3 else 1
        self.classes = int(arr.shape[-1])
        flat = arr.reshape(-1, self.classes)
        self.reader = RowReader(flat)
        self.base_rows = flat.shape[0]
        self.base_images = self.base_rows // self.views
        self.n = int(n)
        self.copies = -(-self.n // self.base_rows)
        rng = np.random.default_rng([seed, 0xB00C])
        self.bank = (rng.standard_normal((BANK_ROWS, self.classes), dtype=np.float32) * NOISE_SIGMA)
        self.scale = np.empty((self.copies, self.base_images), dtype=np.float32)
        self.offset = np.empty(self.copies, dtype=np.int64)
        for c in range(self.copies):
            r = np.random.default_rng([seed, c])
            self.scale[c] = np.exp(r.normal(0.0, SCALE_SIGMA, self.base_images)).astype(np.float32)
            self.offset[c] = r.integers(BANK_ROWS)

    def describe(self) -> dict:
        return {"source": os.path.relpath(self.path, ROOT), "source_rows": self.base_rows,
                "source_views_per_image": self.views, "classes": self.classes, "copies": self.copies,
                "file_reads": self.reader.uses_file_reads,
                "perturbation": f"copy c, base row b of base image i: s[c,i]*x[b] + noise[(b+o[c]) % {BANK_ROWS}], "
                                f"s = exp(N(0,{SCALE_SIGMA})), noise N(0,{NOISE_SIGMA}) (seeded)"}

    def rows(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        b = idx % self.base_rows
        c = idx // self.base_rows
        if idx.size and int(idx[-1]) - int(idx[0]) == idx.size - 1 and int(b[-1]) - int(b[0]) == idx.size - 1:
            x = self.reader.read(int(b[0]), int(b[-1]) + 1)      # one contiguous run of the corpus
        else:
            ub, inv = np.unique(b, return_inverse=True)
            x = self.reader.take(ub)[inv]
        x = x.astype(np.float32)
        x *= self.scale[c, b // self.views][:, None]
        x += self.bank[(b + self.offset[c]) % BANK_ROWS]
        return x

    def block(self, lo, hi) -> np.ndarray:
        """Rows ``[lo, hi)``: the same values as ``rows(arange(lo, hi))``, read as contiguous runs of
        the corpus (one per copy) with slices of the noise bank instead of gathers."""
        out = np.empty((hi - lo, self.classes), dtype=np.float32)
        pos = lo
        while pos < hi:
            c, b0 = divmod(pos, self.base_rows)
            b1 = min(self.base_rows, b0 + (hi - pos))
            seg = out[pos - lo:pos - lo + (b1 - b0)]
            seg[:] = self.reader.read(b0, b1)
            img = np.arange(b0, b1) // self.views
            seg *= self.scale[c, img][:, None]
            k0 = (b0 + int(self.offset[c])) % BANK_ROWS
            done = 0
            while done < b1 - b0:                       # the bank rows, wrapping around
                take = min(b1 - b0 - done, BANK_ROWS - k0)
                seg[done:done + take] += self.bank[k0:k0 + take]
                done += take
                k0 = 0
            pos += b1 - b0
        return out


class WideLabels:
    """TiledCorpus rows scattered into ``classes`` (21,841) classes (module docstring)."""

    SIBLINGS = 3

    def __init__(self, base: TiledCorpus, classes=WIDE_CLASSES, seed=0):
        self.base = base
        self.classes = classes
        rng = np.random.default_rng([seed, 0x21841])
        perm = rng.permutation(classes)
        c1 = base.classes
        self.map = perm[:c1]                                     # where the 1K classes go
        rest = perm[c1:]
        self.sib = rest[:c1 * self.SIBLINGS].reshape(c1, self.SIBLINGS)   # their siblings
        self.tail = rest[c1 * self.SIBLINGS:]                     # everything else
        self.sib_gap = (1.0 + np.abs(rng.normal(0, 1, (c1, self.SIBLINGS)))).astype(np.float32)
        self.prior = rng.normal(0, 0.5, len(self.tail)).astype(np.float32)
        self.tail_bank = (rng.standard_normal((1024, len(self.tail)), dtype=np.float32) * 0.5)
        self._seed = seed

    def describe(self) -> dict:
        return {**self.base.describe(), "classes": self.classes,
                "scatter": f"seeded class map of the {self.base.classes} classes into {self.classes}; "
                           f"{self.SIBLINGS} sibling classes per 1K class at x_c - 1 - |N(0,1)|; the other "
                           f"{len(self.tail)} classes at mean(x) - 2 std(x) + prior N(0,0.5) + row noise N(0,0.5)"}

    def rows(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        x = self.base.rows(idx)
        n = x.shape[0]
        out = np.empty((n, self.classes), dtype=np.float32)
        mu = x.mean(axis=1, keepdims=True)
        sd = x.std(axis=1, keepdims=True)
        out[:, self.tail] = (mu - 2.0 * sd) + self.prior + self.tail_bank[idx % self.tail_bank.shape[0]]
        out[:, self.map] = x
        for s in range(self.SIBLINGS):
            out[:, self.sib[:, s]] = x - self.sib_gap[:, s]
        return out

    def block(self, lo, hi):
        return self.rows(np.arange(lo, hi, dtype=np.int64))


def label_stats(x: np.ndarray, tail=None) -> dict:
    """Median top-1 probability (and tail mass when ``tail`` ids are given) of logit rows."""
    z = x - x.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    out = {"median_top1_prob": float(np.median(p.max(axis=1)))}
    if tail is not None:
        out["median_tail_mass"] = float(np.median(p[:, tail].sum(axis=1)))
    return out


def evenly_spaced(n, k):
    """The rows slcodec.encode fits on."""
    from slcodec.pipeline.rows import fit_rows
    return fit_rows(n, k)


def spool_bytes(folder) -> int:
    """Bytes in this process's open anonymous temporary files in ``folder`` (the writer's stream
    spools: unnamed files, found by their open descriptors): the writer's disk use before close."""
    folder = os.path.abspath(folder)
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if os.path.dirname(target) == folder and target.endswith(" (deleted)"):
                total += os.fstat(int(fd)).st_size
        except OSError:
            pass
    return total


def lead_shape(n, views):
    return [n // views, views] if views > 1 and n % views == 0 else [n]


def vq_options(args) -> dict:
    opts = {}
    if args.steps is not None:
        opts["steps"] = args.steps
    for item in args.vq_opt:
        key, _, val = item.partition("=")
        from slcodec.codecs import get_codec_class
        opt = {o.name: o for o in get_codec_class("vq").options}[key]
        opts[key] = [opt.type(v) for v in val.split(",")] if opt.nargs else opt.type(val)
    return opts


def machine() -> dict:
    import torch
    return {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def file_summary(path) -> dict:
    from slcodec.format.container import Container
    from slcodec.format.stats import file_stats
    with Container.open(path) as c:
        s = file_stats(c)
    return {"file_bytes": s["file_bytes"], "bits_per_label": s["bits_per_label"],
            "marginal_bits_per_label": s["marginal_bits_per_label"], "fixed_bytes": s["fixed_bytes"],
            "fp16_ratio": s["baselines"]["fp16"]["ratio"]}


class StepClock:
    """A Writer ``progress`` callback that timestamps every fit step: the median step time, and the
    rest of the fit (k-means init, assigning the sample, statistics) apart."""

    def __init__(self):
        self.times = []

    def __call__(self, done, total, msg=""):
        self.times.append(time.perf_counter())

    def split(self, fit_seconds) -> dict:
        if len(self.times) < 3:
            return {"steps_timed": len(self.times)}
        gaps = np.diff(self.times)
        step = float(np.median(gaps))
        return {"steps_timed": len(self.times), "median_step_s": step,
                "steps_s": float(self.times[-1] - self.times[0]) + step,
                "outside_steps_s": fit_seconds - (float(self.times[-1] - self.times[0]) + step)}


def time_assignment(w):
    """Wrap the writer's codec.encode so that assignment alone is timed (the rest of append is
    chunking, zstd and spooling); returns the [wall s, CPU s] totals, updated as the stream goes."""
    assign = [0.0, 0.0]
    enc = w.codec.encode

    def timed_encode(*a, **k):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return enc(*a, **k)
        finally:
            assign[0] += time.perf_counter() - t0
            assign[1] += time.process_time() - c0
    w.codec.encode = timed_encode
    return assign


def mib(x):
    return f"{x:,.0f} MiB"


# --------------------------------------------------------------------------- stream
def write_with_codec(path, codec, codec_id, opts, gen, n, shape, batch):
    """Write rows [0, n) of ``gen`` with an already fitted ``codec`` (no second fit)."""
    import slcodec
    w = slcodec.Writer(path, codec=codec_id, classes=gen.classes, shape=shape, seed=0, **opts)
    w.codec = codec
    fit = codec.fit
    codec.fit = lambda labels, ctx: None
    try:
        w.fit(gen.block(0, 1))
    finally:
        codec.fit = fit
        del codec.fit
    for lo in range(0, n, batch):
        w.append(gen.block(lo, min(n, lo + batch)))
    w.close()


def cmd_stream(args):
    import torch
    import slcodec
    torch.set_num_threads(args.threads)
    sampler = MemSampler()
    sampler.start()
    mem0 = proc_status()
    n = args.n
    gen = TiledCorpus(pick_source(args.source), n, seed=args.seed)
    shape = lead_shape(n, gen.views)
    opts = vq_options(args)
    os.makedirs(args.work, exist_ok=True)
    path = os.path.join(args.work, f"stream_{n}.vqsl")
    out_json = args.json or os.path.join(RESULTS, f"scale_stream_{n}.json")
    res = {"what": "stream", "complete": False, "n": n, "shape": shape, "codec": "vq", "vq_options": opts, "batch": args.batch,
           "labels": gen.describe(), "machine": machine(), "rss_start_mib": mem0, "checkpoints": []}
    print(f"stream: {n:,} labels {shape} x {gen.classes} from {gen.describe()['source']} "
          f"({gen.base_rows:,} real rows, tiled {gen.copies}x with a seeded per-copy perturbation); "
          f"vq {opts or 'default'}; batch {args.batch:,}; load {os.getloadavg()[0]:.1f}", flush=True)

    t_all = time.perf_counter()
    clock = StepClock()
    w = slcodec.Writer(path, codec="vq", classes=gen.classes, shape=shape, seed=args.seed, progress=clock, **opts)
    assign = time_assignment(w)
    t0 = time.perf_counter()
    idx = evenly_spaced(n, w.fit_sample)
    sample = gen.rows(idx)
    t_sample = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    w.fit(sample, rows=idx)
    t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
    del sample
    mem_fit = proc_status()
    rss_fit, anon_fit = sampler.take()
    sp = clock.split(t_fit)
    print(f"fit: {t_fit:.1f} s ({c_fit:.1f} CPU s) on {idx.size:,} evenly spaced labels (drawn in {t_sample:.1f} s): "
          f"{w.codec.config['steps']} steps of median {sp.get('median_step_s', float('nan')):.3f} s + "
          f"{sp.get('outside_steps_s', float('nan')):.1f} s outside the steps; "
          f"peak VmRSS {mib(rss_fit)}, RssAnon {mib(anon_fit)}", flush=True)
    res["fit"] = {"steps": w.codec.config["steps"], **clock.split(t_fit), "seconds": t_fit, "cpu_seconds": c_fit, "sample": int(idx.size), "sample_draw_seconds": t_sample,
                  "peak_rss_mib": rss_fit, "peak_anon_mib": anon_fit, "after": mem_fit}
    marks = sorted(set([m for m in (1_000_000, 5_000_000, 15_000_000) if m <= n] + [n]))
    every = 1_000_000
    t_gen = t_append = c_gen = c_append = 0.0
    next_print = every
    t_stream = time.perf_counter()
    for lo in range(0, n, args.batch):
        hi = min(n, lo + args.batch)
        t0, c0 = time.perf_counter(), time.process_time()
        block = gen.block(lo, hi)
        t1, c1 = time.perf_counter(), time.process_time()
        w.append(block)
        t2, c2 = time.perf_counter(), time.process_time()
        t_gen += t1 - t0
        t_append += t2 - t1
        c_gen += c1 - c0
        c_append += c2 - c1
        del block
        if hi >= next_print or hi == n:
            while next_print <= hi:
                next_print += every
            s = proc_status()
            rss_max, anon_max = sampler.take()
            mark = hi in marks or any(lo < m <= hi for m in marks)
            row = {"labels": hi, "elapsed_s": time.perf_counter() - t_all, "assign_s": assign[0],
                   "assign_cpu_s": assign[1], "load_avg_1min": os.getloadavg()[0],
                   "append_s": t_append, "gen_s": t_gen, "VmRSS_mib": s["VmRSS"], "RssAnon_mib": s["RssAnon"],
                   "VmHWM_mib": s["VmHWM"], "max_VmRSS_since_last_mib": rss_max,
                   "max_RssAnon_since_last_mib": anon_max,
                   "spool_bytes": spool_bytes(w.folder)}
            res["checkpoints"].append(row)
            _save(res, out_json, quiet=True)   # a run cut short still leaves its checkpoints
            rate = hi / max(1e-9, time.perf_counter() - t_stream)
            row["eta_s"] = (n - hi) / rate                  # at the rate so far (a linear extrapolation)
            print(f"{'*' if mark else ' '} {hi:>11,} labels  {row['elapsed_s']:7.1f} s  ({rate:,.0f} labels/s streamed, {row['eta_s'] / 60:.0f} min to go)  "
                  f"assign {hi / max(1e-9, assign[0]):,.0f}/s ({hi / max(1e-9, assign[1]):,.0f}/CPU s)  "
                  f"load {os.getloadavg()[0]:.1f}  VmRSS {mib(s['VmRSS'])} (max since last {mib(rss_max)})  RssAnon {mib(s['RssAnon'])} "
                  f"(max {mib(anon_max)})  VmHWM {mib(s['VmHWM'])}  spooled {row['spool_bytes'] / 2**20:,.1f} MiB",
                  flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    w.close()
    t_close, c_close = time.perf_counter() - t0, time.process_time() - c0
    wall = time.perf_counter() - t_all
    summ = file_summary(path)
    res["times"] = {"wall_s": wall, "fit_s": t_fit, "fit_sample_draw_s": t_sample, "assign_s": assign[0],
                    "chunk_zstd_spool_s": t_append - assign[0], "close_write_verify_s": t_close,
                    "writing_s": t_append - assign[0] + t_close, "generator_s": t_gen,
                    "slcodec_s": t_fit + t_append + t_close}
    # CPU seconds of this process (all its threads): what the work costs whatever else shares the cores
    res["cpu_times"] = {"fit_s": c_fit, "assign_s": assign[1], "chunk_zstd_spool_s": c_append - assign[1],
                        "close_write_verify_s": c_close, "generator_s": c_gen}
    res["assign_labels_per_cpu_s"] = n / assign[1]
    res["assign_labels_per_s"] = n / assign[0]
    res["file"] = summ
    rss_max, anon_max = sampler.take()
    res["peak"] = {"VmHWM_mib": proc_status()["VmHWM"], "max_VmRSS_mib": sampler.all_rss,
                   "max_RssAnon_mib": sampler.all_anon}
    t = res["times"]
    print(f"\nwall {wall:.1f} s = fit {t['fit_s']:.1f} + assignment {t['assign_s']:.1f} "
          f"({res['assign_labels_per_s']:,.0f} labels/s) + writing {t['writing_s']:.1f} "
          f"(chunks/zstd/spool {t['chunk_zstd_spool_s']:.1f}, container write+verify {t_close:.1f}) "
          f"+ generator {t_gen:.1f} + fit-sample draw {t_sample:.1f}; load {os.getloadavg()[0]:.1f}", flush=True)
    ct = res["cpu_times"]
    print(f"CPU seconds: fit {ct['fit_s']:.1f}, assignment {ct['assign_s']:.1f} "
          f"({res['assign_labels_per_cpu_s']:,.0f} labels/CPU s), writing "
          f"{ct['chunk_zstd_spool_s'] + ct['close_write_verify_s']:.1f}, generator {ct['generator_s']:.1f}", flush=True)
    print(f"file {summ['file_bytes']:,} bytes: {summ['bits_per_label']:.2f} bits/label "
          f"({summ['marginal_bits_per_label']:.2f} streams + fixed {summ['fixed_bytes']:,} bytes), "
          f"{summ['fp16_ratio']:.0f}x smaller than FP16; peak VmHWM {mib(res['peak']['VmHWM_mib'])}", flush=True)

    # the baseline file: the first 132,000 labels, same fitted codec, written now
    nb = min(args.baseline_n, n)
    base_path = os.path.join(args.work, f"stream_{nb}_baseline.vqsl")
    write_with_codec(base_path, w.codec, "vq", opts, gen, nb, lead_shape(nb, gen.views), args.batch)
    res["baseline_file"] = {"n": nb, **file_summary(base_path)}
    sampler.stop()
    res["complete"] = True
    _save(res, out_json)
    if args.decode:
        dj = os.path.join(RESULTS, f"scale_decode_{n}.json")
        cmd = [sys.executable, os.path.abspath(__file__), "decode", path, "--baseline", base_path,
               "--batches", str(args.decode_batches), "--repeats", str(args.repeats), "--json", dj]
        print("\n" + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        res["decode_json"] = os.path.relpath(dj, ROOT)
        _save(res, out_json)
    if not args.keep:
        for p in (path, base_path):
            os.remove(p)


def _save(res, path, quiet=False):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(path + ".tmp", path)
    if not quiet:
        print(f"wrote {os.path.relpath(path, ROOT)}", flush=True)


# --------------------------------------------------------------------------- decode
class BatchDecode:
    """A map-style dataset whose item is a batch of label indices (a BatchSampler hands them over):
    decoded in the worker, as a DataLoader with batch_size=None reads a label file."""

    def __init__(self, path, n, temperature=4.0):
        self.path, self.n, self.t = path, n, temperature
        self.reader = None
        self.calls = 0
        self.mem = (0.0, 0.0, 0.0)

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        import slcodec
        if self.reader is None:                  # opened in the worker, memory-mapped
            self.reader = slcodec.open(self.path)
        c0 = time.process_time()
        probs = self.reader.decode(np.asarray(idx, dtype=np.int64), as_="probs", temperature=self.t)
        cpu = time.process_time() - c0
        if self.calls % 32 == 0:   # reading smaps_rollup costs more the more a process maps: not every batch
            s = proc_status()
            self.mem = (s["VmRSS"], s["RssAnon"], private_mib())
        self.calls += 1
        return probs, (os.getpid(), *self.mem, cpu)


def loader_rate(path, n, workers, batches, batch, seed):
    """Labels/s of a shuffled DataLoader over ``path`` after every worker delivered its first batch;
    the time to the first batch; each worker's memory at the end."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler
    g = torch.Generator()
    g.manual_seed(seed)
    sampler = BatchSampler(RandomSampler(range(n), generator=g), batch, drop_last=True)
    ds = BatchDecode(path, n)
    dl = DataLoader(ds, sampler=sampler, batch_size=None, num_workers=workers,
                    prefetch_factor=2 if workers else None)
    warm = max(1, workers)
    mem = {}
    t_start = time.perf_counter()
    t_first = t_warm = None
    got = 0
    cpu = 0.0
    for k, (probs, (pid, rss, anon, priv, c)) in enumerate(dl):
        now = time.perf_counter()
        if t_first is None:
            t_first = now - t_start
        if k == warm - 1:
            t_warm = now
        if t_warm is not None and k >= warm:
            cpu += c
        mem[pid] = {"VmRSS_mib": rss, "RssAnon_mib": anon, "private_mib": priv}
        got = k + 1
        if got >= warm + batches:
            break
    t_end = time.perf_counter()
    del dl
    return {"labels_per_s": batches * batch / (t_end - t_warm), "first_batch_s": t_first, "workers": workers,
            "labels_per_decode_cpu_s": batches * batch / max(cpu, 1e-9), "load_avg_1min": os.getloadavg()[0],
            "timed_batches": batches, "memory_per_process": list(mem.values())}


def cmd_decode(args):
    import torch
    import slcodec
    import slcodec.pipeline.reader
    torch.set_num_threads(args.threads)
    files = {"baseline": args.baseline, "large": args.file}
    sizes = {}
    for k, p in files.items():
        with slcodec.open(p) as r:
            sizes[k] = len(r)
    res = {"what": "decode", "files": {k: {"path": os.path.basename(p), "labels": sizes[k]} for k, p in files.items()},
           "batch": args.batch, "temperature": 4.0, "as": "probs", "repeats": args.repeats,
           "main_process_before": proc_status(), "machine": machine(), "rows": []}
    print(f"decode: shuffled DataLoader, batches of {args.batch} indices decoded in the workers "
          f"(probs at T=4); {args.batches} timed batches per run, median of {args.repeats}; "
          f"files: {sizes['large']:,} labels vs baseline {sizes['baseline']:,}", flush=True)
    cap = slcodec.pipeline.reader.RESIDENT_STREAM_BYTES
    modes = [("resident", cap)]
    if args.over_cap:
        modes.append(("chunked", 0))
    for mode, cap_value in modes:
        slcodec.pipeline.reader.RESIDENT_STREAM_BYTES = cap_value   # inherited by forked workers
        for workers in args.workers:
            nb = args.batches if mode == "resident" else max(20, args.batches // 4)
            runs = {k: [] for k in files}
            for rep in range(args.repeats):        # baseline and large take turns
                for k, p in files.items():
                    runs[k].append(loader_rate(p, sizes[k], workers, nb, args.batch, seed=rep))
            row = {"mode": mode, "workers": workers}
            for k in files:
                rates = [r["labels_per_s"] for r in runs[k]]
                row[k] = {"labels_per_s": statistics.median(rates), "all": rates,
                          "labels_per_decode_cpu_s": statistics.median(r["labels_per_decode_cpu_s"] for r in runs[k]),
                          "first_batch_s": statistics.median(r["first_batch_s"] for r in runs[k]),
                          "memory_per_process": runs[k][-1]["memory_per_process"]}
            row["ratio_large_vs_baseline"] = row["large"]["labels_per_s"] / row["baseline"]["labels_per_s"]
            res["rows"].append(row)
            memo = row["large"]["memory_per_process"]
            print(f"{mode:>8} workers {workers}: {sizes['large']:,}-label file {row['large']['labels_per_s']:,.0f} labels/s "
                  f"({row['large']['labels_per_decode_cpu_s']:,.0f}/decode CPU s; "
                  f"first batch {row['large']['first_batch_s']:.2f} s) | baseline {row['baseline']['labels_per_s']:,.0f} "
                  f"labels/s ({row['baseline']['labels_per_decode_cpu_s']:,.0f}/CPU s) | ratio {row['ratio_large_vs_baseline']:.2f} | "
                  f"per process (large): " + ", ".join(f"RSS {m['VmRSS_mib']:.0f}/private {m['private_mib']:.0f} MiB"
                                                       for m in memo), flush=True)
    slcodec.pipeline.reader.RESIDENT_STREAM_BYTES = cap
    _save(res, args.json or os.path.join(RESULTS, f"scale_decode_{sizes['large']}.json"))


# --------------------------------------------------------------------------- cli / distributed / shards
def cmd_cli(args):
    import torch
    import slcodec
    n = args.n
    gen = TiledCorpus(pick_source(args.source), n, seed=args.seed)
    shape = lead_shape(n, gen.views)
    os.makedirs(args.work, exist_ok=True)
    npy = os.path.join(args.work, f"cli_{n}_fp16.npy")
    need = n * gen.classes * 2
    free = shutil.disk_usage(args.work).free
    if need * 3 > free:
        raise SystemExit(f"{npy}: {need / 1e9:.1f} GB of FP16 needs 3x free space, {free / 1e9:.1f} GB free")
    res = {"what": "cli", "n": n, "shape": shape, "labels": gen.describe(), "machine": machine(),
           "vq_options": vq_options(args)}
    t0 = time.perf_counter()
    if not (args.reuse_npy and os.path.exists(npy)):
        out = np.lib.format.open_memmap(npy + ".tmp.npy", mode="w+", dtype=np.float16, shape=(*shape, gen.classes))
        flat = out.reshape(-1, gen.classes)
        for lo in range(0, n, args.batch):
            hi = min(n, lo + args.batch)
            flat[lo:hi] = gen.block(lo, hi)
        out.flush()
        del out, flat
        os.replace(npy + ".tmp.npy", npy)
    res["npy"] = {"bytes": os.path.getsize(npy), "write_s": time.perf_counter() - t0}
    print(f"cli: {npy} {os.path.getsize(npy) / 1e9:.2f} GB FP16 {shape} x {gen.classes} "
          f"(written in {res['npy']['write_s']:.0f} s); load {os.getloadavg()[0]:.1f}", flush=True)
    flags = []
    for k, v in res["vq_options"].items():
        flags += [f"--{k.replace('_', '-')}"] + ([str(x) for x in v] if isinstance(v, list) else [str(v)])
    slc = [sys.executable, "-m", "slcodec"]
    outs = {"single": os.path.join(args.work, f"cli_{n}.vqsl"),
            "distributed": os.path.join(args.work, f"cli_{n}_dist.vqsl"),
            "shards": os.path.join(args.work, f"cli_{n}_shards.vqsl")}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))   # torchrun gives each rank 1 thread too
    runs = {
        "single": slc + ["encode", npy, "-o", outs["single"], "-q", "--device", "cpu"] + flags,
        "distributed": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc-per-node={args.ranks}", "-m", "slcodec", "encode", npy, "-o", outs["distributed"],
                        "--distributed", "-q", "--device", "cpu"] + flags,
        "shards": slc + ["encode", npy, "-o", outs["shards"], "--shards", str(args.shards), "-q",
                         "--device", "cpu"] + flags,
    }
    res["runs"] = {}
    for name in args.modes:
        for p in [outs[name]]:
            if os.path.exists(p):
                os.remove(p)
        log = os.path.join(args.work, f"cli_{n}_{name}.log")
        print("$ " + " ".join(runs[name]), flush=True)
        m = run_measured(runs[name], env=env, log=log)
        with slcodec.open(outs[name]) as r:
            info = dict(r.header["codec"]["info"])
        from slcodec.format.container import Container
        from slcodec.format.stats import file_stats
        with Container.open(outs[name]) as c:
            if c.is_manifest:
                from slcodec.format.shards import open_shard, read_shard_table
                entries = read_shard_table(c)
                shards = [open_shard(c, entries, k) for k in range(len(entries))]
                s = file_stats(c, shards=shards)
                for sc in shards:
                    sc.close()
            else:
                s = file_stats(c)
        m.update({"fit_s_header": info.get("fit_seconds"), "encode_s_header": info.get("encode_seconds"),
                  "file_bytes": s["file_bytes"], "files": s["files"], "bits_per_label": s["bits_per_label"]})
        res["runs"][name] = m
        print(f"  {name}: wall {m['wall_s']:.1f} s, {m['cpu_s']:.1f} CPU s (fit {m['fit_s_header']} s, assignment+spool "
              f"{m['encode_s_header']} s in the header of rank 0 / the process); peak tree RSS "
              f"{mib(m['peak_tree_rss_mib'])} (anon {mib(m['peak_tree_anon_mib'])}), largest process VmHWM "
              f"{mib(m['peak_process_hwm_mib'])}; {m['files']} file(s), {m['bits_per_label']:.2f} bits/label",
              flush=True)
    # identical decode: every set against the single file, on random indices and across shard boundaries
    if "single" in args.modes:
        rng = np.random.default_rng(1)
        with slcodec.open(outs["single"]) as ref:
            for name in [m for m in args.modes if m != "single"]:
                with slcodec.open(outs[name]) as r:
                    starts = [int(s) for s in r._starts[1:]]
                    idx = np.concatenate([rng.choice(n, 20000, replace=False)] +
                                         [np.arange(s - 3, s + 3) for s in starts])
                    t0 = time.perf_counter()
                    a = r.decode(idx, as_="logits")
                    t_dec = time.perf_counter() - t0
                    b = ref.decode(idx, as_="logits")
                    same = bool(torch.equal(a, b))
                    streams_same = all(np.array_equal(x, ref.read_streams(idx)[k])
                                       for k, x in r.read_streams(idx).items())
                    res["runs"][name].update({"identical_decode": same, "identical_streams": streams_same,
                                              "checked_labels": int(idx.size), "shard_starts": starts,
                                              "cross_boundary_decode_s": t_dec})
                    print(f"  {name} vs single: decode identical {same}, streams identical {streams_same} "
                          f"({idx.size:,} labels incl. 6 around each of {len(starts)} shard boundaries)", flush=True)
    if "single" in res["runs"] and "distributed" in res["runs"]:
        res["distributed_speedup"] = res["runs"]["single"]["wall_s"] / res["runs"]["distributed"]["wall_s"]
        print(f"distributed ({args.ranks} ranks) wall speedup {res['distributed_speedup']:.2f}x", flush=True)
    _save(res, args.json or os.path.join(RESULTS, f"scale_cli_{n}.json"))
    if not args.keep:
        from slcodec.format.shards import set_file_names
        for p in outs.values():
            belongs = set_file_names(p)
            for name in os.listdir(args.work):
                if belongs(name):
                    os.remove(os.path.join(args.work, name))
        if not args.reuse_npy:
            os.remove(npy)


# --------------------------------------------------------------------------- C = 21,841
def cmd_wide(args):
    import torch
    import slcodec
    torch.set_num_threads(args.threads)
    sampler = MemSampler()
    sampler.start()
    n = args.n
    base = TiledCorpus(pick_source(args.source), max(n, 1), seed=args.seed)
    gen = WideLabels(base, args.classes, seed=args.seed)
    opts = vq_options(args)
    os.makedirs(args.work, exist_ok=True)
    path = os.path.join(args.work, f"wide_{n}.vqsl")
    peek = gen.rows(evenly_spaced(n, 2048))
    res = {"what": "wide", "n": n, "classes": args.classes, "labels": gen.describe(),
           "label_stats": label_stats(peek, gen.tail), "vq_options": opts, "fit_sample": args.fit_sample,
           "machine": machine()}
    s1k = label_stats(base.rows(evenly_spaced(n, 2048)))
    res["label_stats_1k_source"] = s1k
    del peek
    print(f"wide: {n:,} labels x {args.classes:,} ({res['label_stats']}; the 1K source: {s1k}); "
          f"vq {opts or 'default'}, fit sample {args.fit_sample:,}; load {os.getloadavg()[0]:.1f}", flush=True)
    clock = StepClock()
    w = slcodec.Writer(path, codec="vq", classes=args.classes, seed=args.seed, fit_sample=args.fit_sample,
                       progress=clock, **opts)
    assign = time_assignment(w)
    idx = evenly_spaced(n, w.fit_sample)
    sample = gen.rows(idx).astype(np.float16)        # the fit sample as a teacher's FP16 labels
    t0, c0 = time.perf_counter(), time.process_time()
    w.fit(sample)
    t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
    del sample
    steps = w.codec.config["steps"]
    sp = clock.split(t_fit)
    print(f"fit: {t_fit:.1f} s for {steps} steps (median step {sp.get('median_step_s', float('nan')):.3f} s, "
          f"{sp.get('outside_steps_s', float('nan')):.1f} s outside the steps) on {idx.size:,} labels; "
          f"peak VmRSS {mib(sampler.take()[0])}", flush=True)
    t_gen = 0.0
    t_app = 0.0
    for lo in range(0, n, args.batch):
        t0 = time.perf_counter()
        block = gen.block(lo, min(n, lo + args.batch))
        t1 = time.perf_counter()
        w.append(block)
        t_app += time.perf_counter() - t1
        t_gen += t1 - t0
    t0 = time.perf_counter()
    w.close()
    t_close = time.perf_counter() - t0
    summ = file_summary(path)
    res["times"] = {"fit_s": t_fit, "fit_cpu_s": c_fit, "fit_steps": steps, "fit_split": sp,
                    "assign_cpu_s": assign[1], "assign_labels_per_cpu_s": n / assign[1], "assign_s": assign[0],
                    "assign_labels_per_s": n / assign[0], "writing_s": t_app - assign[0] + t_close,
                    "generator_s": t_gen}
    res["file"] = summ
    print(f"assignment {n / assign[0]:,.0f} labels/s; file {summ['bits_per_label']:.1f} bits/label "
          f"({summ['marginal_bits_per_label']:.2f} streams), fixed part {summ['fixed_bytes']:,} bytes", flush=True)
    # decode: shuffled batches of 256 and one large batch, in this process
    dec = {}
    with slcodec.open(path) as r:
        rng = np.random.default_rng(0)
        r.decode(np.arange(16))
        for bs in (256, 4096):
            rates = []
            for rep in range(args.repeats):
                calls = max(1, 8192 // bs)
                idxs = [np.sort(rng.choice(n, min(bs, n), replace=False)) for _ in range(calls)]
                t0, c0 = time.perf_counter(), time.process_time()
                for ix in idxs:
                    r.decode(ix, as_="probs", temperature=4.0)
                got = calls * min(bs, n)
                rates.append((got / (time.perf_counter() - t0), got / (time.process_time() - c0)))
            dec[bs] = {"labels_per_s": statistics.median(r[0] for r in rates),
                       "labels_per_cpu_s": statistics.median(r[1] for r in rates), "all": rates}
            print(f"decode batch {bs}: {dec[bs]['labels_per_s']:,.0f} labels/s "
                  f"({dec[bs]['labels_per_cpu_s']:,.0f}/CPU s)", flush=True)
    res["decode"] = dec
    res["peak"] = {"VmHWM_mib": proc_status()["VmHWM"], "max_VmRSS_mib": sampler.all_rss}
    sampler.stop()
    _save(res, args.json or os.path.join(RESULTS, f"scale_wide_{n}.json"))
    if not args.keep:
        os.remove(path)


# --------------------------------------------------------------------------- projection
def cmd_project(args):
    """ImageNet-21K IPC 10 x 300 views, projected from the measured runs (every input is a result file)."""
    load = lambda p: json.load(open(p))  # noqa: E731
    st, de, wi = load(args.stream), load(args.decode), load(args.wide)
    cl = load(args.cli) if args.cli else None
    C = wi["classes"]
    N = C * args.ipc * args.views
    bits = {"C=1000 stream run": st["file"]["marginal_bits_per_label"],
            f"C={C} wide run": wi["file"]["marginal_bits_per_label"]}
    for item in args.extra_bits:          # stream rates measured elsewhere (e.g. section 1's real labels)
        name, _, val = item.rpartition("=")
        bits[name] = float(val)
    fixed = wi["file"]["fixed_bytes"]
    size = {k: N * b / 8 + fixed for k, b in bits.items()}
    fp16 = N * C * 2
    t = wi["times"]
    sp = t["fit_split"]
    core_share = t["fit_cpu_s"] / t["fit_s"]               # the share of a core the fit got here
    fit_here = args.steps * sp["median_step_s"] + sp["outside_steps_s"]
    fit_idle = fit_here * core_share
    assign_here = N / t["assign_labels_per_s"]
    assign_cpu = N / t["assign_labels_per_cpu_s"]          # CPU seconds, 1 thread
    write_cpu = N * (st["cpu_times"]["chunk_zstd_spool_s"] + st["cpu_times"]["close_write_verify_s"]) / st["n"]
    procs = {}
    for P in args.procs:
        procs[P] = fit_idle + (assign_cpu + write_cpu) / P
    # decode: the codec at C (wide run, batch 256, 1 thread) + random access to streams above the resident cap
    rows = {r["mode"]: r for r in de["rows"] if r["workers"] == 0}
    res_rate = rows["resident"]["large"]["labels_per_decode_cpu_s"]
    chk_rate = rows["chunked"]["large"]["labels_per_decode_cpu_s"] if "chunked" in rows else None
    access = (1 / chk_rate - 1 / res_rate) if chk_rate else 0.0
    dec_wide = 1 / wi["decode"]["256"]["labels_per_cpu_s"]
    bytes_per_label = 8                                     # codes uint8 x 6 + top1 uint16 (default vq, C < 65,536)
    out = {"labels": N, "classes": C, "ipc": args.ipc, "views": args.views, "fp16_bytes": fp16,
           "streams_bits_per_label": bits, "fixed_bytes": fixed, "file_bytes": size,
           "fit_steps": args.steps, "fit_s_here": fit_here, "fit_core_share_here": core_share,
           "fit_s_one_idle_core": fit_idle, "assign_s_here": assign_here, "assign_cpu_s": assign_cpu,
           "write_cpu_s": write_cpu, "encode_s_on_P_idle_processes": procs,
           "decode_cpu_s_per_label_codec": dec_wide, "decode_cpu_s_per_label_stream_access_above_cap": access,
           "resident_stream_bytes": N * bytes_per_label,
           "decode_cpu_ms_per_step": {B: B * (dec_wide + access) * 1e3 for B in (256, 1024)},
           "inputs": {k: os.path.relpath(v, ROOT) for k, v in
                      (("stream", args.stream), ("decode", args.decode), ("wide", args.wide)) if v}}
    if cl:
        out["inputs"]["cli"] = os.path.relpath(args.cli, ROOT)
    print(f"ImageNet-{C} IPC {args.ipc} x {args.views} views: {N:,} labels; FP16 {fp16 / 1e12:.2f} TB")
    for k, v in size.items():
        print(f"  file at the {k}'s stream rate ({bits[k]:.2f} bits/label) + fixed {fixed:,} bytes: "
              f"{v / 1e6:,.0f} MB ({fp16 / v:,.0f}x smaller than FP16)")
    print(f"  fit ({args.steps} steps): {fit_here / 3600:.2f} h as measured here ({core_share:.0%} of a core), "
          f"{fit_idle / 3600:.2f} h on an idle core")
    print(f"  assignment: {assign_here / 3600:.1f} h as measured here; {assign_cpu / 3600:.1f} CPU h "
          f"(+ writing {write_cpu / 3600:.2f} CPU h)")
    for P, v in procs.items():
        print(f"  encode on {P} idle single-thread processes (each fits the same codec): {v / 3600:.2f} h")
    print(f"  decode: {dec_wide * 1e6:.0f} CPU us/label (codec) + {access * 1e6:.0f} us/label (stream access above "
          f"the resident cap): " + ", ".join(f"batch {B}: {v:.0f} CPU ms" for B, v in out["decode_cpu_ms_per_step"].items()))
    _save(out, args.json or os.path.join(RESULTS, "scale_projection.json"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, n):
        p.add_argument("--n", type=int, default=n, help="labels")
        p.add_argument("--source", default=None, help="real teacher labels .npy ([images, views, C] or [N, C])")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--steps", type=int, default=None, help="vq fit steps (default: the codec's, 3000)")
        p.add_argument("--vq-opt", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--threads", type=int, default=1, help="torch threads (1: the 2 cores are shared with other jobs)")
        p.add_argument("--work", default=os.path.join(CACHE, "scale"), help="folder for the files written")
        p.add_argument("--keep", action="store_true", help="keep the files written")
        p.add_argument("--json", default=None)

    s = sub.add_parser("stream")
    common(s, 15_000_000)
    s.add_argument("--batch", type=int, default=16384, help="labels per append (a teacher batch)")
    s.add_argument("--baseline-n", type=int, default=132_000)
    s.add_argument("--no-decode", dest="decode", action="store_false")
    s.add_argument("--decode-batches", type=int, default=600)
    s.add_argument("--repeats", type=int, default=3)
    d = sub.add_parser("decode")
    d.add_argument("file")
    d.add_argument("--baseline", required=True)
    d.add_argument("--batch", type=int, default=256)
    d.add_argument("--batches", type=int, default=600)
    d.add_argument("--repeats", type=int, default=3)
    d.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    d.add_argument("--no-over-cap", dest="over_cap", action="store_false",
                   help="skip the runs with streams read chunk by chunk (as above the resident cap)")
    d.add_argument("--threads", type=int, default=1,
                   help="torch threads of the decoding process (workers use 1)")
    d.add_argument("--json", default=None)
    c = sub.add_parser("cli")
    common(c, 1_500_000)
    c.add_argument("--batch", type=int, default=16384)
    c.add_argument("--ranks", type=int, default=2)
    c.add_argument("--shards", type=int, default=4)
    c.add_argument("--modes", nargs="+", default=["single", "distributed", "shards"])
    c.add_argument("--reuse-npy", action="store_true", help="keep the .npy and reuse it when present")
    wd = sub.add_parser("wide")
    common(wd, 65536)
    wd.add_argument("--classes", type=int, default=WIDE_CLASSES)
    wd.add_argument("--batch", type=int, default=4096)
    wd.add_argument("--fit-sample", type=int, default=16384)
    wd.add_argument("--repeats", type=int, default=3)
    pr = sub.add_parser("project")
    pr.add_argument("--stream", required=True, help="scale_stream_*.json")
    pr.add_argument("--decode", required=True, help="scale_decode_*.json (with the chunked rows)")
    pr.add_argument("--wide", required=True, help="scale_wide_*.json")
    pr.add_argument("--cli", default=None, help="scale_cli_*.json")
    pr.add_argument("--ipc", type=int, default=10)
    pr.add_argument("--views", type=int, default=300)
    pr.add_argument("--steps", type=int, default=3000, help="fit steps of the projected encode (vq default)")
    pr.add_argument("--procs", type=int, nargs="+", default=[2, 8, 64])
    pr.add_argument("--extra-bits", action="append", default=[], metavar="NAME=BITS",
                    help="another measured stream rate (bits/label) to size the file with")
    pr.add_argument("--json", default=None)
    args = ap.parse_args()
    {"stream": cmd_stream, "decode": cmd_decode, "cli": cmd_cli, "wide": cmd_wide,
     "project": cmd_project}[args.cmd](args)


if __name__ == "__main__":
    main()
