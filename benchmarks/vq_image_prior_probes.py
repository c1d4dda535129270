#!/usr/bin/env python3
"""Cheap image priors for vq at C = 1000 (issue 16): what does each cost, all counted, and what does
it buy on KL?  Same split, fit sample, step count and seed as ``vq_scale_probes.py`` (section 14 of
BENCHMARKS.md), so the rows compare with that section's.

    nice -n 19 python benchmarks/vq_image_prior_probes.py benchmarks/.cache/corpus_small.npy \
        --steps 300 --fit-sample 12000 --out benchmarks/results/vq_image_prior_probes_small

Split of ``[images, views, C]``: the first 80% of the images are the fit images, vq is fitted on a
sample of their first 80% of views; two real files are written with the fitted parameters:
``held-out views`` (the fit images' other views) and ``held-out images`` (every view of the other
20% of the images, never seen in the fit).  Each file's prior is computed from its own labels, as
``slcodec.encode`` does.

Priors (each file's per-image mean log-probabilities ``m [images, C]``, as the pipeline computes them):

``none``       vq without an image prior;
``fp16``       the exact means, FP16 (format 1.2 ``image_bias=on``): 16 C bits per image;
``uint8``      the means companded to uint8 levels per class with a float32 (top, step) per image
               (``slcodec.codecs.imgprior.quantise_prior``): 8 C + 64 bits per image;
``sparse k``   the sparse prior of format 1.7 (``image_bias=sparse``,
               ``slcodec.codecs.vq.prior.quantise_sparse_prior``): per image its k most likely classes
               (uint16 id + uint8 level) and one FP16 offset of the set's FP16 profile for every other
               class: 24 k + 16 bits per image + 16 C bits per file.

With ``--codec-kind`` the sparse rows run through the codec's own ``image_bias="sparse"`` path (the
params the file stores, counted from the file); without it every prior is handed to vq as a
dequantised table (``set_image_means``; stored as FP16 ``image_bias`` and counted as the bits the
prior's own format needs, the ``params/image_bias`` section replaced by that count).

Bits: ``all counted`` = (file bytes - image_bias section + prior bits) / labels; ``projected
1000x300`` = the decoder amortised over 300,000 labels + the prior's per-image bits over 300 views +
its per-file bits over 300,000 labels + this file's marginal bits per label.
"""
from __future__ import annotations

import argparse
import json
import math
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
from rate_distortion import write_with_codec  # noqa: E402
from vq_scale_probes import image_means, section_bytes  # noqa: E402

import slcodec  # noqa: E402
from slcodec.codecs import get_codec_class  # noqa: E402
from slcodec.codecs.base import Context  # noqa: E402
from slcodec.codecs.imgprior import prior_logits, quantise_prior  # noqa: E402
from slcodec.codecs.vq.prior import quantise_sparse_prior, sparse_prior_table  # noqa: E402
from slcodec.format.container import Container  # noqa: E402
from slcodec.format.stats import file_stats  # noqa: E402

TEMPS = (1, 4)
PROJ_IMAGES, PROJ_VIEWS = 1000, 300
SPARSE_PARAMS = ("params/image_prior_ids", "params/image_prior_levels", "params/image_prior_offset",
                 "params/image_prior_profile")


