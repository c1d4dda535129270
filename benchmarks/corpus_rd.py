#!/usr/bin/env python3
"""Rate-distortion on the 1,000-class corpus (issue 14): every method, one file of the whole corpus.

    python benchmarks/corpus_rd.py benchmarks/.cache/corpus_small.npy --out benchmarks/results/corpus_rd_small
    python benchmarks/corpus_rd.py benchmarks/.cache/corpus_full.npy --out benchmarks/results/corpus_rd_full

The corpus (``benchmarks/data/imagenet_corpus.py``: EfficientNet-Lite0 logits, FP16,
``[images, views, 1000]``) is stored the way a user stores it:

``all``       every label in one ``.vqsl`` file written by :func:`slcodec.encode` with the codec's
              defaults (a learned codec is fitted on its default fit sample of evenly spaced rows,
              so at this scale most labels are outside the fit sample). Each encode runs in a child
              process reading the memory-mapped ``.npy``; its wall time and peak RSS (``wait4``) are reported.
``held-out``  (``--heldout``) codecs with learned parameters (``vq``, ``sparse``, ``sq``) fitted on
              the first 80% of the images and used, unchanged, for a file of the other 20%
              (``rate_distortion.write_with_codec``).

Simple methods are slcodec codecs since issue 15: ``imgprior`` (per-image mean log-probabilities
stored once per image, uint8 companded, + a per-view top-k residual; ``k = 0``: the mean + a stored
argmax fix) and ``sq`` (companded scalar quantisation of the log-probabilities at b bits with
per-level centroids + argmax fix). Baselines from ``benchmarks/baselines.py``: FP16, FKD and LPQLD
top-k, uint8 log-probabilities (bytes of a real blob each).

Reported: bits per label all counted (file bytes x 8 / labels) and marginal (label streams only),
KL(p||q) at T = 1, 4, 20 (mean nats), top-1 agreement, top-5 overlap, encode seconds and peak RSS.
The Pareto fronts (bits all counted vs KL at T = 1 and at T = 4) are taken over rows with top-1
>= 99%. Times are one run on 2 shared cores (other jobs were running): compare them within a table.
Outputs ``<out>.json`` and ``<out>.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import baselines as B  # noqa: E402

import slcodec  # noqa: E402
from slcodec.codecs import get_codec_class  # noqa: E402
from slcodec.codecs.base import Context  # noqa: E402
from slcodec.format.container import Container  # noqa: E402
from slcodec.format.stats import file_stats  # noqa: E402

TEMPS = (1, 4, 20)

# (codec, label, options) of the slcodec codecs
CODECS = ([("vq", "default", {}),
           ("vq", "bits=16 hidden=64 layers=0", {"bits": 16, "hidden": 64, "decoder_layers": 0}),
           ("vq", "image_bias=on", {"image_bias": "on"})]
          + [("sparse", f"k={k}", {"k": k}) for k in (1, 2, 5, 20)]
          + [("topk", "k=5", {"k": 5})]
          + [("sq", f"b={b}", {"bits_per_class": b}) for b in (3, 5)]
          + [("imgprior", f"k={k}", {"residual_k": k}) for k in (0, 4, 8, 20)])
BASELINES = ([("fp16", {})]
             + [("fkd_topk", {"k": k, "zstd_level": 19}) for k in (1, 5, 20)]
             + [("lpqld_topk", {"k": 10, "refill": "stored_min"})]
             + [("uint8_logprobs", {"scale": "row"})])
HELDOUT = ("vq", "sparse", "sq")


ENCODE_CHILD = ("import json, sys, numpy as np, slcodec; "
                "slcodec.encode(np.load(sys.argv[1], mmap_mode='r'), sys.argv[2], codec=sys.argv[3], seed=0, "
                "**json.loads(sys.argv[4]))")


def encode_in_child(src: Path, path: str, codec: str, opts: dict) -> tuple[float, float]:
    """slcodec.encode of the memory-mapped corpus in a fresh interpreter: (wall seconds, peak RSS MiB).

    A new process (not a fork: a fork of a process whose OpenMP pool is running can deadlock),
    waited for with ``wait4`` to read its own peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", ENCODE_CHILD, str(src), path, codec, json.dumps(opts)],
                            cwd=str(HERE.parent))
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{src}: encoding with {codec} {opts} failed (exit {proc.returncode})")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024.0


