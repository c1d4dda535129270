#!/usr/bin/env python3
"""The no-flag ``slcodec encode`` on every label set of BENCHMARKS.md (issue 15's done-when table).

    nice -n 19 python benchmarks/noflag_sets.py run SET.npy [SET.npy ...] --json benchmarks/results/noflag_sets.json
    python benchmarks/noflag_sets.py table benchmarks/results/noflag_sets*.json

``run``: for each set, in one run and one after the other, ``slcodec encode SET -o F --json -q`` (no
flags: the codec chosen for the set, default target ``--max-kl 0.1@1 --max-kl 0.01@4`` within 2%
of FP16) and, unless ``--no-vq``, today's default ``slcodec encode SET -o F --codec vq --json -q``,
each in a child process: wall seconds, the child's CPU seconds (user + system), the load average
before and after, the file's bits per label all counted and the fidelity ``encode`` measured on
the labels written.  ``--reuse-noflag SET=SUMMARY.json`` takes a no-flag ``--json`` summary already
made (e.g. by ``benchmarks/downstream.py``'s ``noflag`` variant) instead of running it again; its
seconds are then the encode's own (as ``--json`` reports them), said so in the record.

``table``: per set, the no-flag result against the reference rows of BENCHMARKS.md's
rate-distortion results (``REFERENCES``): the fewest all-counted bits among the rows that meet
the default target within the budget ("met" when the no-flag file meets it at <= 1.1x those bits);
when none does, the best fidelity within the budget at T = 1 and at T = 4 separately (each the
lowest KL of any row within the budget with top-1 100%), against which the no-flag fidelity is
"within 10%" or not.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET = ((0.1, 1.0), (0.01, 4.0))

#: label set -> the BENCHMARKS.md rate-distortion rows of that set: (results file, row filter).
#: The part is the file holding the whole set where there is one ("all"), else the fit part.
REFERENCES = {
    # the quick run has no file of the whole set: its fit part, images 0-29 (9,000 of the 12,000 labels)
    "lite0_40x300.npy": [("rd_quick_imagenet.json", {"part": "fit"})],
    "lite0_120x300.npy": [("rd_imagenet.json", {"part": "all"})],
    "corpus_small.npy": [("corpus_rd_small.json", {"part": "all"}), ("vq_residual_small.json", {})],
    "corpus_full.npy": [("corpus_rd_full.json", {"part": "all"}), ("vq_residual_full.json", {})],
    "fmnist_ipc10_logits.npy": [("simple_codecs_fmnist.json", {})],
    "lm3_10k.npy": [("rd_lm3.json", {"part": "fit"})],
    # no rate-distortion run has these labels (the 1-thread teacher set): section 4's no-flag file of them
    "fmnist_ipc50_logits.npy": [("downstream_noflag_ipc50.json", {"variant": "noflag"})],
}


def _as_rd_row(row: dict) -> dict:
    """A ``benchmarks/downstream.py`` row of its ``noflag`` variant as a rate-distortion row (the file
    the no-flag encode wrote then, its fidelity measured on all its labels)."""
    if "kl" in row and "kl_T1" not in row:   # a benchmarks/vq_residual.py row (vq with a residual, format 1.8)
        row = dict(row, kl_T1=row["kl"]["1"], kl_T4=row["kl"]["4"])
    if "noflag" not in row:
        return row
    nf = row["noflag"]
    fid = nf["fidelity"]
    return dict(row, method=f"no-flag encode then ({nf['codec']})",
                params=" ".join(f"{k}={v}" for k, v in nf["codec_config"].items() if k != "fit_sample"),
                bits_per_label=nf["bits_per_label"], top1=fid["top1"],
                kl_T1=fid["kl"]["1"], kl_T4=fid["kl"]["4"])


def child(cmd, timeout: float | None = None) -> dict:
    """Run ``cmd``; wall and CPU seconds of the child, load average before and after, its JSON stdout.
    With ``timeout`` (seconds) a child still running then is killed and recorded as stopped (no summary)."""
    load0 = os.getloadavg()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"command": " ".join(cmd), "stopped_after_s": round(time.perf_counter() - t0, 1),
                "cpu_s": round((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), 1),
                "load_before": [round(x, 2) for x in load0],
                "load_after": [round(x, 2) for x in os.getloadavg()], "summary": None}
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return {"command": " ".join(cmd), "wall_s": round(wall, 1),
            "cpu_s": round((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), 1),
            "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()],
            "summary": json.loads(proc.stdout)}


def git_state() -> dict:
    """The commit measured and the package files that differed from it (a shared working tree)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=HERE.parent, capture_output=True, text=True).stdout.strip()
    return {"head": git("rev-parse", "HEAD"), "modified": git("status", "--short", "--", "slcodec").splitlines()}


