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
              the first 80% of the images (as ``slcodec.encode`` fits: image statistics, default fit
              sample) and used, unchanged, for a file of the other 20% (``Writer.use_fitted``). vq's
              per-image prior is per-image data of the file: the held-out file's is built from the
              held-out images' own labels, as an encode of them builds it (checked in the file).
              Configurations differing only in encode-only options (``residual_k``) share one fit.
              The ``all`` part reports the same images inside the file of every label (``tail_*``).

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
from slcodec.pipeline.rows import RowReader, fit_rows  # noqa: E402
from slcodec.pipeline.statistics import compute_fit_statistics, image_mean_log_probs  # noqa: E402

TEMPS = (1, 4, 20)

# (codec, label, options) of the slcodec codecs
CODECS = ([("vq", "default", {}),
           ("vq", "residual_k=2", {"residual_k": 2}),
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


def fit_on_images(x: np.ndarray, codec_id: str, opts: dict, seed: int = 0):
    """``codec_id`` fitted as :func:`slcodec.encode` fits it for a file of the images ``x``
    ([images, views, C], may be memory-mapped): the whole-input statistics it asks for (vq's image
    means for its prior) over every label of those images, then its default fit sample of evenly
    spaced rows with their label indices.  Nothing is written; the fitted codec is returned."""
    I, V, C = x.shape
    with tempfile.TemporaryDirectory() as tmp:
        w = slcodec.Writer(os.path.join(tmp, "fit.vqsl"), codec_id, classes=C, shape=[I, V], seed=seed, **opts)
        try:
            with RowReader(x.reshape(I * V, C)) as reader:
                wanted = w.codec.fit_statistics(w.shape, C)
                for name, value in compute_fit_statistics(wanted, reader, w.shape, "logits", 16384, 0,
                                                          reader.n).items():
                    w.set_fit_statistic(name, value)
                idx = fit_rows(reader.n, w.fit_sample)
                w.fit(reader.take(idx), rows=idx)
            return w.codec
        finally:
            w.abort()


def prior_for_images(codec, held: np.ndarray, shape) -> np.ndarray | None:
    """Give a fitted ``vq`` whose image prior is on the prior of the images ``held`` ([n, C] rows of
    ``shape`` = [images, views]) from their own labels, as :func:`slcodec.encode` builds it for a file
    of those images (the prior is per image, stored in the file: the fit's table describes the fitted
    images, not these).  The learned parameters are unchanged.  Returns the images' mean
    log-probabilities (None where the codec has no prior)."""
    if codec.codec_id != "vq":
        if codec.fit_statistics(tuple(shape), held.shape[1]):
            raise SystemExit(f"held-out part: codec {codec.codec_id!r} needs image statistics; only vq's prior "
                             "is rebuilt for the held-out images")
        return None
    if codec.config["image_bias"] not in ("on", "sparse"):
        return None
    means = image_mean_log_probs(RowReader(held), shape, "logits")
    codec.set_image_means(means)
    # the prior's own set-up (the mode is already resolved by the fit; no fit rows are involved)
    codec._resolve_image_bias(Context(source_kind="logits", classes=held.shape[1], device="cpu",
                                      label_shape=tuple(shape), rows=np.empty(0, np.int64)), held.shape[1], 0)
    return means


def write_fitted(path: str, codec, rows: np.ndarray, shape, C: int) -> None:
    """A .vqsl file of ``rows`` written by a Writer that encodes with the fitted ``codec`` (no refit)."""
    w = slcodec.Writer(path, codec.codec_id, classes=C, shape=list(shape), seed=0)
    try:
        w.use_fitted(codec)
        for s in range(0, len(rows), 4096):
            w.append(rows[s:s + 4096])
        w.close()
    except BaseException:
        w.abort()
        raise


def check_heldout_prior(path: str, means: np.ndarray | None, codec) -> str:
    """The prior stored in the held-out file is the one of the held-out images' own means (raises
    otherwise); returns what the row records."""
    with slcodec.open(path) as r:
        stored = r.codec.get_params()
    mode = codec.config.get("image_bias")
    if means is None:
        if any(k.startswith("image_prior") or k == "image_bias" for k in stored):
            raise SystemExit(f"{path}: a prior is stored but none was built for the held-out images")
        return "off"
    if mode == "sparse":
        from slcodec.codecs.vq.prior import quantise_sparse_prior
        want = quantise_sparse_prior(np.maximum(means, np.float32(-1e4)), codec.config["image_bias_k"],
                                     codec._table_dtype())
        if any(not np.array_equal(stored[k], v) for k, v in want.items()):
            raise SystemExit(f"{path}: the stored sparse prior is not the held-out images' own")
        return f"sparse k={codec.config['image_bias_k']}, held-out images' own means"
    if stored["image_bias"].shape != means.shape:
        raise SystemExit(f"{path}: the stored image_bias is not one row per held-out image")
    return "on, held-out images' own means"


def run_heldout_part(x: np.ndarray, only, log, configs=None) -> list[dict]:
    """Fit on the first 80% of the images (as slcodec.encode would for a file of them: image statistics
    of all their labels, the default fit sample), write the other 20% with the same learned
    parameters.  A per-image prior (vq's image_bias) is per image data stored in the file, so the
    held-out file's prior is built from the held-out images' own labels, as an encode of them would.
    Configurations that differ only in encode-only options (vq's residual_k) share one fit."""
    I, V, C = x.shape
    nfit = int(round(0.8 * I))
    held = np.asarray(x[nfit:], dtype=np.float32).reshape(-1, C)
    rows = []
    fitted_key = fitted = fit_s = means = None
    with tempfile.TemporaryDirectory() as tmp:
        for codec_id, label, opts in CODECS:
            if codec_id not in HELDOUT or (only and codec_id not in only) or opts.get("image_bias") == "on" \
                    or (configs and label not in configs):
                continue
            enc_only = get_codec_class(codec_id).encode_only_options
            fit_opts = {k: v for k, v in opts.items() if k not in enc_only}
            key = (codec_id, json.dumps(fit_opts, sort_keys=True))
            if key != fitted_key:
                fitted = None
                t0 = time.perf_counter()
                fitted = fit_on_images(x[:nfit], codec_id, fit_opts)
                fit_s = time.perf_counter() - t0
                means = prior_for_images(fitted, held, [I - nfit, V])
                fitted_key = key
            enc = {k: v for k, v in opts.items() if k in enc_only}
            codec = fitted.with_options(**enc) if enc else fitted
            path = os.path.join(tmp, "h.vqsl")
            t1 = time.perf_counter()
            write_fitted(path, codec, held, [I - nfit, V], C)
            enc_s = time.perf_counter() - t1
            prior = check_heldout_prior(path, means, codec)
            row = {"part": "held-out", "method": f"slcodec {codec_id}", "config": label, "labels": len(held),
                   **measure(path, held), "fit_s": round(fit_s, 1), "fit_images": nfit, "image_prior": prior,
                   "encode_s": round(enc_s, 1), "peak_rss_mib": None}
            os.remove(path)
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
