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


def measure(path: str, ref: np.ndarray) -> dict:
    C = ref.shape[-1]
    with slcodec.open(path) as r:
        dec = r.decode(None, as_="logits").reshape(-1, C).numpy()
    with Container.open(path) as c:
        st = file_stats(c)
    if st["labels"] != len(ref) or st["file_bytes"] != os.path.getsize(path):
        raise SystemExit(f"{path}: file stats disagree with the input ({st['labels']} labels)")
    m = B.metrics(ref, dec, TEMPS)
    return {"bytes": st["file_bytes"], "bits_per_label": st["bits_per_label"], "fixed_bytes": st["fixed_bytes"],
            "marginal_bits": st["marginal_bits_per_label"], **m}


def run_all_part(src: Path, ref: np.ndarray, only, log, configs=None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for codec, label, opts in CODECS:
            if (only and codec not in only) or (configs and label not in configs):
                continue
            path = os.path.join(tmp, "f.vqsl")
            sec, rss = encode_in_child(src, path, codec, opts)
            row = {"part": "all", "method": f"slcodec {codec}", "config": label, "labels": len(ref),
                   **measure(path, ref), "encode_s": round(sec, 1), "peak_rss_mib": round(rss)}
            os.remove(path)
            rows.append(row)
            log(row)
    for name, params in BASELINES:
        if only and name not in only:
            continue
        info = {}
        t0 = time.perf_counter()
        nbytes, dec = B.METHODS[name](ref, info=info, **params)
        sec = time.perf_counter() - t0
        row = {"part": "all", "method": name, "config": B.fmt_params(params), "labels": len(ref), "bytes": nbytes,
               "bits_per_label": nbytes * 8 / len(ref), "fixed_bytes": info["fixed_bytes"],
               "marginal_bits": info["per_label_bytes"] * 8 / len(ref), **B.metrics(ref, dec, TEMPS),
               "encode_s": round(sec, 1), "peak_rss_mib": None}
        rows.append(row)
        log(row)
    return rows


def run_heldout_part(x: np.ndarray, only, log) -> list[dict]:
    """Fit on the first 80% of the images, write the other 20% with the same parameters."""
    from rate_distortion import write_with_codec

    I, V, C = x.shape
    nfit = int(round(0.8 * I))
    fit_all = x[:nfit].reshape(-1, C)
    held = x[nfit:].reshape(-1, C)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for codec_id, label, opts in CODECS:
            if codec_id not in HELDOUT or (only and codec_id not in only) or opts.get("image_bias") == "on":
                continue
            codec = get_codec_class(codec_id)(**opts)
            ctx = Context(source_kind="logits", classes=C, device="cpu", seed=0)
            # the codec's default fit sample: evenly spaced rows of the fitted images
            n_fit = min(len(fit_all), int(getattr(codec, "config", {}).get("fit_sample", 100_000)))
            sample = fit_all[np.linspace(0, len(fit_all) - 1, n_fit).round().astype(np.int64)]
            t0 = time.perf_counter()
            codec.fit(torch.from_numpy(np.ascontiguousarray(sample)), ctx)
            fit_s = time.perf_counter() - t0
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
                "| encode s | peak RSS MiB |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for i, r in enumerate(pr):
            k1 = f"**{r['kl_T1']:.4f}**" if i in f1 else f"{r['kl_T1']:.4f}"
            k4 = f"**{r['kl_T4']:.5f}**" if i in f4 else f"{r['kl_T4']:.5f}"
            rss = "-" if r.get("peak_rss_mib") is None else f"{r['peak_rss_mib']:,}"
            out.append(f"| {r['method']} | {r['config']} | {r['bits_per_label']:.1f} | {r['marginal_bits']:.1f} | "
                       f"{k1} | {k4} | {r['kl_T20']:.6f} | {r['top1'] * 100:.2f}% | {r['top5']:.3f} | "
                       f"{r['encode_s']:.1f} | {rss} |")
        out.append("")
    out.append("Bold: on the Pareto front of bits (all counted) against KL at that temperature, among the rows "
               "of the part with top-1 >= 99%.")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", type=Path, help="[images, views, C] logits .npy (imagenet_corpus.py)")
    ap.add_argument("--out", type=Path, required=True, help="output stem: writes <out>.json and <out>.md")
    ap.add_argument("--only", nargs="+", default=None, help="only these codecs / baselines")
    ap.add_argument("--heldout", action="store_true", help="also the held-out-images part")
    ap.add_argument("--configs", nargs="+", default=None, help="only the slcodec configurations with these labels")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of an existing <out>.json that this run does not redo")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        x = np.load(args.corpus, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{args.corpus}: not a readable .npy file ({e})")
    if x.ndim != 3 or x.dtype.kind != "f":
        raise SystemExit(f"{args.corpus}: expected float logits [images, views, C], got {x.dtype} {x.shape}")
    ref = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    only = set(args.only) if args.only else None
    t0 = time.perf_counter()

    def log(r):
        print(f"  {r['part']:8s} {r['method']:16s} {r['config']:28s} {r['bits_per_label']:9.1f} bits  "
              f"KL {r['kl_T1']:.4f} / {r['kl_T4']:.5f} / {r['kl_T20']:.6f}  top1 {r['top1']:.4f}  "
              f"top5 {r['top5']:.3f}  [{r['encode_s']:.1f}s]", flush=True)

    rows = run_all_part(args.corpus, ref, only, log, set(args.configs) if args.configs else None)
    if args.heldout:
        rows += run_heldout_part(np.asarray(x, dtype=np.float32), only, log)
    out_json = Path(str(args.out) + ".json")
    commands = []
    if args.merge and out_json.exists():
        old = json.loads(out_json.read_text())
        done = {(r["part"], r["method"], r["config"]) for r in rows}
        rows = [r for r in old["rows"] if (r["part"], r["method"], r["config"]) not in done] + rows
        commands = old["meta"].get("commands", [old["meta"].get("command")])
    title = f"{args.corpus.name} {x.shape[0]}x{x.shape[1]} (C={x.shape[2]})"
    md = markdown(rows, title)
    print(md)
    command = "python " + " ".join([os.path.relpath(__file__, HERE.parent)] + (argv or sys.argv[1:]))
    meta = {"command": command, "commands": commands + [command],
            "corpus": args.corpus.name, "shape": list(x.shape), "torch": torch.__version__,
            "slcodec": slcodec.__version__, "threads": args.threads, "seconds": round(time.perf_counter() - t0, 1),
            "cpu_count": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    Path(str(args.out) + ".md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
