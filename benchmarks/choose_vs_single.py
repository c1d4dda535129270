#!/usr/bin/env python3
"""The no-flag ``slcodec encode`` (the codec chosen for the set, issue 15) against single configurations.

    nice -n 19 python benchmarks/choose_vs_single.py slcodec/data/lite0_8x64_fp16.npy --out benchmarks/results/choose_fixture
    nice -n 19 python benchmarks/choose_vs_single.py benchmarks/.cache/corpus_small.npy --out benchmarks/results/choose_corpus_small

1. ``slcodec encode SET -o F --json`` in a child process (no flags: default target ``--max-kl 0.1@1
   --max-kl 0.01@4`` within 2% of FP16), its wall time, the file's bits per label all counted and
   the fidelity it printed (measured on the labels written);
2. each single configuration of ``--singles`` (default: those near the default budget on ImageNet
   labels) written for the whole set by :func:`slcodec.encode` with the same seed, its bits per label
   (file bytes x 8 / labels) and fidelity measured the same way (``choose.written_fidelity``);
3. the reference: the fewest bits among the singles that meet the default target within the budget,
   else the best fidelity within the budget (the largest KL / target ratio smallest).

Optionally (``--vq-fit``) the fit time of today's default (``--codec vq``) for the time ratio.
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


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import slcodec  # noqa: E402
from slcodec.pipeline import choose as ch  # noqa: E402
from slcodec.pipeline.inputs import load_labels  # noqa: E402

SINGLES = [("imgprior", {"residual_k": k}) for k in (4, 8, 16)] + \
          [("sparse", {"k": k}) for k in (8, 16)] + [("topk", {"k": 10})] + \
          [("vq", {"hidden": 32, "decoder_layers": 0, "bits": 8})]


def cli_encode(src: str, out: str, extra=()) -> tuple[dict, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "slcodec", "encode", src, "-o", out, "--json", "-q", *extra],
                          capture_output=True, text=True)
    sec = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"slcodec encode {src} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout), sec


def worst_ratio(fid: dict) -> float:
    return max(fid["kl"][f"{t:g}"] / kl for kl, t in ch.DEFAULT_TARGET)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vq-fit", action="store_true", help="also time today's default, --codec vq")
    ap.add_argument("--singles", default=None, help="JSON list of [codec, options] (default: SINGLES)")
    ap.add_argument("--noflag-json", default=None,
                    help="the --json summary of a no-flag encode of INPUT already run (its seconds are the "
                         "encode's own, without interpreter start) instead of running it again")
    args = ap.parse_args(argv)
    singles = json.loads(args.singles) if args.singles else SINGLES
    src = load_labels(args.input)
    budget = ch.default_budget(src.classes)
    temps = [t for _, t in ch.DEFAULT_TARGET]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.noflag_json:
            summary = json.loads(Path(args.noflag_json).read_text())
            sec = summary["seconds"]
        else:
            summary, sec = cli_encode(args.input, os.path.join(tmp, "noflag.vqsl"))
        rows.append({"method": "no flags (chosen)", "codec": summary["codec"], "config": summary["codec_config"],
                     "bits_per_label": summary["bits_per_label"], "fidelity": summary["fidelity"],
                     "seconds": sec, "missed": summary["missed"]})
        print(json.dumps(rows[-1]), flush=True)
        if args.vq_fit:
            s, sec = cli_encode(args.input, os.path.join(tmp, "vq.vqsl"), ["--codec", "vq"])
            rows.append({"method": "--codec vq (today's default)", "codec": "vq", "config": s["codec_config"],
                         "bits_per_label": s["bits_per_label"], "fidelity": s["fidelity"], "seconds": sec})
            print(json.dumps(rows[-1]), flush=True)
        for codec, opts in singles:
            path = os.path.join(tmp, "single.vqsl")
            t0 = time.perf_counter()
            slcodec.encode(src, path, codec=codec, seed=0, **opts)
            sec = time.perf_counter() - t0
            fid = ch.written_fidelity(path, src, temps)
            rows.append({"method": "single", "codec": codec, "config": opts, "seconds": sec,
                         "bits_per_label": os.path.getsize(path) * 8 / fid["of_labels"], "fidelity": fid})
            print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        r["meets"] = (r["bits_per_label"] <= budget and r["fidelity"]["top1"] == 1.0 and
                      all(r["fidelity"]["kl"][f"{t:g}"] <= kl for kl, t in ch.DEFAULT_TARGET))
        r["worst_kl_ratio"] = worst_ratio(r["fidelity"])
    singles_rows = [r for r in rows if r["method"] == "single"]
    meeting = [r for r in singles_rows if r["meets"]]
    within = [r for r in singles_rows if r["bits_per_label"] <= budget and r["fidelity"]["top1"] == 1.0]
    ref = (min(meeting, key=lambda r: r["bits_per_label"]) if meeting
           else min(within, key=lambda r: r["worst_kl_ratio"]) if within else None)
    result = {"input": args.input, "shape": list(src.shape), "budget_bits_per_label": budget,
              "target": ch.DEFAULT_TARGET, "rows": rows, "reference": ref,
              "reference_rule": "fewest bits meeting the target" if meeting else "best fidelity within the budget",
              "load_average": os.getloadavg()[0], "slcodec": slcodec.__version__}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    lines = [f"`{args.input}` {list(src.shape)}, budget {budget:g} bits/label, target "
             f"{ch.target_text(ch.DEFAULT_TARGET)}; reference: {result['reference_rule']}", "",
             "| method | codec, options | bits/label | KL@1 (p99) | KL@4 (p99) | top-1 | top-5 | meets | s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        f = r["fidelity"]
        mark = " (reference)" if r is ref else ""
        lines.append(f"| {r['method']}{mark} | {r['codec']} {ch._config_text(r['config'])} | {r['bits_per_label']:.1f} | "
                     f"{f['kl']['1']:.4f} ({f['kl_p99']['1']:.3f}) | {f['kl']['4']:.5f} ({f['kl_p99']['4']:.4f}) | "
                     f"{100 * f['top1']:.2f}% | {100 * f['top5']:.1f}% | {'yes' if r['meets'] else 'no'} | "
                     f"{r['seconds']:.0f} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