def prior_table(kind: str, x3: np.ndarray) -> tuple[np.ndarray | None, float, float]:
    """(dequantised table [images, C] float32 or None, bits per image, bits per file)."""
    I, _, C = x3.shape
    if kind == "none":
        return None, 0.0, 0.0
    mu = image_means(x3)
    if kind == "fp16":
        return mu.astype(np.float16).astype(np.float32), 16.0 * C, 0.0
    if kind == "uint8":
        levels, rng = quantise_prior(mu)
        tab = prior_logits(torch.from_numpy(levels), torch.from_numpy(rng)).numpy()
        return tab, 8.0 * C + 64.0, 0.0
    if kind.startswith("sparse"):
        k = int(kind.split()[1])
        p = quantise_sparse_prior(mu, k)
        return sparse_prior_table(p), k * (8.0 * p["image_prior_ids"].itemsize + 8.0) + 16.0, 16.0 * C
    raise ValueError(kind)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--bits", type=float, default=48.0)
    ap.add_argument("--fit-sample", type=int, default=12000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--priors", nargs="+", default=["none", "fp16", "uint8", "sparse 16", "sparse 32", "sparse 64"])
    ap.add_argument("--codec-kind", action="store_true", help="sparse rows through vq's image_bias=sparse")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, help="only join these JSONs into <out>.json/.md")
    args = ap.parse_args(argv)
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        meta = {"commands": [p["meta"]["command"] for p in parts], "seconds": [p["meta"]["seconds"] for p in parts],
                **{k: v for k, v in parts[0]["meta"].items() if k not in ("command", "seconds")}}
        rows = [r for p in parts for r in p["rows"]]
        Path(str(args.out) + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        Path(str(args.out) + ".md").write_text(markdown(rows))
        return 0
    torch.set_num_threads(args.threads)
    x = np.load(args.corpus, mmap_mode="r", allow_pickle=False)
    I, V, C = x.shape
    fi, fv = int(round(0.8 * I)), int(round(0.8 * V))
    x_fit = np.asarray(x[:fi, :fv], dtype=np.float32)
    parts = {"held-out views": np.asarray(x[:fi, fv:], dtype=np.float32),
             "held-out images": np.asarray(x[fi:], dtype=np.float32)}
    rng = np.random.default_rng(0)
    sel = np.sort(rng.choice(fi * fv, min(args.fit_sample, fi * fv), replace=False))
    sample = torch.from_numpy(x_fit.reshape(-1, C)[sel])
    rows = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.priors:
            native = args.codec_kind and kind.startswith("sparse")
            opts = {"steps": args.steps, "fit_sample": args.fit_sample, "fit_threads": args.threads,
                    "bits": args.bits}
            if kind != "none":
                opts["image_bias"] = "on"
            if native:
                opts.update(image_bias="sparse", image_bias_k=int(kind.split()[1]))
            codec = get_codec_class("vq")(**opts)
            ctx = Context(source_kind="logits", classes=C, device="cpu", seed=0)
            if kind != "none":
                tab, _, _ = prior_table(kind, x_fit) if not native else (image_means(x_fit), 0, 0)
                codec.set_image_means(tab)
                ctx.label_shape, ctx.rows = (fi, fv), sel.astype(np.int64)
            t0 = time.perf_counter()
            codec.fit(sample, ctx)
            fit_s = time.perf_counter() - t0
            for part, data in parts.items():
                pi, pv = data.shape[:2]
                per_image = per_file = 0.0
                if kind != "none":
                    tab, per_image, per_file = prior_table(kind, data)
                    params = codec.get_params()
                    pctx = Context(source_kind="logits", classes=C, device="cpu", label_shape=(pi, pv))
                    if native:
                        for k in SPARSE_PARAMS:
                            params.pop(k.split("/")[1])
                        params.update(quantise_sparse_prior(image_means(data), int(kind.split()[1])))
                    else:
                        params["image_bias"] = tab.astype(np.float16)
                    codec.set_params(params, pctx)
                path = os.path.join(tmp, "f.vqsl")
                t1 = time.perf_counter()
                write_with_codec(path, codec, data.reshape(-1, C), [pi, pv], {}, C)
                enc_s = time.perf_counter() - t1
                n = pi * pv
                with slcodec.open(path) as r:
                    dec = r.decode(None, as_="logits").reshape(-1, C).numpy()
                with Container.open(path) as c:
                    st = file_stats(c)
                m = B.metrics(data.reshape(-1, C), dec, TEMPS)
                held = section_bytes(st, "params/image_bias") + sum(section_bytes(st, s) for s in SPARSE_PARAMS)
                prior_bits = per_image * pi + per_file
                if native:   # counted from the file itself
                    prior_bits = sum(section_bytes(st, s) for s in SPARSE_PARAMS) * 8.0
                file_bits = st["file_bytes"] * 8 - held * 8 + prior_bits
                decoder_bits = (st["fixed_bytes"] - held) * 8
                marginal = st["marginal_bits_per_label"]
                proj = (decoder_bits / (PROJ_IMAGES * PROJ_VIEWS) + per_image / PROJ_VIEWS
                        + per_file / (PROJ_IMAGES * PROJ_VIEWS) + marginal)
                row = {"prior": kind, "native": native, "part": part, "labels": n, "M": codec.M, "K": codec.K,
                       "bits_all": file_bits / n, "marginal_bits": marginal, "decoder_bits_per_label": decoder_bits / n,
                       "prior_bits_per_label": prior_bits / n, "prior_bits_per_image": per_image,
                       "prior_bits_per_file": per_file, "projected_bits_1000x300": proj,
                       "codes_zstd_bits": section_bytes(st, "streams/codes") * 8 / n,
                       "top1_zstd_bits": section_bytes(st, "streams/top1") * 8 / n, **m,
                       "fit_s": round(fit_s, 1), "write_s": round(enc_s, 1)}
                rows.append(row)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    meta = {"command": "nice -n 19 python " + " ".join([os.path.relpath(__file__, HERE.parent)]
                                                       + (argv if argv is not None else sys.argv[1:])),
            "corpus": args.corpus.name, "shape": [I, V, C], "fit_images": fi, "fit_views": fv,
            "fit_sample": len(sel), "steps": args.steps, "bits": args.bits, "torch": torch.__version__,
            "slcodec": slcodec.__version__, "seconds": round(time.perf_counter() - t_start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(args.out) + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    Path(str(args.out) + ".md").write_text(markdown(rows))
    return 0


def markdown(rows: list[dict]) -> str:
    out = []
    for part in dict.fromkeys(r["part"] for r in rows):
        order = {"none": (0, 0), "fp16": (1, 0), "uint8": (2, 0)}
        pr = sorted((r for r in rows if r["part"] == part),
                    key=lambda r: (order[r["prior"]] if r["prior"] in order else (3, int(r["prior"].split()[-1])))
                    + (r.get("native", False),))
        out += [f"#### {part}: {pr[0]['labels']:,} labels", "",
                "| prior | prior bits/label (this file) | bits/label all counted | projected 1000x300 | KL T=1 | "
                "KL T=4 | top-1 | top-5 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in pr:
            out.append(f"| {r['prior']}{' (codec)' if r.get('native') else ''} | {r['prior_bits_per_label']:.2f} | "
                       f"{r['bits_all']:.1f} | {r['projected_bits_1000x300']:.1f} | {r['kl_T1']:.3f} | "
                       f"{r['kl_T4']:.4f} | {r['top1'] * 100:.2f}% | {r['top5']:.3f} |")
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
