"""vq's decoder stored as int8 (format 1.5) against float16, on the same fitted codec.

One fit per label set (``param_dtype="auto"``, so the run also records what auto decided and the
fit-sample KL it decided on); the fitted float32 weights are then stored four ways - float32,
float16, int8 with the per-channel clip search (what slcodec writes) and int8 with plain
max-abs scales - and each is written as a real .vqsl file by :class:`slcodec.Writer` (the
encoder's codes are the same for all; each file's ``top1`` stream is computed with its own
decoder).  Per file: the fixed part (params bytes), bits per label with every byte of the file
counted, mean KL(p||q) at T = 1 and T = 4 over all labels, top-1 agreement.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/vq_int8.py slcodec/data/lite0_8x64_fp16.npy \\
        benchmarks/.cache/corpus_small.npy --steps 3000 1000 --json benchmarks/results/vq_int8.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import slcodec  # noqa: E402
from slcodec.codecs.vq import fit as vq_fit  # noqa: E402
from slcodec.codecs.vq.quant import quantise  # noqa: E402

VARIANTS = ("float32", "float16", "int8", "int8-maxabs")


def stored(f32: dict, variant: str) -> dict:
    if variant == "int8":
        return quantise(f32, clip=True)
    if variant == "int8-maxabs":
        return quantise(f32, clip=False)
    return {k: v.astype(variant) for k, v in f32.items()}


def kl_top1(path, x: np.ndarray, temps=(1.0, 4.0), block=8192):
    """Mean KL(p_T || q_T) at each T and top-1 agreement of the file's decoded labels vs ``x [n, C]``."""
    kl, agree = np.zeros(len(temps)), 0
    with slcodec.open(path) as r:
        n = r.count
        for i in range(0, n, block):
            rows = np.arange(i, min(n, i + block))
            z = r.decode(rows, as_="logits").reshape(len(rows), -1).float()
            t = torch.from_numpy(x[i:i + len(rows)].astype(np.float32))
            agree += int((z.argmax(1) == t.argmax(1)).sum())
            for j, T in enumerate(temps):
                lp = torch.log_softmax(t / T, 1)
                kl[j] += float((lp.exp() * (lp - torch.log_softmax(z / T, 1))).sum())
    return [float(v / n) for v in kl], agree / n


def run(path, steps, threads, seed=0, folder=None):
    a = np.load(path)
    shape = list(a.shape[:-1])
    C = a.shape[-1]
    x = a.reshape(-1, C)
    n = x.shape[0]
    opts = {"steps": steps, "image_bias": "off", "fit_threads": threads}
    captured = {}
    original = vq_fit.choose_param_dtype

    def capture(codec, f32, tr, idx_all):      # the fitted float32 weights, and auto's own decision
        captured["f32"] = {k: v.copy() for k, v in f32.items()}
        captured["choice"] = original(codec, f32, tr, idx_all)
        return captured["choice"]

    vq_fit.choose_param_dtype = capture
    try:
        w0 = slcodec.Writer(os.path.join(folder, "fit.vqsl"), codec="vq", classes=C, shape=shape, seed=seed, **opts)
        t0 = time.perf_counter()
        w0.fit(torch.from_numpy(x[: w0.fit_sample]), rows=np.arange(min(n, w0.fit_sample)))
        fit_s = time.perf_counter() - t0
    finally:
        vq_fit.choose_param_dtype = original
    base = w0.codec
    w0.abort()
    out = {"file": path, "labels": n, "classes": C, "shape": shape, "steps": steps, "fit_seconds": round(fit_s, 1),
           "fit_rows": base.fit_info["fit_rows"], "auto": captured["choice"], "variants": {}}
    print(f"{path}: {n} labels, fit {fit_s:.0f} s on {out['fit_rows']} rows; auto -> {captured['choice']['chosen']} "
          f"(fit-sample KL float16 {captured['choice']['kl_float16']}, int8 {captured['choice']['kl_int8']})", flush=True)
    for v in VARIANTS:
        codec = copy.copy(base)
        codec.config = dict(base.config, param_dtype="int8" if v.startswith("int8") else v)
        params = stored(captured["f32"], v)
        codec._set_decoder(params)
        codec.fit_info = dict(base.fit_info, param_bytes=int(sum(p.nbytes for p in params.values())))
        codec.fit = lambda sample, ctx: None          # already fitted: the Writer only encodes with it
        p = os.path.join(folder, f"{v}.vqsl")
        w = slcodec.Writer(p, codec="vq", classes=C, shape=shape, seed=seed, **opts)
        w.codec = codec
        w.fit(torch.from_numpy(x[:1]), rows=np.arange(1))
        for i in range(0, n, 8192):
            w.append(torch.from_numpy(x[i:i + 8192]))
        w.close()
        kl, top1 = kl_top1(p, x)
        fixed = sum(a.nbytes for a in params.values())
        size = os.path.getsize(p)
        out["variants"][v] = {"fixed_bytes": int(fixed), "file_bytes": int(size), "bits_per_label": 8 * size / n,
                              "fixed_bits_per_label": 8 * fixed / n, "kl": kl, "top1": top1}
        print(f"  {v:<12} fixed {fixed:>9,} B  file {size:>11,} B  {8 * size / n:8.2f} bits/label "
              f"(fixed {8 * fixed / n:6.2f})  KL@1 {kl[0]:.5f}  KL@4 {kl[1]:.6f}  top-1 {top1:.4f}", flush=True)
    clip, plain = stored(captured["f32"], "int8"), stored(captured["f32"], "int8-maxabs")
    scales = [k for k in clip if k.endswith("_scale")]
    out["clipped_channels"] = int(sum(int((clip[k] != plain[k]).sum()) for k in scales))
    out["channels"] = int(sum(clip[k].size for k in scales))
    print(f"  clip search: {out['clipped_channels']} of {out['channels']} channels scaled below max |w| / 127")
    ref = out["variants"]["float16"]
    for v in VARIANTS:
        d = out["variants"][v]
        d["kl_ratio_vs_float16"] = [a / b for a, b in zip(d["kl"], ref["kl"])]
        d["bits_saved_vs_float16"] = ref["bits_per_label"] - d["bits_per_label"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--steps", type=int, nargs="+", default=[3000], help="fit steps, one per file or one for all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    steps = a.steps * len(a.files) if len(a.steps) == 1 else a.steps
    results = []
    for f, s in zip(a.files, steps):
        with tempfile.TemporaryDirectory() as d:
            results.append(run(f, s, a.threads, folder=d))
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