def brief(summary: dict) -> dict:
    keep = ("codec", "codec_config", "bits_per_label", "marginal_bits_per_label", "fixed_bytes", "labels",
            "fidelity", "missed", "seconds", "budget_bits_per_label")
    out = {k: summary.get(k) for k in keep}
    if summary.get("choice"):
        c = summary["choice"]
        out["choice"] = {k: c[k] for k in ("codec", "config", "met", "missed", "reason", "predicted_bits_per_label")}
        out["candidates"] = c["candidates"]
    return out


def cmd_run(args) -> int:
    reuse = dict(item.split("=", 1) for item in args.reuse_noflag)
    old = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {"sets": {}}
    # every run that wrote into this file, as typed (the environment that matters: the thread count)
    old.setdefault("meta", {}).setdefault("commands", []).append(
        {"argv": ["python", "benchmarks/noflag_sets.py", *sys.argv[1:]],
         "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    for path in args.sets:
        name = os.path.basename(path)
        rec = {"input": path}
        with tempfile.TemporaryDirectory(prefix="noflag-") as tmp:
            if name in reuse:
                summary = json.loads(Path(reuse[name]).read_text())
                rec["noflag"] = {"reused_from": reuse[name], "wall_s": None, "cpu_s": None,
                                 "seconds_note": "the encode's own seconds (--json), interpreter start excluded",
                                 **brief(summary)}
            else:
                run = child([sys.executable, "-m", "slcodec", "encode", path, "-o", os.path.join(tmp, "noflag.vqsl"),
                             "--json", "-q"])
                rec["noflag"] = {k: v for k, v in run.items() if k != "summary"} | brief(run["summary"])
            print(name, "noflag", json.dumps({k: rec["noflag"].get(k) for k in
                                             ("codec", "codec_config", "bits_per_label", "wall_s", "cpu_s")}),
                  flush=True)
            # saved before the (long, at large C) --codec vq run, so that stopping it keeps the no-flag row;
            # the package measured by each run (a shared tree can change between them)
            rec["noflag"]["git"] = rec["git"] = git_state()
            old["sets"][name] = rec
            Path(args.json).write_text(json.dumps(old, indent=1) + "\n")
            if not args.no_vq:
                run = child([sys.executable, "-m", "slcodec", "encode", path, "-o", os.path.join(tmp, "vq.vqsl"),
                             "--codec", "vq", "--json", "-q"], timeout=args.vq_timeout)
                rec["vq_default"] = {k: v for k, v in run.items() if k != "summary"} | (
                    brief(run["summary"]) if run["summary"] is not None else {})
                print(name, "vq", json.dumps({k: rec["vq_default"].get(k) for k in
                                             ("bits_per_label", "wall_s", "stopped_after_s", "cpu_s")}), flush=True)
        rec["git"] = git_state()
        old["sets"][name] = rec
        Path(args.json).write_text(json.dumps(old, indent=1) + "\n")
    return 0


def meets(row: dict, budget: float) -> bool:
    return (row["bits_per_label"] <= budget and row["top1"] >= 1.0 and
            all(row.get(f"kl_T{t:g}") is not None and row[f"kl_T{t:g}"] <= kl for kl, t in TARGET))


def reference(name: str, budget: float) -> dict:
    rows = []
    for fname, filt in REFERENCES.get(name, []):
        d = json.loads((RESULTS / fname).read_text())
        for r in d["rows"]:
            if all(r.get(k) == v for k, v in filt.items()):
                r = _as_rd_row(r)
                rows.append(dict(r, source=fname, what=f"{r.get('method', r.get('codec'))} "
                                                       f"{r.get('params', r.get('config', ''))}".strip()))
    if not rows:
        return {"rows": 0}
    meeting = [r for r in rows if meets(r, budget)]
    if meeting:
        best = min(meeting, key=lambda r: r["bits_per_label"])
        return {"rows": len(rows), "rule": "fewest bits meeting the target", "best": best}
    within = [r for r in rows if r["bits_per_label"] <= budget and r["top1"] >= 1.0]
    out = {"rows": len(rows), "rule": "nothing meets the target within the budget: best KL within it"}
    for t in ("1", "4"):
        have = [r for r in within if r.get(f"kl_T{t}") is not None]
        out[f"best_T{t}"] = min(have, key=lambda r: r[f"kl_T{t}"]) if have else None
    return out


def cmd_table(args) -> int:
    sets = {}
    for path in args.json:
        sets.update(json.loads(Path(path).read_text())["sets"])
    lines = ["| set | no-flag choice | bits/label | KL@1 | KL@4 | top-1 | reference (BENCHMARKS.md) | verdict |"
             " no-flag s (CPU s) | --codec vq s (CPU s) | ratio |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
    for name, rec in sets.items():
        nf = rec["noflag"]
        f = nf["fidelity"]
        budget = nf["budget_bits_per_label"]
        ref = reference(name, budget)
        kl1, kl4 = f["kl"]["1"], f["kl"]["4"]
        if ref.get("best"):
            b = ref["best"]
            met = not nf["missed"]
            ratio = nf["bits_per_label"] / b["bits_per_label"]
            reftext = f"{b['what']}: {b['bits_per_label']:.1f} bits"
            verdict = (f"{'met' if met and ratio <= 1.1 else 'missed'}: {ratio:.2f}x the bits"
                       + ("" if met else f" (no-flag misses: {'; '.join(nf['missed'])})"))
        elif ref.get("rows"):
            parts, ok = [], True
            for t, got in (("1", kl1), ("4", kl4)):
                b = ref.get(f"best_T{t}")
                if b is None:
                    parts.append(f"T={t}: no row")
                    continue
                r = got / b[f"kl_T{t}"]
                ok &= r <= 1.1
                parts.append(f"T={t}: {b['what']} {b[f'kl_T{t}']:.4g} at {b['bits_per_label']:.1f} bits "
                             f"(no-flag {r:.2f}x)")
            reftext = "; ".join(parts)
            if not nf["missed"]:
                verdict = "no-flag meets the target; no reference row does within the budget"
            else:
                verdict = ("nothing meets; " + ("within 10%" if ok else "NOT within 10%")
                           + f" (no-flag misses: {'; '.join(nf['missed'])})")
        else:
            reftext, verdict = "no rate-distortion rows for this set", "-"
        vq = rec.get("vq_default")
        nf_s = nf["wall_s"] if nf.get("wall_s") is not None else nf["seconds"]
        if vq and vq.get("wall_s") is None:  # stopped by --vq-timeout: a lower bound on its time
            vq_text = f"stopped after {vq['stopped_after_s']:.0f} ({vq['cpu_s']}) | <= {nf_s / vq['stopped_after_s']:.2f} |"
        elif vq:
            vq_text = f"{vq['wall_s']:.0f} ({vq['cpu_s']}) | {nf_s / vq['wall_s']:.2f} |"
        else:
            vq_text = "- | - |"
        lines.append(f"| {name} | {nf['codec']} {' '.join(f'{k}={v}' for k, v in nf['choice']['config'].items())} | "
                     f"{nf['bits_per_label']:.2f} | {kl1:.4g} | {kl4:.4g} | {100 * f['top1']:.2f}% | {reftext} | "
                     f"{verdict} | {nf_s:.0f} ({nf.get('cpu_s')}) | " + vq_text)
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("sets", nargs="+")
    r.add_argument("--json", required=True)
    r.add_argument("--no-vq", action="store_true", help="skip the --codec vq timing")
    r.add_argument("--vq-timeout", type=float, default=None, metavar="S",
                   help="stop the --codec vq child after S seconds and record it as stopped (a lower bound)")
    r.add_argument("--reuse-noflag", action="append", default=[], metavar="SET=SUMMARY.json")
    t = sub.add_parser("table")
    t.add_argument("json", nargs="+")
    args = ap.parse_args(argv)
    return cmd_run(args) if args.cmd == "run" else cmd_table(args)


if __name__ == "__main__":
    sys.exit(main())
