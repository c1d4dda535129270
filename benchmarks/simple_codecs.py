#!/usr/bin/env python3
"""The simple codecs of issue 15 (``sq``, ``imgprior``) against ``topk``, ``sparse`` and ``vq``, in one run.

Every configuration encodes the whole label set into one ``.vqsl`` file with
:func:`slcodec.encode` (fitted on its default fit sample, as a user stores it) and is scored
on every label of it: bits per label of the whole file (everything counted: header, params,
streams), KL(p||q) at T = 1 and 4 (mean over labels, nats), top-1 agreement and the encode time.
Fidelity and bits are deterministic (seed 0); times are one run on shared cores.

Label sets (``--data``, repeatable):
    ``fixture``: the committed real-teacher fixture ``slcodec/data/lite0_8x64_fp16.npy``
    (EfficientNet-Lite0, 8 images x 64 views, C = 1000);
    a ``.npz`` with ``logits [images, views, C]`` (``benchmarks/data/fashion_mnist.py`` writes
    ``fmnist_ipc10.npz``) or a ``.npy`` of ``[images, views, C]`` logits.

Example:
    python benchmarks/simple_codecs.py --data fixture --data benchmarks/.cache/fmnist_ipc10.npz \\
        --json benchmarks/results/simple_codecs.json --md benchmarks/results/simple_codecs.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import slcodec  # noqa: E402
from slcodec.pipeline.metrics import compare  # noqa: E402

FIXTURE = ROOT / "slcodec" / "data" / "lite0_8x64_fp16.npy"
TEMPS = (1.0, 4.0)


def configs(C: int) -> list[tuple[str, str, dict]]:
    small = C <= 64
    out = [("topk", f"k={k}", {"k": k}) for k in ((1, 2, 3) if small else (5, 10, 20))]
    out += [("sparse", f"k={k}", {"k": k}) for k in ((1, 2, 3) if small else (2, 5, 10, 20))]
    if not small:
        out += [("sparse", "k=5 prior_classes=64", {"k": 5, "prior_classes": 64})]
    out += [("vq", "default", {}), ("vq", "bits=16 hidden=64 layers=0", {"bits": 16, "hidden": 64,
                                                                         "decoder_layers": 0})]
    out += [("sq", f"b={b}", {"bits_per_class": b}) for b in ((2, 3, 4, 5, 6) if small else (2, 3))]
    out += [("sq", "b=3 quantile", {"bits_per_class": 3, "quantiser": "quantile"})]
    out += [("imgprior", f"k={k}", {"residual_k": k}) for k in ((0, 1, 2, 3) if small else (0, 4, 8, 20))]
    out += [("imgprior", f"k={k} step=1/16", {"residual_k": k, "residual_step": 1 / 16})
            for k in ((2,) if small else (8,))]
    return out


def load(spec: str) -> tuple[str, np.ndarray]:
    if spec == "fixture":
        return "fixture lite0 8x64 (C=1000)", np.load(FIXTURE).astype(np.float32)
    p = Path(spec)
    x = np.load(p)["logits"] if p.suffix == ".npz" else np.load(p)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise SystemExit(f"{spec}: expected [images, views, C] logits, got shape {list(x.shape)}")
    return f"{p.name} {x.shape[0]}x{x.shape[1]} (C={x.shape[2]})", x


def run(name: str, x: np.ndarray, only: set[str] | None, log) -> list[dict]:
    C = x.shape[-1]
    ref = torch.from_numpy(x.reshape(-1, C))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for codec, label, opts in configs(C):
            if only and codec not in only:
                continue
            path = os.path.join(tmp, "f.vqsl")
            t0 = time.perf_counter()
            slcodec.encode(x, path, codec=codec, seed=0, **opts)
            dt = time.perf_counter() - t0
            with slcodec.open(path) as r:
                q = r.decode(None, as_="log_probs").reshape(-1, C)
                stream_bytes = sum(s["length"] for s in r.header["sections"] if s["name"].startswith("streams/"))
            m = compare(ref, q, TEMPS)
            size = os.path.getsize(path)
            row = {"set": name, "codec": codec, "config": label, "labels": int(ref.shape[0]),
                   "bytes": size, "bits_per_label": size * 8 / ref.shape[0],
                   "marginal_bits": stream_bytes * 8 / ref.shape[0],
                   "kl_T1": m["kl"]["1"], "kl_T4": m["kl"]["4"], "top1": m["top1_agreement"],
                   "top5_overlap": m["top5_overlap"], "encode_s": round(dt, 2)}
            rows.append(row)
            log(f"  {codec:8s} {label:28s} {row['bits_per_label']:9.2f} bits  KL {row['kl_T1']:.4f} / "
                f"{row['kl_T4']:.5f}  top1 {row['top1']:.4f}  [{dt:.1f}s]")
    return rows


def pareto(rows: list[dict], key: str) -> set[int]:
    """Indices of rows not dominated on (bits_per_label, key) by another row of the same set."""
    keep = set()
    for i, a in enumerate(rows):
        if not any(b["bits_per_label"] <= a["bits_per_label"] and b[key] <= a[key]
                   and (b["bits_per_label"] < a["bits_per_label"] or b[key] < a[key]) for b in rows):
            keep.add(i)
    return keep


def markdown(rows: list[dict]) -> str:
    out = []
    for name in dict.fromkeys(r["set"] for r in rows):
        part = sorted((r for r in rows if r["set"] == name), key=lambda r: r["bits_per_label"])
        f1, f4 = pareto(part, "kl_T1"), pareto(part, "kl_T4")
        out += [f"#### {name}: {part[0]['labels']:,} labels", "",
                "| codec | config | bits/label (all) | marginal | KL T=1 | KL T=4 | top-1 | encode s |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for i, r in enumerate(part):
            k1 = f"**{r['kl_T1']:.4f}**" if i in f1 else f"{r['kl_T1']:.4f}"
            k4 = f"**{r['kl_T4']:.5f}**" if i in f4 else f"{r['kl_T4']:.5f}"
            out.append(f"| {r['codec']} | {r['config']} | {r['bits_per_label']:.1f} | {r['marginal_bits']:.1f} | "
                       f"{k1} | {k4} | {r['top1'] * 100:.2f}% | {r['encode_s']:.1f} |")
        out.append("")
    out.append("Bold: on the front of bits (all counted) against that KL within the set.")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", default=None, help="fixture, or a .npz/.npy of [images, views, C]")
    ap.add_argument("--codecs", nargs="+", default=None, help="only these codecs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.data or ["fixture"]:
        name, x = load(spec)
        print(f"{name}: {x.shape[0] * x.shape[1]:,} labels", flush=True)
        rows += run(name, x, set(args.codecs) if args.codecs else None, lambda s: print(s, flush=True))
    md = markdown(rows)
    print(md)
    meta = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv or sys.argv[1:])),
            "torch": torch.__version__, "slcodec": slcodec.__version__, "threads": args.threads}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    if args.md:
        args.md.write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
