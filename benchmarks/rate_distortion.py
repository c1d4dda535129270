#!/usr/bin/env python3
"""Rate-distortion of every label-storage method on real teacher labels, slcodec ``vq`` included.

    python benchmarks/rate_distortion.py [--datasets imagenet fmnist lm3] [--quick] [--threads 1]

Data sets (``benchmarks/.cache/``, made by ``benchmarks/data/*.py``) and their parts:

``imagenet``  EfficientNet-Lite0 logits ``lite0_120x300.npy`` [120, 300, 1000] (``--quick``:
              ``lite0_40x300.npy`` [40, 300, 1000], the first 40 images of it): methods that fit
              (k-means VQ, PQ, vq) are fitted on the first 3/4 of the images (90: 27,000 labels);
              reported on ``fit`` (those), ``held-out`` (the last 30 images, 9,000 labels),
              ``heldout50`` (``lite0_40x50_heldout.npy``, 40 other images x 50 views, 2,000 labels)
              and, full run only, ``all`` (one file of all 36,000 labels with the codec fitted on
              the fit part - how a user stores a set; its KL covers fitted and held-out labels).
              KL at T = 1, 4, 20; training temperature for the plot and the dominance test: 4.
``fmnist``    Fashion-MNIST IPC 10 teacher logits ``fmnist_ipc10.npz`` [100, 300, 10]: fitted and
              reported on all 30,000 labels (the distilled set is the whole label set). T = 1, 4; training T 4.
``lm3``       word 3-gram next-word log-probs ``lm3_10k.npy`` [10000, 10000]: fitted on the first
              8,000 rows, reported on ``fit`` and ``held-out`` (the last 2,000). T = 1, 2; training T 1.
              ``--quick`` uses rows 0-1999 (fit) and 8000-8499 (held-out) only.

Baselines: every method of ``benchmarks/baselines.py`` at ``baselines.settings(C)`` (the bytes of a
real blob each, fixed part shown apart).  ``vq``: the codec is fitted once per rate on the fit part
(``VQCodec.fit``); every reported part is then written to a real ``.vqsl`` file by
``slcodec.Writer`` with that *same* fitted codec (no refit: held-out files hold the held-out labels
and the full fixed part - header, codec parameters, chunk index - of their own file), decoded back
with ``slcodec.open(...).decode`` and measured.  Bits per label = file bytes * 8 / labels of that
file; ``fixed bytes`` and ``marginal bits`` come from ``slcodec.format.stats.file_stats`` (label streams
vs everything else).

slcodec ``sparse`` (top-k ids, one-byte log-probabilities, a fitted 4-bit tail prior) runs on
``lm3`` and ``imagenet`` the same way.  ``--reuse`` takes the baseline rows (and the slcodec rows of
configurations already run) from the previous JSON of the same data set and source.

For each baseline (per part) the slcodec point (vq or sparse) with the fewest bits that is at least as good on KL at
the training temperature and on top-1 agreement is reported ("for baseline X: vq at B bits,
N x fewer bits" or "no vq point dominates X").  Because the fixed part of a vq file (a decoder
with a hidden x C output layer) weighs heavily on the small label sets here, the same test is
also printed on *marginal* bits only (what each further label costs; the limit for large sets).

Outputs in ``benchmarks/results/`` (``rd_quick_*`` with ``--quick``): ``rd_<set>.md`` (table +
dominance lines), ``rd_<set>.png`` (bits per label, log x, vs KL at the training T and vs top-1;
Pareto fronts per part drawn as lines) and ``rd_<set>.json``.  ``--quick``: fewer baseline
settings, 2 vq rates with few steps (a smoke run for ``run_all.py --quick``).  matplotlib is a
benchmarks-only dependency (``pip install matplotlib``); without it the PNGs are skipped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
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
from slcodec.pipeline.rows import RowReader  # noqa: E402
from slcodec.pipeline.statistics import image_mean_log_probs  # noqa: E402

CACHE = HERE / ".cache"
# the full run's ImageNet set (120 images x 300 views; images 0-39 are lite0_40x300.npy's);
# --quick and a missing file fall back to lite0_40x300.npy
IMAGENET_FILE = "lite0_120x300.npy"
RESULTS = HERE / "results"

# vq configurations per data set: (label, options).  Full and quick.
SMALL_C = {"hidden": 32, "decoder_layers": 0, "param_dtype": "float16"}
VQ_FULL = {
    "imagenet": [(f"vq b{b}", {"bits": b, "steps": 2000}) for b in (16, 48)]
    + [(f"vq-h64 b{b}", {"bits": b, "hidden": 64, "decoder_layers": 0, "steps": 2000}) for b in (8, 16, 32)]
    + [(f"vq-h32 b{b}", {"bits": b, "hidden": 32, "decoder_layers": 0, "steps": 2000}) for b in (8, 16)],
    "fmnist": [(f"vq-h32 image-prior b{b}", {"bits": b, **SMALL_C, "steps": 3000}) for b in (3, 4, 6, 8)]
    + [(f"vq-h32 no-prior b{b}", {"bits": b, **SMALL_C, "image_bias": "off", "steps": 3000}) for b in (6, 10)],
    "lm3": [(f"vq-h64 b{b}", {"bits": b, "hidden": 64, "decoder_layers": 0, "temperature": [1.0, 2.0],
                              "fit_sample": 8000, "train_batch": 256, "steps": 300}) for b in (16, 32, 64, 128)]
    + [(f"sparse k{k}", {"codec": "sparse", "k": k}) for k in (1, 2, 3, 5, 10, 20)]
    # no prior (C/2 bytes): the choice for files of a few thousand labels
    + [(f"sparse-uniform k{k}", {"codec": "sparse", "k": k, "tail": "uniform"}) for k in (1, 2, 3)]
    # a prior over the P classes with the most tail mass (format 1.3): 2P + P/2 bytes instead of C/2
    + [(f"sparse k{k} prior{P}", {"codec": "sparse", "k": k, "prior_classes": P}) for k, P in ((1, 64), (1, 256), (2, 256))],
}
# the sparse codec on ImageNet too (its top-1 point against FKD top-1)
VQ_FULL["imagenet"] += [(f"sparse k{k}", {"codec": "sparse", "k": k}) for k in (1, 2, 5)]
SLCODEC_KINDS = ("vq", "slcodec")   # rows of slcodec codecs ("vq": rows of runs before `sparse` existed)
VQ_QUICK = {
    "imagenet": [(f"vq b{b}", {"bits": b, "steps": 300}) for b in (16, 48)],
    "fmnist": [(f"vq-h32 image-prior b{b}", {"bits": b, **SMALL_C, "steps": 600}) for b in (4, 6)],
    "lm3": [(f"vq-h64 b{b}", {"bits": b, "hidden": 64, "decoder_layers": 0, "temperature": [1.0, 2.0],
                              "fit_sample": 2000, "train_batch": 256, "steps": 60}) for b in (32, 128)],
}
VQ_QUICK["lm3"] += [(f"sparse k{k}", {"codec": "sparse", "k": k}) for k in (1, 5)] + [
    ("sparse k1 prior64", {"codec": "sparse", "k": 1, "prior_classes": 64})]
VQ_QUICK["imagenet"] += [("sparse k1", {"codec": "sparse", "k": 1})]
# the FKD grid k = 1, 5, 10, 20, 50: baselines.settings has 5 and 50
EXTRA_TOPK = [("fkd_topk", {"k": k, "zstd_level": 19}) for k in (1, 10, 20)]
QUICK_BASELINES = [("fp16", {}), ("zstd_fp16", {"level": 3}), ("shuffle_zstd_fp16", {"level": 3}),
                   ("fkd_topk", {"k": 5, "zstd_level": 19}), ("fkd_topk", {"k": 50, "zstd_level": 19}),
                   ("lpqld_topk", {"k": 10, "refill": "stored_min"}), ("uint8_probs", {"scale": "global"}),
                   ("uint8_logprobs", {"scale": "row"}), ("kmeans_vq", {"K": 256}), ("pq", {"M": 25})]


# --------------------------------------------------------------------------- data
def load_dataset(name: str, quick: bool) -> dict:
    """-> {"C", "temps", "train_T", "fit": [n, C], "parts": {part: (rows [n, C], shape)}}"""
    if name == "imagenet":
        src = IMAGENET_FILE if (CACHE / IMAGENET_FILE).exists() and not quick else "lite0_40x300.npy"
        a = np.load(CACHE / src).astype(np.float32)
        h = np.load(CACHE / "lite0_40x50_heldout.npy").astype(np.float32)
        I, A, C = a.shape
        nfit = I * 3 // 4
        fit = a[:nfit].reshape(-1, C)
        parts = {"fit": (fit, [nfit, A]),
                 "held-out": (a[nfit:].reshape(-1, C), [I - nfit, A]),
                 "heldout50": (h.reshape(-1, C), list(h.shape[:2]))}
        if not quick:  # the way the codec is used: one file of the whole set, fitted on a part of it
            parts["all"] = (a.reshape(-1, C), [I, A])
        return {"C": C, "temps": (1, 4, 20), "train_T": 4, "fit": fit, "parts": parts,
                "source": f"{src} (fit: images 0-{nfit - 1}; held-out: {nfit}-{I - 1}; all: one file of "
                          f"all {I} images) + lite0_40x50_heldout.npy"}
    if name == "fmnist":
        z = np.load(CACHE / "fmnist_ipc10.npz")["logits"].astype(np.float32)
        x = z.reshape(-1, z.shape[-1])
        return {"C": z.shape[-1], "temps": (1, 4), "train_T": 4, "fit": x, "parts": {"fit": (x, list(z.shape[:2]))},
                "fit_is_all": True,
                "source": "fmnist_ipc10.npz (100 images x 300 views; fitted and reported on all)"}
    if name == "lm3":
        x = np.load(CACHE / "lm3_10k.npy").astype(np.float32)
        nfit = int(0.8 * len(x))
        if quick:  # the quick run: a quarter of each part (the dense C=10,000 baselines dominate its time)
            x = np.concatenate([x[:nfit // 4], x[nfit:nfit + (len(x) - nfit) // 4]])
            nfit //= 4
        return {"C": x.shape[1], "temps": (1, 2), "train_T": 1, "fit": x[:nfit],
                "parts": {"fit": (x[:nfit], [nfit]), "held-out": (x[nfit:], [len(x) - nfit])},
                "source": f"lm3_10k.npy (fit: rows 0-{nfit - 1}; held-out: rows {nfit}-{len(x) - 1})"}
    raise SystemExit(f"unknown data set {name!r}")


# --------------------------------------------------------------------------- methods
def run_baselines(ds: dict, quick: bool, log) -> list[dict]:
    rows = []
    sets = QUICK_BASELINES if quick else B.settings(ds["C"]) + EXTRA_TOPK
    # top-k needs k < C (k >= C would be lossless FP16 with ids); the k = 1..50 grid
    sets = [(n, p) for n, p in sets if "k" not in p or p["k"] < ds["C"]]
    if ds["C"] <= 16:
        sets += [("fkd_topk", {"k": k, "zstd_level": 19}) for k in (2, 3)]
    for name, params in sets:
        for part, (data, _) in ds["parts"].items():
            kw = dict(params)
            if name in B.FITTED:
                kw["fit"] = ds["fit"]
            info = {}
            t0 = time.perf_counter()
            nbytes, dec = B.METHODS[name](data, info=info, **kw)
            dt = time.perf_counter() - t0
            m = B.metrics(data, dec, ds["temps"])
            rows.append({"method": name, "params": B.fmt_params(params), "kind": "baseline", "part": part,
                         "labels": len(data), "bytes": nbytes, "bits_per_label": nbytes * 8 / len(data),
                         "fixed_bytes": info["fixed_bytes"], "marginal_bits": info["per_label_bytes"] * 8 / len(data),
                         "seconds": round(dt, 2), **m})
            log(f"  {name}({rows[-1]['params']}) {part}: {rows[-1]['bits_per_label']:.1f} bits, "
                f"KL@T{ds['train_T']} {m['kl_T%g' % ds['train_T']]:.4g}, top1 {m['top1']:.4f} [{dt:.1f}s]")
    return rows


def write_with_codec(path: str, codec, rows: np.ndarray, shape, opts: dict, C: int) -> None:
    """A real .vqsl file of ``rows`` written by slcodec.Writer with an already fitted ``codec``
    (its ``fit`` is bypassed for this file, so every part is coded by the same parameters)."""
    w = slcodec.Writer(path, codec=codec.codec_id, classes=C, shape=shape, seed=0, **opts)
    w.codec = codec
    codec.fit = lambda labels, ctx: None      # instance attribute: the fitted state is kept
    try:
        w.fit(rows[:1])                       # sets up the streams; no refit
        for s in range(0, len(rows), 4096):
            w.append(rows[s:s + 4096])
        w.close()
    finally:
        del codec.fit


def run_vq(ds: dict, configs, tmp: str, log, skip=()) -> list[dict]:
    rows = []
    C = ds["C"]
    for label, opts in configs:
        if label in skip:
            continue
        opts = dict(opts)
        codec_id = opts.pop("codec", "vq")
        codec = get_codec_class(codec_id)(**opts)
        ctx = Context(source_kind="logits", classes=C, device="cpu", seed=0)
        fit_shape = ds["parts"]["fit"][1]
        if ds.get("fit_is_all") and codec_id == "vq" and "image_mean_log_probs" in codec.fit_statistics(fit_shape, C):
            # the image prior is per image: only where the fitted part is the whole reported set
            with RowReader(ds["fit"]) as rr:
                codec.set_image_means(image_mean_log_probs(rr, fit_shape, "logits"))
            ctx.label_shape, ctx.rows = tuple(fit_shape), np.arange(len(ds["fit"]), dtype=np.int64)
        t0 = time.perf_counter()
        codec.fit(torch.from_numpy(ds["fit"]), ctx)
        fit_s = time.perf_counter() - t0
        for part, (data, shape) in ds["parts"].items():
            path = os.path.join(tmp, f"{label.replace(' ', '_')}_{part}.vqsl")
            t1 = time.perf_counter()
            write_with_codec(path, codec, data, shape, opts, C)
            enc_s = time.perf_counter() - t1
            with slcodec.open(path) as r:
                dec = r.decode(None, as_="logits").reshape(-1, C).numpy()
            with Container.open(path) as c:
                st = file_stats(c)
            assert st["labels"] == len(data) and st["file_bytes"] == os.path.getsize(path)
            m = B.metrics(data, dec, ds["temps"])
            extra = {"M": codec.M, "K": codec.K, "nominal_bits": codec.nominal_bits} if codec_id == "vq" else {}
            rows.append({"method": f"slcodec {codec_id}", "params": label,
                         "kind": "vq" if codec_id == "vq" else "slcodec", "options": opts, "part": part,
                         "labels": len(data), "bytes": st["file_bytes"], "bits_per_label": st["bits_per_label"],
                         "fixed_bytes": st["fixed_bytes"], "marginal_bits": st["marginal_bits_per_label"], **extra,
                         "fit_seconds": round(fit_s, 1), "seconds": round(enc_s, 2), **m})
            log(f"  {label} {part}: {st['bits_per_label']:.1f} bits ({st['fixed_bytes']} B fixed + "
                f"{st['marginal_bits_per_label']:.2f} marginal), KL@T{ds['train_T']} "
                f"{m['kl_T%g' % ds['train_T']]:.4g}, top1 {m['top1']:.4f} [fit {fit_s:.0f}s]")
    return rows


# --------------------------------------------------------------------------- analysis
def dominance(rows: list[dict], train_T: float, bits_key: str = "bits_per_label") -> list[dict]:
    """For each baseline row: the vq row of the same part with the fewest ``bits_key`` that is at
    least as good on KL at train_T and on top-1."""
    klk = f"kl_T{train_T:g}"
    out = []
    for b in rows:
        if b["kind"] != "baseline":
            continue
        cands = [v for v in rows if v["kind"] in SLCODEC_KINDS and v["part"] == b["part"]
                 and v[klk] <= b[klk] and v["top1"] >= b["top1"]]
        best = min(cands, key=lambda v: v[bits_key]) if cands else None
        rec = {"baseline": f"{b['method']}({b['params']})", "part": b["part"], "baseline_bits": b[bits_key],
               "vq": best["params"] if best else None, "vq_bits": best[bits_key] if best else None,
               "ratio": b[bits_key] / best[bits_key] if best else None}
        rec["line"] = (f"for baseline {rec['baseline']} [{b['part']}, {b[bits_key]:.1f} bits]: "
                       f"{best['params']} at {best[bits_key]:.1f} bits, " + (
                           f"{rec['ratio']:.1f} x fewer bits" if rec["ratio"] >= 1 else
                           f"{1 / rec['ratio']:.1f} x MORE bits (no slcodec point as good is smaller)")
                       if best else f"for baseline {rec['baseline']} [{b['part']}]: no slcodec point dominates it")
        out.append(rec)
    return out


def pareto(points: list[tuple[float, float]], lower_better: bool) -> list[tuple[float, float]]:
    """Points not dominated (fewer bits and better metric); sorted by bits."""
    pts = sorted(points, key=lambda p: (p[0], p[1] if lower_better else -p[1]))
    front, best = [], math.inf if lower_better else -math.inf
    for x, y in pts:
        if (y < best) if lower_better else (y > best):
            front.append((x, y))
            best = y
    return front


def markdown(rows: list[dict], temps, name: str) -> str:
    head = ["method", "params", "part", "bits/label", "fixed bytes", "marginal bits",
            *[f"KL@T{t:g}" for t in temps], "top-1", "top-5"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], r["params"], r["part"], f"{r['bits_per_label']:.1f}", str(r["fixed_bytes"]),
            f"{r['marginal_bits']:.2f}", *[f"{r[f'kl_T{t:g}']:.4g}" for t in temps],
            f"{100 * r['top1']:.2f}%", f"{100 * r['top5']:.2f}%"]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], ds: dict, name: str, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    T = ds["train_T"]
    klk = f"kl_T{T:g}"
    parts = list(ds["parts"])
    markers = {"fit": "o", "held-out": "s", "heldout50": "^"}
    methods = sorted({r["method"] for r in rows})
    cmap = plt.get_cmap("tab20")
    colors = {m: cmap(i % 20) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    for ax, key, lower, ylab in ((axes[0], klk, True, f"mean KL(p||q) at T={T:g} (nats)"),
                                 (axes[1], "top1", False, "top-1 agreement")):
        for r in rows:
            y = r[key]
            if key == klk:
                y = max(y, 1e-7)   # lossless points on a log axis
            ax.scatter(r["bits_per_label"], y, marker=markers.get(r["part"], "o"), color=colors[r["method"]],
                       edgecolors="k" if r["kind"] in SLCODEC_KINDS else "none", s=45, alpha=0.85)
        for part in parts:
            pts = [(r["bits_per_label"], max(r[key], 1e-7) if key == klk else r[key]) for r in rows if r["part"] == part]
            fr = pareto(pts, lower)
            ax.step([p[0] for p in fr], [p[1] for p in fr], where="post", lw=1.2,
                    ls={"fit": "-", "held-out": "--", "heldout50": ":"}.get(part, "-"), color="k", alpha=0.6,
                    label=f"Pareto front ({part})")
        ax.set_xscale("log")
        if key == klk:
            ax.set_yscale("log")
        ax.set_xlabel("bits per label (file bytes x 8 / labels, everything counted)")
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[m], label=m) for m in methods]
    handles += [plt.Line2D([], [], marker=markers.get(p, "o"), ls="", color="grey", label=f"part: {p}") for p in parts]
    h2, l2 = axes[0].get_legend_handles_labels()
    axes[1].legend(handles=handles + h2, fontsize=7, loc="lower right")
    fig.suptitle(f"{name}: {ds['source']} (C={ds['C']}); slcodec points outlined")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["imagenet", "fmnist", "lm3"], choices=["imagenet", "fmnist", "lm3"])
    ap.add_argument("--quick", action="store_true", help="fewer baseline settings, 2 vq rates with few steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (vq fits use fit_threads=1 anyway)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--no-vq", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--reuse", action="store_true",
                    help="take the baseline rows, and the slcodec rows of configurations already run, from the "
                         "previous JSON of the same data set and source (same code, same data); run the rest")
    args = ap.parse_args(argv)
    get_codec_class("vq")   # import every codec now: a long run must not pick up later edits halfway
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = "rd_quick_" if args.quick else "rd_"

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    import importlib.metadata as md
    import zstandard
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "zstandard": zstandard.__version__, "slcodec": md.version("slcodec"), "faiss": B._faiss_available()}
    t_all = time.perf_counter()
    for name in args.datasets:
        t0 = time.perf_counter()
        ds = load_dataset(name, args.quick)
        log(f"{name}: C={ds['C']}, fit {len(ds['fit'])} labels; parts "
            + ", ".join(f"{p} {len(d)}" for p, (d, _) in ds["parts"].items()))
        old = []
        prev = args.out / f"{prefix}{name}.json"
        if args.reuse and prev.exists():
            got = json.loads(prev.read_text())
            if got.get("source") == ds["source"]:
                old = got["rows"]
                log(f"  reusing {len(old)} rows of {prev.name}")
        reused_base = [r for r in old if r["kind"] == "baseline"]
        rows = reused_base if reused_base or args.no_baselines else run_baselines(ds, args.quick, log)
        t_base = time.perf_counter() - t0
        if not args.no_vq:
            done = {r["params"] for r in old if r["kind"] in SLCODEC_KINDS}
            rows += [r for r in old if r["kind"] in SLCODEC_KINDS]
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                rows += run_vq(ds, (VQ_QUICK if args.quick else VQ_FULL)[name], tmp, log, skip=done)
        secs = time.perf_counter() - t0
        T = ds["train_T"]
        dom = dominance(rows, T)
        dom_marg = dominance(rows, T, "marginal_bits")
        table = markdown(rows, ds["temps"], name)
        text = [f"## {name}: {ds['source']}, C = {ds['C']}", "",
                f"Training temperature for the dominance test: T = {T:g}. Run time {secs:.0f} s "
                f"(baselines {t_base:.0f} s)" + (f"; {len(old)} rows reused from the previous run (--reuse), "
                                                f"which took {got['seconds']:.0f} s" if old else "") + ".",
                "", table, "",
                "### slcodec (vq, sparse) against each baseline (all bits counted)", ""]
        text += [f"- {d['line']}" for d in dom]
        text += ["", "### the same on marginal bits only (fixed part excluded: the large-set limit)", ""]
        text += [f"- {d['line']}" for d in dom_marg]
        md_text = "\n".join(text) + "\n"
        (args.out / f"{prefix}{name}.md").write_text(md_text)
        png = args.out / f"{prefix}{name}.png"
        plotted = plot(rows, ds, name, png)
        (args.out / f"{prefix}{name}.json").write_text(json.dumps({
            "dataset": name, "source": ds["source"], "classes": ds["C"], "temps": list(ds["temps"]),
            "train_T": T, "quick": args.quick, "seconds": round(secs, 1), "baseline_seconds": round(t_base, 1),
            "threads": args.threads, "versions": versions, "rows": rows, "dominance": dom,
            "dominance_marginal": dom_marg}, indent=1, default=str) + "\n")
        print(md_text, flush=True)
        log(f"{name}: {secs:.0f}s; wrote {prefix}{name}.md/.json" + (" and .png" if plotted else " (no matplotlib: no PNG)"))
    log(f"total {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