class MetricSum:
    """Weighted sums of :func:`baselines.metrics` over row blocks, so that neither the reference
    nor the decoded labels are held whole (300,000 x 1,000 float32 is 1.2 GB each; KL is summed in
    float64 block by block inside ``baselines.metrics``). Rows >= ``tail_from`` are summed apart
    too (``tail_*``: the images the held-out part leaves out of its fit, measured in this file)."""

    def __init__(self, tail_from: int | None = None):
        self.tail_from, self.sums, self.tail, self.n, self.n_tail = tail_from, {}, {}, 0, 0

    @staticmethod
    def _add(acc: dict, m: dict, w: int) -> None:
        for k, v in m.items():
            acc[k] = acc.get(k, 0.0) + v * w

    def add(self, start: int, ref: np.ndarray, dec: np.ndarray, batch: int = 16384) -> None:
        for s in range(0, len(ref), batch):
            r, d = ref[s:s + batch], dec[s:s + batch]
            self._add(self.sums, B.metrics(r, d, TEMPS), len(r))
            self.n += len(r)
            if self.tail_from is not None:
                a = max(0, self.tail_from - (start + s))
                if a < len(r):
                    self._add(self.tail, B.metrics(r[a:], d[a:], TEMPS), len(r) - a)
                    self.n_tail += len(r) - a

    def result(self) -> dict:
        out = {k: v / self.n for k, v in self.sums.items()}
        if self.n_tail:
            out.update({f"tail_{k}": v / self.n_tail for k, v in self.tail.items()})
        return out


def measure(path: str, x: np.ndarray, tail_from: int | None = None, batch: int = 16384) -> dict:
    """File statistics of ``path`` and the metrics of its labels against ``x`` ([N, C], float, may be
    memory-mapped), decoded ``batch`` rows at a time."""
    n, C = x.shape
    with Container.open(path) as c:
        st = file_stats(c)
    if st["labels"] != n or st["file_bytes"] != os.path.getsize(path):
        raise SystemExit(f"{path}: file stats disagree with the input ({st['labels']} labels)")
    acc = MetricSum(tail_from)
    with slcodec.open(path) as r:
        for s in range(0, n, batch):
            e = min(n, s + batch)
            dec = r.decode(np.arange(s, e), as_="logits").reshape(-1, C).numpy()
            acc.add(s, np.asarray(x[s:e], dtype=np.float32), dec)
    return {"bytes": st["file_bytes"], "bits_per_label": st["bits_per_label"], "fixed_bytes": st["fixed_bytes"],
            "marginal_bits": st["marginal_bits_per_label"], **acc.result()}


def run_baseline(name: str, params: dict, x: np.ndarray, blob_rows: int, tail_from: int | None) -> dict:
    """A baseline of ``baselines.py`` over ``x`` as blobs of ``blob_rows`` labels, each a real blob
    encoded and decoded by the method (bytes of all blobs summed: each blob's header counts).
    ``encode_s`` times the method (encode + decode) only, not the metrics."""
    n = len(x)
    nbytes = fixed = per_label = blobs = 0
    sec = 0.0
    acc = MetricSum(tail_from)
    for s in range(0, n, blob_rows):
        e = min(n, s + blob_rows)
        ref = np.asarray(x[s:e], dtype=np.float32)
        info = {}
        t0 = time.perf_counter()
        nb, dec = B.METHODS[name](ref, info=info, **params)
        sec += time.perf_counter() - t0
        nbytes, fixed, per_label, blobs = nbytes + nb, fixed + info["fixed_bytes"], \
            per_label + info["per_label_bytes"], blobs + 1
        acc.add(s, ref, dec)
        del dec
    return {"bytes": nbytes, "blobs": blobs, "bits_per_label": nbytes * 8 / n, "fixed_bytes": fixed,
            "marginal_bits": per_label * 8 / n, **acc.result(), "encode_s": round(sec, 1), "peak_rss_mib": None}


def run_all_part(src: Path, x: np.ndarray, only, log, configs=None, blob_rows: int = 60_000,
                 tail_from: int | None = None) -> list[dict]:
    n = x.shape[0] * x.shape[1]
    flat = x.reshape(n, x.shape[-1])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for codec, label, opts in CODECS:
            if (only and codec not in only) or (configs and label not in configs):
                continue
            path = os.path.join(tmp, "f.vqsl")
            sec, rss = encode_in_child(src, path, codec, opts)
            row = {"part": "all", "method": f"slcodec {codec}", "config": label, "labels": n,
                   **measure(path, flat, tail_from), "encode_s": round(sec, 1), "peak_rss_mib": round(rss)}
            os.remove(path)
            rows.append(row)
            log(row)
    for name, params in BASELINES:
        if (only and name not in only) or (configs and B.fmt_params(params) not in configs):
            continue
        row = {"part": "all", "method": name, "config": B.fmt_params(params), "labels": n,
               **run_baseline(name, params, flat, blob_rows, tail_from)}
        rows.append(row)
        log(row)
    return rows


