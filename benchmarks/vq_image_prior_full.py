#!/usr/bin/env python3
"""vq with and without its image prior on a whole corpus file (issue 16's targets): one ``.vqsl`` of
every label written by :func:`slcodec.encode` with vq's defaults (fitted on its default fit sample,
so most labels are outside it), every byte counted.

    nice -n 19 python benchmarks/vq_image_prior_full.py benchmarks/.cache/corpus_full.npy \
        --configs default image_bias=off --out benchmarks/results/vq_image_prior_full

Configs: ``default`` (no option: ``image_bias=auto``, which picks the sparse prior of format 1.7 on
``[1000, 300, 1000]``), ``image_bias=off``, ``image_bias=sparse``, ``image_bias_k=N``.  Per config:
bits per label all counted (file bytes x 8 / labels), the params and streams parts, KL(p||q) at
T = 1 and 4 over every label, top-1 agreement, top-5 overlap, encode and decode seconds (one run;
cores shared with other jobs, so compare times within a run only).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import baselines as B  # noqa: E402

import slcodec  # noqa: E402
from slcodec.format.container import Container  # noqa: E402
from slcodec.format.stats import file_stats  # noqa: E402

TEMPS = (1, 4)
TARGETS = {"bits": 64.0, "kl_T1": 0.15, "kl_T4": 0.10}   # issue 16, the 1,000-class corpus


def parse_config(text: str) -> dict:
    out = {}
    for part in text.split(","):
        if part == "default":
            continue
        k, _, v = part.partition("=")
        out[k] = int(v) if v.isdigit() else v
    return out


def measure(corpus: Path, label: str, opts: dict, threads: int, tmp: str) -> dict:
    x = np.load(corpus, mmap_mode="r", allow_pickle=False)
    I, V, C = x.shape
    n = I * V
    path = os.path.join(tmp, "f.vqsl")
    t0 = time.perf_counter()
    slcodec.encode(x, path, codec="vq", seed=0, fit_threads=threads, **opts)
    enc_s = time.perf_counter() - t0
    with Container.open(path) as c:
        st = file_stats(c)
        cfg = c.header["codec"]["config"]
        info = c.header["codec"].get("info", {})
        prior_bytes = sum(e["bytes"] for e in st["sections"]
                          if e["name"].startswith(("params/image_prior", "params/image_bias")))
    acc = {f"kl_T{t}": 0.0 for t in TEMPS}
    acc.update(top1=0.0, top5=0.0)
    t1 = time.perf_counter()
    dec_s = 0.0
    with slcodec.open(path) as r:
        for s in range(0, n, 20000):
            idx = np.arange(s, min(n, s + 20000), dtype=np.int64)
            t2 = time.perf_counter()
            q = r.decode(idx, as_="logits").reshape(len(idx), C).numpy()
            dec_s += time.perf_counter() - t2
            p = np.asarray(x.reshape(n, C)[s:s + len(idx)], dtype=np.float32)
            m = B.metrics(p, q, TEMPS)
            for k in acc:
                acc[k] += m[k] * len(idx)
    row = {"config": label, "options": opts, "labels": n, "shape": [I, V, C],
           "stored_config": {k: cfg.get(k) for k in ("image_bias", "image_bias_k", "param_dtype", "bits")},
           "bits_all": st["file_bytes"] * 8 / n, "marginal_bits": st["marginal_bits_per_label"],
           "fixed_bits_per_label": st["fixed_bytes"] * 8 / n, "prior_bits_per_label": prior_bytes * 8 / n,
           **{f"{name}_bits": sum(e["bytes"] for e in st["sections"] if e["name"] == f"streams/{name}") * 8 / n
              for name in ("codes", "top1")},
           **{k: v / n for k, v in acc.items()}, "encode_s": round(enc_s, 1), "decode_s": round(dec_s, 1),
           "fit_s": info.get("fit_seconds"), "metrics_s": round(time.perf_counter() - t1, 1)}
    row["misses"] = {k: (row[k] / t if row[k] > t else None) for k, t in
                     (("bits_all", TARGETS["bits"]), ("kl_T1", TARGETS["kl_T1"]), ("kl_T4", TARGETS["kl_T4"]))}
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--configs", nargs="+", default=["default", "image_bias=off"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--merge", type=Path, nargs="+", default=None, help="only join these JSONs into <out>.json")
    args = ap.parse_args(argv)
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        out = {"meta": {"commands": [p["meta"]["command"] for p in parts]}, "rows": [r for p in parts for r in p["rows"]]}
        Path(str(args.out) + ".json").write_text(json.dumps(out, indent=1) + "\n")
        return 0
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.configs:
            row = measure(args.corpus, label, parse_config(label), args.threads, tmp)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"command": "nice -n 19 python " + " ".join([os.path.relpath(__file__, HERE.parent)]
                                                       + (argv if argv is not None else sys.argv[1:])),
            "torch": torch.__version__, "slcodec": slcodec.__version__, "targets": TARGETS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(args.out) + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
