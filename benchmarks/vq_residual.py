"""vq with a per-view residual (format 1.8) on a real label set: one vq fit, one file per
``residual_k``, every byte counted, against the simple methods written in the same run.

    nice -n 19 python benchmarks/vq_residual.py benchmarks/.cache/corpus_small.npy \\
        --ks 0 1 2 4 8 16 --simple "sparse k=5" "sparse k=20" "imgprior residual_k=8" \\
        --threads 1 --out benchmarks/results/vq_residual_small

The vq is fitted once exactly as ``slcodec encode --codec vq`` fits it (the whole-input image
statistics, ``fit_sample`` evenly spaced rows; extra vq options with ``--vq KEY=VALUE``); each
``residual_k`` then writes the whole set with that fitted codec (``Codec.with_options`` and
``Writer.use_fitted``: the residual is encode-only).  Each simple method is a plain
``slcodec.encode`` of the set.  For every file: bits per label all counted (file bytes x 8 / N)
and per section group, KL(p||q) at T = 1 and 4 (mean over every label, computed in batches),
top-1 and top-5 agreement, encode seconds (wall and process CPU) and the CPU seconds of decoding
every label (``Reader.decode`` in batches of 8,192, median of ``--repeat``).  Writes OUT.json and
OUT.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import slcodec  # noqa: E402
from slcodec.format.container import Container  # noqa: E402
from slcodec.format.stats import file_stats  # noqa: E402
from slcodec.pipeline.inputs import as_source  # noqa: E402
from slcodec.pipeline.metrics import kl_divergence  # noqa: E402
from slcodec.pipeline.rows import RowReader, fit_rows  # noqa: E402
from slcodec.pipeline.statistics import compute_fit_statistics  # noqa: E402
from slcodec.pipeline.writer import Writer  # noqa: E402

BATCH = 8192


def _value(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _options(items):
    return {k: _value(v) for k, v in (item.split("=", 1) for item in items)}


def write_vq_files(src, folder, ks, vq_options):
    """Fit vq once, write one file per residual k; yields (k, path, encode wall s, encode CPU s)."""
    rows = src.rows()
    n = rows.shape[0]
    fitted = None
    for k in ks:
        path = os.path.join(folder, f"vq_r{k}.vqsl")
        t0, c0 = time.perf_counter(), time.process_time()
        with Writer(path, "vq", classes=src.classes, shape=src.shape[:-1], source_kind=src.kind, seed=0,
                    residual_k=k, **vq_options) as w, RowReader(rows) as reader:
            if fitted is None:
                wanted = w.codec.fit_statistics(w.shape, src.classes)
                for name, value in compute_fit_statistics(wanted, reader, w.shape, src.kind, BATCH, 0, n).items():
                    w.set_fit_statistic(name, value)
                idx = fit_rows(n, w.fit_sample)
                w.fit(reader.take(idx), rows=idx)
                fitted = w.codec
            else:
                w.use_fitted(fitted.with_options(residual_k=k))
            for s in range(0, n, 65536):
                w.append(reader.read(s, min(n, s + 65536)))
        yield k, path, time.perf_counter() - t0, time.process_time() - c0


def measure(path, src, repeat):
    rows = src.rows()
    n = rows.shape[0]
    sums = {1.0: 0.0, 4.0: 0.0}
    top1 = top5 = 0
    with slcodec.open(path) as r:
        for s in range(0, n, BATCH):
            e = min(n, s + BATCH)
            p = torch.log_softmax(torch.from_numpy(np.asarray(rows[s:e], dtype=np.float32)), 1)
            q = r.decode(list(range(s, e)), as_="log_probs")
            for t in sums:
                sums[t] += float(kl_divergence(p, q, t).double().sum())
            top1 += int((p.argmax(1) == q.argmax(1)).sum())
            tp, tq = p.topk(5, 1).indices, q.topk(5, 1).indices
            top5 += float((tp[:, :, None] == tq[:, None, :]).any(2).double().mean(1).sum())
    cpu = []
    for _ in range(repeat):
        with slcodec.open(path) as r:
            c0 = time.process_time()
            for s in range(0, n, BATCH):
                r.decode(list(range(s, min(n, s + BATCH))))
            cpu.append(time.process_time() - c0)
    with Container.open(path) as c:
        st = file_stats(c)
        codings = {sec["name"]: sec.get("coding") for sec in c.header["sections"] if sec["kind"] == "stream"}
    groups = {g: v["bytes"] * 8 / n for g, v in st["groups"].items()}
    streams = {e["name"]: e["bytes"] * 8 / n for e in st["sections"] if e["name"].startswith("streams/")}
    return {"bits_per_label": os.path.getsize(path) * 8 / n, "groups_bits": groups, "streams_bits": streams,
            "codings": codings, "kl": {f"{t:g}": v / n for t, v in sums.items()}, "top1": top1 / n,
            "top5": top5 / n, "decode_cpu_s": statistics.median(cpu), "decode_cpu_s_all": cpu,
            "decode_labels_per_cpu_s": n / statistics.median(cpu)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("labels", help=".npy [images, views, C] or [N, C] logits")
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16])
    ap.add_argument("--vq", nargs="*", default=[], help="extra vq options KEY=VALUE (the fit's)")
    ap.add_argument("--simple", nargs="*", default=[], help='simple methods, "CODEC KEY=VALUE ..."')
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x = np.load(args.labels, mmap_mode="r")
    src = as_source(x, args.labels)
    rows_out = []
    meta = {"command": "python " + " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:])),
            "labels": args.labels, "shape": list(x.shape), "torch_threads": torch.get_num_threads(),
            "slcodec": slcodec.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="vq-residual-", dir=os.path.dirname(os.path.abspath(args.out))) as tmp:
        for k, path, wall, cpu in write_vq_files(src, tmp, args.ks, _options(args.vq)):
            m = measure(path, src, args.repeat)
            row = {"method": "vq", "config": dict(_options(args.vq), residual_k=k), "encode_wall_s": wall,
                   "encode_cpu_s": cpu, **m}
            rows_out.append(row)
            print(json.dumps({k2: row[k2] for k2 in ("config", "bits_per_label", "kl", "top1", "top5",
                                                       "encode_wall_s", "decode_labels_per_cpu_s")}), flush=True)
        for spec in args.simple:
            codec, *opts = spec.split()
            path = os.path.join(tmp, "simple.vqsl")
            t0, c0 = time.perf_counter(), time.process_time()
            slcodec.encode(x, path, codec=codec, seed=0, **_options(opts))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            m = measure(path, src, args.repeat)
            row = {"method": codec, "config": _options(opts), "encode_wall_s": wall, "encode_cpu_s": cpu, **m}
            rows_out.append(row)
            print(json.dumps({k2: row[k2] for k2 in ("method", "config", "bits_per_label", "kl", "top1",
                                                       "encode_wall_s")}), flush=True)
            os.remove(path)
    meta["load_after"] = os.getloadavg()
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows_out}, f, indent=1)
    lines = [f"#### {os.path.basename(args.labels)} {list(x.shape)}: every label, every byte counted", "",
             "| method | config | bits/label all counted | label streams | KL T=1 | KL T=4 | top-1 | top-5 | "
             "encode s (CPU) | decode labels/CPU s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(rows_out, key=lambda r: r["bits_per_label"]):
        cfg = " ".join(f"{k}={v}" for k, v in r["config"].items()) or "-"
        lines.append(f"| {r['method']} | {cfg} | {r['bits_per_label']:.1f} | "
                     f"{r['groups_bits'].get('label_streams', 0):.1f} | {r['kl']['1']:.4f} | {r['kl']['4']:.5f} | "
                     f"{100 * r['top1']:.2f}% | {r['top5']:.3f} | {r['encode_wall_s']:.0f} ({r['encode_cpu_s']:.0f}) | "
                     f"{r['decode_labels_per_cpu_s']:,.0f} |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