def run_heldout_part(x: np.ndarray, only, log, configs=None) -> list[dict]:
    """Fit on the first 80% of the images, write the other 20% with the same parameters."""
    from rate_distortion import write_with_codec

    I, V, C = x.shape
    nfit = int(round(0.8 * I))
    fit_all = x[:nfit].reshape(-1, C)          # memory-mapped: only the fit sample is read
    held = np.asarray(x[nfit:], dtype=np.float32).reshape(-1, C)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for codec_id, label, opts in CODECS:
            if codec_id not in HELDOUT or (only and codec_id not in only) or opts.get("image_bias") == "on" \
                    or (configs and label not in configs):
                continue
            codec = get_codec_class(codec_id)(**opts)
            ctx = Context(source_kind="logits", classes=C, device="cpu", seed=0)
            # the codec's default fit sample: evenly spaced rows of the fitted images
            n_fit = min(len(fit_all), int(getattr(codec, "config", {}).get("fit_sample", 100_000)))
            sample = np.asarray(fit_all[np.linspace(0, len(fit_all) - 1, n_fit).round().astype(np.int64)],
                                dtype=np.float32)
            t0 = time.perf_counter()
            codec.fit(torch.from_numpy(sample), ctx)
            fit_s = time.perf_counter() - t0
            del sample
            path = os.path.join(tmp, "h.vqsl")
            t1 = time.perf_counter()
            write_with_codec(path, codec, held, [I - nfit, V], opts, C)
            row = {"part": "held-out", "method": f"slcodec {codec_id}", "config": label, "labels": len(held),
                   **measure(path, held), "fit_s": round(fit_s, 1),
                   "encode_s": round(time.perf_counter() - t1, 1), "peak_rss_mib": None}
            rows.append(row)
            log(row)
    return rows


def fronts(rows: list[dict], key: str) -> set[int]:
    ok = [i for i, r in enumerate(rows) if r["top1"] >= 0.99]
    keep = set()
    for i in ok:
        a = rows[i]
        if not any(rows[j]["bits_per_label"] <= a["bits_per_label"] and rows[j][key] <= a[key]
                   and (rows[j]["bits_per_label"] < a["bits_per_label"] or rows[j][key] < a[key]) for j in ok):
            keep.add(i)
    return keep


