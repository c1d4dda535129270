#!/usr/bin/env python3
"""Issue 16 probes on the 1,000-class corpus: what would conditional entropy coding and image-level
codes buy vq?  A measurement, not a format change: every file here is today's format, and the
alternatives are counted from its real streams.

    nice -n 19 python benchmarks/vq_scale_probes.py benchmarks/.cache/corpus_small.npy \
        --steps 300 --fit-sample 12000 --out benchmarks/results/vq_scale_probes_small

Split of ``[images, views, C]`` (corpus_small: 200 x 300 x 1000): the first 80% of the images are
the fit images; vq is fitted on a sample of their first 80% of views.  Two files are then written
with the fitted parameters (``slcodec.Writer``, real ``.vqsl`` files, section sizes read back with
``slcodec.format.stats.file_stats``):

``held-out views``   the fit images' other 20% of views (``[fit images, V/5]``);
``held-out images``  every view of the other 20% of the images, never seen in the fit.

Per file and config: KL(p||q) at T = 1 and 4, top-1, top-5; bits per label all counted (file bytes
/ labels) and marginal (label streams); and a projection to a file of 1,000 images x 300 views
(the decoder amortised over 300,000 labels, per-image parts over 300 views).

(1) Index streams.  Today each stream is fixed-width codes compressed by zstd in chunks.  Against
those section bytes, ideal code lengths (an rANS coder gets within ~0.1% of them) of the same
symbols (each of the M code positions and the top1 stream) under:
  ``H0``       one static table per stream (integer frequencies stored: 16 bits per used symbol);
  ``img-static`` one table per image and stream, stored as an enumerative two-part code
               (log2 C(K, u) for which u symbols occur + log2 C(V-1, u-1) for their counts);
  ``img-adapt``  per image, adaptive counts mixed with the file's static table,
               p = (n_img[s] + a * P0[s]) / (n_img + a), a from {1, 4, 16, 64} (one stored number);
  ``prev-adapt`` the previous view's code at the same position as the context (adaptive, K x K
               counts learned over the file in order, same mixing).
(2) Image-level codes.  Per-image mean log-probabilities of the file's images clustered by
k-means into P prototypes stored in the file; vq's image-prior path is fed the prototype row of
each image (``set_image_means`` for the fit, the fitted codec's ``set_params`` with the file's
table for each written file).  The file then holds an [images, C] FP16 table of prototype rows;
the count replaces that section by what the format would store: P x C FP16 + ceil(log2 P) bits per
image.  Against vq default and vq image_bias=on (exact FP16 means per image) at the same N.
(3) vq at 24 / 48 / 96 nominal bits, same split, same step count.

Step counts are small (``--steps``, default 300 instead of vq's 3,000) so that the whole run fits
in minutes on 2 loaded cores: absolute KL is worse than a full fit; compare configs within the run.
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

import slcodec  # noqa: E402
from slcodec.codecs import get_codec_class  # noqa: E402
from slcodec.codecs.base import Context  # noqa: E402
from slcodec.format.container import Container  # noqa: E402
from slcodec.format.stats import file_stats  # noqa: E402

TEMPS = (1, 4)
ALPHAS = (1.0, 4.0, 16.0, 64.0)
PROJ_IMAGES, PROJ_VIEWS = 1000, 300


# ----------------------------------------------------------------------------- entropy models

def log2_binom(n, k):
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def stream_bits(sym: np.ndarray, images: int, views: int, alphabet: int) -> dict:
    """Ideal code lengths (bits, total over the file) of one symbol stream laid out image-major."""
    n = sym.size
    s = sym.reshape(images, views).astype(np.int64)
    cnt = np.bincount(s.ravel(), minlength=alphabet).astype(np.float64)
    used = cnt > 0
    p0 = cnt / n
    h0 = float(-(cnt[used] * np.log2(p0[used])).sum())
    table0 = 16.0 * used.sum()            # one integer frequency per used symbol (+ which: see below)
    table0 += log2_binom(alphabet, int(used.sum()))
    out = {"H0": h0 + table0, "H0_table": table0}
    # per-image static tables: enumerative two-part code
    data = table = 0.0
    for i in range(images):
        c = np.bincount(s[i], minlength=alphabet)
        c = c[c > 0].astype(np.float64)
        data += float(-(c * np.log2(c / views)).sum())
        u = len(c)
        table += log2_binom(alphabet, u) + log2_binom(views - 1, u - 1)
    out["img-static"] = data + table
    out["img-static_table"] = table
    # per-image adaptive, mixed with P0 (stored once: already in table0)
    best = None
    for a in ALPHAS:
        c = np.zeros((images, alphabet))
        bits = 0.0
        rows = np.arange(images)
        for v in range(views):
            x = s[:, v]
            p = (c[rows, x] + a * p0[x]) / (v + a)
            bits += float(-np.log2(p).sum())
            c[rows, x] += 1
        if best is None or bits < best[0]:
            best = (bits, a)
    out["img-adapt"] = best[0] + table0
    out["img-adapt_alpha"] = best[1]
    # previous view's symbol as context (adaptive K x K counts over the file, in order)
    best = None
    prev = np.concatenate([np.full((images, 1), -1), s[:, :-1]], axis=1).ravel()
    cur = s.ravel()
    pv = np.where(prev < 0, alphabet, prev)
    for a in ALPHAS:
        c: dict = {}
        tot = [0] * (alphabet + 1)
        p0l = p0.tolist()
        bits = 0.0
        log2 = math.log2
        # file order exactly (views of one image sit together): a plain loop, python ints are
        # faster here than numpy scalar indexing
        for q, x in zip(pv.tolist(), cur.tolist()):
            key = q * alphabet + x
            k = c.get(key, 0)
            bits -= log2((k + a * p0l[x]) / (tot[q] + a))
            c[key] = k + 1
            tot[q] += 1
        if best is None or bits < best[0]:
            best = (bits, a)
    if best is not None:
        out["prev-adapt"] = best[0] + table0
        out["prev-adapt_alpha"] = best[1]
    # empirical conditional entropy H(x | prev) without any table (a lower bound, not a code)
    pair = np.bincount(pv * alphabet + cur, minlength=(alphabet + 1) * alphabet).astype(np.float64)
    pair = pair.reshape(alphabet + 1, alphabet)
    row = pair.sum(1, keepdims=True)
    nz = pair > 0
    out["prev-empirical_no_table"] = float(-(pair[nz] * np.log2((pair / np.maximum(row, 1))[nz])).sum())
    return out


def streams_analysis(path: str, images: int, views: int, K: int, classes: int) -> dict:
    """Ideal bits per label of the file's codes and top1 streams under each model, and today's bytes."""
    n = images * views
    with slcodec.open(path) as r:
        streams = r.read_streams(np.arange(n, dtype=np.int64))
    codes = np.asarray(streams["codes"]).reshape(n, -1)
    top1 = np.asarray(streams["top1"]).reshape(n)
    res = {}
    models = None
    for m in range(codes.shape[1]):
        r = stream_bits(codes[:, m], images, views, K)
        models = models or [k for k in r if not k.endswith(("_alpha", "_table"))]
        for k in models:
            res.setdefault("codes " + k, 0.0)
            res["codes " + k] += r.get(k, float("nan"))
    r = stream_bits(top1, images, views, classes + 16)
    for k in models:
        res["top1 " + k] = r.get(k, float("nan"))
    return {k: v / n for k, v in res.items()}


# ----------------------------------------------------------------------------- helpers
def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iters):
        d = ((x[:, None, :] - cent[None]) ** 2).sum(-1)
        a = d.argmin(1)
        for j in range(k):
            if (a == j).any():
                cent[j] = x[a == j].mean(0)
    d = ((x[:, None, :] - cent[None]) ** 2).sum(-1)
    return cent.astype(np.float32), d.argmin(1)


def image_means(x3: np.ndarray) -> np.ndarray:
    """Per-image mean log-probabilities [images, C] (what slcodec.encode gives vq's image prior)."""
    out = np.empty((x3.shape[0], x3.shape[2]), dtype=np.float32)
    for i in range(x3.shape[0]):
        out[i] = torch.log_softmax(torch.from_numpy(np.asarray(x3[i], dtype=np.float32)), 1).mean(0).numpy()
    return out


def prior_table(kind: str, x3: np.ndarray, P: int, seed: int):
    """(table [images, C] float32, bits the format would store for it)"""
    I, _, C = x3.shape
    mu = image_means(x3)
    if kind == "means":
        return mu, 16.0 * I * C
    cent, assign = kmeans(mu, min(P, I), seed)
    return cent[assign], 16.0 * len(cent) * C + I * math.ceil(math.log2(max(2, len(cent))))


def section_bytes(st: dict, name: str) -> int:
    return sum(e["bytes"] for e in st["sections"] if e["name"] == name)


def markdown(rows: list[dict]) -> str:
    out = []
    for part in dict.fromkeys(r["part"] for r in rows):
        pr = [r for r in rows if r["part"] == part]
        out += [f"#### {part}: {pr[0]['labels']:,} labels", "",
                "| config | M x K | bits/label all counted | marginal | decoder | image table | projected 1000x300 "
                "| KL T=1 | KL T=4 | top-1 | top-5 |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in pr:
            out.append(f"| {r['config']} | {r['M']} x {r['K']} | {r['bits_all']:.1f} | {r['marginal_bits']:.1f} | "
                       f"{r['decoder_bits_per_label']:.1f} | {r['image_table_bits_per_label']:.1f} | "
                       f"{r['projected_bits_1000x300']:.1f} | {r['kl_T1']:.3f} | {r['kl_T4']:.4f} | "
                       f"{r['top1'] * 100:.1f}% | {r['top5']:.3f} |")
        out += ["", "Index streams, bits per label (ideal code lengths; tables counted; zstd = today's sections):", "",
                "| config | codes: zstd | H0 | img-static | img-adapt | prev-adapt "
                "| top1: zstd | H0 | img-static | img-adapt | prev-adapt | saving vs zstd (best, both) |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in pr:
            cs = [r[f"codes {k}"] for k in ("H0", "img-static", "img-adapt", "prev-adapt")]
            ts = [r[f"top1 {k}"] for k in ("H0", "img-static", "img-adapt", "prev-adapt")]
            zs = r["codes_zstd_bits"] + r["top1_zstd_bits"]
            best = min(cs) + min(ts)
            out.append(f"| {r['config']} | {r['codes_zstd_bits']:.2f} | " + " | ".join(f"{v:.2f}" for v in cs)
                       + f" | {r['top1_zstd_bits']:.2f} | " + " | ".join(f"{v:.2f}" for v in ts)
                       + f" | {zs - best:.2f} ({(zs - best) / zs * 100:.0f}%) |")
        out.append("")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--fit-sample", type=int, default=12000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prototypes", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--bits", type=float, nargs="+", default=[24.0, 48.0, 96.0])
    ap.add_argument("--only", nargs="+", default=None, help="only the configs with these exact labels")
    ap.add_argument("--render", action="store_true", help="only write <out>.md from an existing <out>.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="only join the rows of these JSONs (runs split by --only) into <out>.json and .md")
    args = ap.parse_args(argv)
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        meta = dict(parts[0]["meta"], commands=[p["meta"]["command"] for p in parts],
                    seconds=[p["meta"]["seconds"] for p in parts])
        meta.pop("command", None)
        Path(str(args.out) + ".json").write_text(
            json.dumps({"meta": meta, "rows": [r for p in parts for r in p["rows"]]}, indent=1) + "\n")
        args.render = True
    if args.render:
        rows = json.loads(Path(str(args.out) + ".json").read_text())["rows"]
        Path(str(args.out) + ".md").write_text(markdown(rows))
        return 0
    torch.set_num_threads(args.threads)
    x = np.load(args.corpus, mmap_mode="r", allow_pickle=False)
    if x.ndim != 3:
        raise SystemExit(f"{args.corpus}: expected [images, views, C]")
    I, V, C = x.shape
    fi, fv = int(round(0.8 * I)), int(round(0.8 * V))
    x_fit = np.asarray(x[:fi, :fv], dtype=np.float32)
    parts = {"held-out views": np.asarray(x[:fi, fv:], dtype=np.float32),
             "held-out images": np.asarray(x[fi:], dtype=np.float32)}
    rng = np.random.default_rng(0)
    sel = np.sort(rng.choice(fi * fv, min(args.fit_sample, fi * fv), replace=False))
    sample = torch.from_numpy(x_fit.reshape(-1, C)[sel])

    base = {"steps": args.steps, "fit_sample": args.fit_sample, "fit_threads": args.threads}
    configs = [(f"vq bits={b:g}", dict(base, bits=b), None, 0) for b in args.bits]
    configs += [("vq bits=48 image_bias=on (exact FP16 means)", dict(base, bits=48.0, image_bias="on"), "means", 0)]
    configs += [(f"vq bits=48 prototypes P={p}", dict(base, bits=48.0, image_bias="on"), "protos", p)
                for p in args.prototypes]
    if args.only:
        configs = [c for c in configs if c[0] in args.only]
    rows = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for label, opts, prior, P in configs:
            codec = get_codec_class("vq")(**opts)
            ctx = Context(source_kind="logits", classes=C, device="cpu", seed=0)
            if prior:
                tab, _ = prior_table(prior, x_fit, P, seed=0)
                codec.set_image_means(tab)
                ctx.label_shape, ctx.rows = (fi, fv), sel.astype(np.int64)
            t0 = time.perf_counter()
            codec.fit(sample, ctx)
            fit_s = time.perf_counter() - t0
            for part, data in parts.items():
                pi, pv = data.shape[:2]
                table_bits = 0.0
                if prior:
                    tab, table_bits = prior_table(prior, data, P, seed=0)
                    params = codec.get_params()
                    params["image_bias"] = tab.astype(np.float16)
                    codec.set_params(params, Context(source_kind="logits", classes=C, device="cpu",
                                                     label_shape=(pi, pv)))
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
                bias_b = section_bytes(st, "params/image_bias")
                file_bits = st["file_bytes"] * 8 - bias_b * 8 + table_bits
                decoder_bits = (st["fixed_bytes"] - bias_b) * 8
                marginal = st["marginal_bits_per_label"]
                codes_b, top1_b = section_bytes(st, "streams/codes"), section_bytes(st, "streams/top1")
                ent = streams_analysis(path, pi, pv, codec.K, C)
                proj = (decoder_bits / (PROJ_IMAGES * PROJ_VIEWS)
                        + (0.0 if not prior else (table_bits / pi) / PROJ_VIEWS if prior == "means"
                           else (16.0 * P * C + PROJ_IMAGES * math.ceil(math.log2(P))) / (PROJ_IMAGES * PROJ_VIEWS))
                        + marginal)
                row = {"config": label, "part": part, "labels": n, "M": codec.M, "K": codec.K,
                       "bits_all": file_bits / n, "marginal_bits": marginal,
                       "decoder_bits_per_label": decoder_bits / n, "image_table_bits_per_label": table_bits / n,
                       "codes_zstd_bits": codes_b * 8 / n, "top1_zstd_bits": top1_b * 8 / n,
                       "projected_bits_1000x300": proj, **m, **ent,
                       "fit_s": round(fit_s, 1), "write_s": round(enc_s, 1)}
                rows.append(row)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
                      flush=True)
    meta = {"command": "nice -n 19 python " + " ".join([os.path.relpath(__file__, HERE.parent)]
                                                       + (argv if argv is not None else sys.argv[1:])),
            "corpus": args.corpus.name, "shape": [I, V, C], "fit_images": fi, "fit_views": fv,
            "fit_sample": len(sel), "steps": args.steps, "torch": torch.__version__,
            "slcodec": slcodec.__version__, "seconds": round(time.perf_counter() - t_start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(args.out) + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    Path(str(args.out) + ".md").write_text(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