def markdown(rows: list[dict], title: str) -> str:
    out = []
    for part in dict.fromkeys(r["part"] for r in rows):
        pr = sorted((r for r in rows if r["part"] == part), key=lambda r: r["bits_per_label"])
        f1, f4 = fronts(pr, "kl_T1"), fronts(pr, "kl_T4")
        out += [f"#### {title}, {part}: {pr[0]['labels']:,} labels", "",
                "| method | config | bits/label (all) | marginal | KL T=1 | KL T=4 | KL T=20 | top-1 | top-5 "
                "| encode s | peak RSS MiB | load |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for i, r in enumerate(pr):
            k1 = f"**{r['kl_T1']:.4f}**" if i in f1 else f"{r['kl_T1']:.4f}"
            k4 = f"**{r['kl_T4']:.5f}**" if i in f4 else f"{r['kl_T4']:.5f}"
            rss = "-" if r.get("peak_rss_mib") is None else f"{r['peak_rss_mib']:,}"
            load = "-" if r.get("load") is None else f"{r['load']:.1f}"
            out.append(f"| {r['method']} | {r['config']} | {r['bits_per_label']:.1f} | {r['marginal_bits']:.1f} | "
                       f"{k1} | {k4} | {r['kl_T20']:.6f} | {r['top1'] * 100:.2f}% | {r['top5']:.3f} | "
                       f"{r['encode_s']:.1f} | {rss} | {load} |")
        out.append("")
    pairs = [(h, a) for h in rows if h["part"] == "held-out" for a in rows
             if a["part"] == "all" and (a["method"], a["config"]) == (h["method"], h["config"]) and "tail_kl_T1" in a]
    if pairs:
        out += ["#### The held-out images: in the file of every label vs in a file fitted without them", "",
                "| method | config | KL T=1 in-file | held-out | KL T=4 in-file | held-out | top-5 in-file | held-out "
                "| bits all counted in-file (whole file) | held-out file |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for h, a in pairs:
            out.append(f"| {h['method']} | {h['config']} | {a['tail_kl_T1']:.4f} | {h['kl_T1']:.4f} | "
                       f"{a['tail_kl_T4']:.5f} | {h['kl_T4']:.5f} | {a['tail_top5']:.3f} | {h['top5']:.3f} | "
                       f"{a['bits_per_label']:.1f} | {h['bits_per_label']:.1f} |")
        out += ["", "In-file: the rows of the last 20% of the images inside the file of every label (the fit "
                "sample is evenly spaced over all images, so some of their views were fitted on); held-out: "
                "the same images written with parameters fitted on the first 80% only.", ""]
    out.append("Bold: on the Pareto front of bits (all counted) against KL at that temperature, among the rows "
               "of the part with top-1 >= 99%. Load: the 1-minute load average when the row finished (2 cores).")
    return "\n".join(out) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", type=Path, help="[images, views, C] logits .npy (imagenet_corpus.py)")
    ap.add_argument("--out", type=Path, required=True, help="output stem: writes <out>.json and <out>.md")
    ap.add_argument("--only", nargs="+", default=None, help="only these codecs / baselines")
    ap.add_argument("--heldout", action="store_true", help="also the held-out-images part")
    ap.add_argument("--no-all", action="store_true", help="skip the file-of-every-label part")
    ap.add_argument("--configs", nargs="+", default=None,
                    help="only the configurations with these labels (slcodec labels, baseline parameters)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of an existing <out>.json that this run does not redo")
    ap.add_argument("--blob-rows", type=int, default=60_000,
                    help="baselines encode the corpus as blobs of this many labels (memory), bytes summed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--note", default=None,
                    help="stored in the JSON's meta (e.g. which commit the code is: a run from a `git archive`)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        x = np.load(args.corpus, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{args.corpus}: not a readable .npy file ({e})")
    if x.ndim != 3 or x.dtype.kind != "f":
        raise SystemExit(f"{args.corpus}: expected float logits [images, views, C], got {x.dtype} {x.shape}")
    only = set(args.only) if args.only else None
    configs = set(args.configs) if args.configs else None
    t0 = time.perf_counter()
    out_json = Path(str(args.out) + ".json")
    old_rows, commands, notes = [], [], []
    if args.merge and out_json.exists():
        old = json.loads(out_json.read_text())
        old_rows = old["rows"]
        commands = old["meta"].get("commands", [old["meta"].get("command")])
        notes = old["meta"].get("notes", [])
    command = "python " + " ".join([os.path.relpath(__file__, HERE.parent)] + (argv or sys.argv[1:]))
    title = f"{args.corpus.name} {x.shape[0]}x{x.shape[1]} (C={x.shape[2]})"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new_rows: list[dict] = []

    def save():
        # after every row, so that a run stopped half-way keeps what it measured
        done = {(r["part"], r["method"], r["config"]) for r in new_rows}
        rows = [r for r in old_rows if (r["part"], r["method"], r["config"]) not in done] + new_rows
        meta = {"command": command, "commands": commands + [command],
                "corpus": args.corpus.name, "shape": list(x.shape), "torch": torch.__version__,
                "slcodec": slcodec.__version__, "threads": args.threads,
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "blob_rows": args.blob_rows,
                "seconds": round(time.perf_counter() - t0, 1), "cpu_count": os.cpu_count(),
                "notes": notes + ([args.note] if args.note else [])}
        _write_atomic(out_json, json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        md = markdown(rows, title) if rows else ""
        _write_atomic(Path(str(args.out) + ".md"), md)
        return md

    def log(r):
        r["load"] = round(os.getloadavg()[0], 2)
        new_rows.append(r)
        save()
        print(f"  {r['part']:8s} {r['method']:16s} {r['config']:28s} {r['bits_per_label']:9.1f} bits  "
              f"KL {r['kl_T1']:.4f} / {r['kl_T4']:.5f} / {r['kl_T20']:.6f}  top1 {r['top1']:.4f}  "
              f"top5 {r['top5']:.3f}  [{r['encode_s']:.1f}s, load {r['load']}]", flush=True)

    tail_from = int(round(0.8 * x.shape[0])) * x.shape[1]
    if not args.no_all:
        run_all_part(args.corpus, x, only, log, configs, args.blob_rows, tail_from)
    if args.heldout:
        run_heldout_part(x, only, log, configs)
    print(save())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
