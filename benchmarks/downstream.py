#!/usr/bin/env python3
"""Downstream accuracy: a student trained on a distilled Fashion-MNIST set with stored vs original labels.

The distilled sets come from ``benchmarks/data/fashion_mnist.py`` (real training images, IPC
10 or 50, teacher logits ``[I, V, 10]`` for V seeded views of every image). For each label
*variant* the same student is trained from the same seeds; only the labels differ:

``original``
    the teacher logits as generated (FP32, in memory); its storage is that of an ``fp32``
    ``.vqsl`` file of the same labels.
``hard``
    the image's class label, cross-entropy (storage: ceil(log2 C) = 4 bits per *image*,
    shown per stored label as 4 / V).
``fp16``, ``fp32``, ``topk:K``, ``vq:B``
    the logits encoded with ``slcodec.encode(logits, path, codec=..., k=K | bits=B)`` into a
    ``.vqsl`` file (under ``benchmarks/.cache/downstream/``) and decoded for training with
    ``slcodec.open(path).decode(flat_indices, as_="log_probs", temperature=T)`` - one call
    per view, with the flat indices ``i * V + view`` of every image. ``vq`` variants need the
    ``vq`` codec (``slcodec.codecs.codec_ids()``); they are skipped with a note when it is
    absent. ``--codec vq --bits 8 16 32`` adds ``vq:8 vq:16 vq:32``; ``--vq-opt KEY=VALUE`` (repeatable) passes
    more vq options to every vq variant (e.g. the small-C config ``hidden=32 decoder_layers=0``).
``noflag``
    the logits saved as a float32 ``.npy`` and encoded by ``slcodec encode IN.npy -o OUT.vqsl
    --json -q`` in a child process: no codec flag, so the codec and its size are chosen for the
    set (issue 15: default target ``--max-kl 0.1@1 --max-kl 0.01@4`` within 2% of FP16); the
    JSON summary (choice, bits, fidelity it measured, seconds) is kept in the record.

Student and training
    conv3x3(1->16)-ReLU-maxpool2-conv3x3(16->32)-ReLU-maxpool2-fc(1568->64)-ReLU-fc(64->10),
    input standardised as for the teacher. Adam (lr 1e-3, cosine decay to 0 over the run),
    batch 100 (IPC 10: the whole set, one step per epoch; IPC 50: 5 steps), ``--epochs``
    epochs; at epoch e every image is seen as view ``e % V`` (``fmnist_view`` of the data
    script, regenerated from (seed, image, view), so the view matches its stored label).
    Soft labels: ``T^2 * KL(p_T || q_T)`` with p_T the (decoded) label and q_T the student's
    softmax at temperature ``--temperature`` (4); hard labels: cross-entropy. Seeds
    0..S-1 fix the initialisation (``torch.manual_seed``) and the batch order
    (``torch.Generator``). Test accuracy on the 10,000 Fashion-MNIST test images after the
    last epoch. ``torch.set_num_threads(--threads)``: default 1, because on the 2 shared,
    busy cores one thread ran a training step twice as fast as two (41 vs 91 ms).

Epochs: one student run must stay under ~60 s on 2 busy cores (~41 ms per step of 100
images, ~4 s for the test set). Defaults: IPC 10, 300 epochs (= V, every stored view used
once; 300 steps, ~16 s a run); IPC 50, 200 epochs (1,000 steps, ~45 s a run; views
0..199 are used, all 300 stay stored and counted). ``--quick`` trains 2 seeds x 60 epochs on IPC 10 with the variants
original, hard, topk:1, fp16 (and vq:16 when available) for a smoke run.

Reported per variant: test accuracy mean +- std (sample std over seeds), retention =
mean acc(variant) / mean acc(original), label storage in bits per label = file bytes * 8 /
labels (everything in the ``.vqsl`` file counted; the fixed part - header, codec parameters,
records - shown apart), its ratio against FP16 (16 * C bits per label), and the fidelity of
the decoded labels against the originals (KL(p||q) at T=1 and at the training T, top-1
agreement). Markdown table on stdout; JSON in ``benchmarks/results/downstream.json``
(``downstream_quick.json`` with ``--quick``).

Example:
    python benchmarks/downstream.py --ipc 10 --seeds 3 --epochs 300
    python benchmarks/downstream.py --ipc 10 --codec vq --bits 8 16 32
    python benchmarks/downstream.py --quick
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "data"))
sys.path.insert(0, str(HERE))
from fashion_mnist import fmnist_view, load_split, to_input, view_params  # noqa: E402

import slcodec  # noqa: E402
from slcodec.codecs import codec_ids  # noqa: E402
from slcodec.format.container import Container  # noqa: E402
from slcodec.format.stats import file_stats  # noqa: E402

CACHE = HERE / ".cache"
RESULTS = HERE / "results"
DEFAULT_VARIANTS = ["original", "hard", "topk:1", "topk:2", "topk:3", "fp16"]
QUICK_VARIANTS = ["original", "hard", "topk:1", "fp16"]


class Student(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


# --------------------------------------------------------------------------- data
def load_set(ipc: int, cache: Path = CACHE) -> dict:
    path = cache / f"fmnist_ipc{ipc}.npz"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run  python benchmarks/data/fashion_mnist.py --ipc {ipc}")
    z = np.load(path)
    d = {k: z[k] for k in z.files}
    d["path"] = path
    d["seed"] = int(d["seed"])
    d["views"] = int(d["views"])
    return d


def build_views(images: np.ndarray, seed: int, n_views: int) -> torch.Tensor:
    """Standardised inputs [n_views, I, 1, 28, 28] of views 0..n_views-1 (fmnist_view)."""
    n = len(images)
    out = torch.empty((n_views, n, 1, 28, 28))
    for a in range(n_views):
        out[a] = to_input(fmnist_view(images, seed, np.arange(n), a))
    return out


def parse_variant(spec: str) -> tuple[str, dict]:
    name, _, arg = spec.partition(":")
    if name in ("original", "hard", "fp16", "fp32", "noflag"):
        if arg:
            raise SystemExit(f"variant {spec!r} takes no argument")
        return name, {}
    if name == "topk":
        return name, {"k": int(arg)}
    if name == "vq":
        return name, {"bits": float(arg)}
    raise SystemExit(f"unknown variant {spec!r} (original, hard, fp16, fp32, topk:K, vq:BITS, noflag)")


def parse_vq_opts(items: list[str]) -> dict:
    """``key=value`` strings -> vq options, converted with the codec's own option types."""
    out = {}
    if not items:
        return out
    from slcodec.codecs import get_codec_class
    known = {o.name: o for o in get_codec_class("vq").options}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--vq-opt {item!r}: expected KEY=VALUE with KEY one of {', '.join(known)}")
        o = known[key]
        out[key] = [o.type(v) for v in val.split(",")] if o.nargs else o.type(val)
    return out


# --------------------------------------------------------------------------- labels
def encode_variant(logits: np.ndarray, name: str, opts: dict, ipc: int, seed: int, out_dir: Path,
                   reuse: bool) -> tuple[Path, float]:
    tag = name + "".join(f"_{k}{v:g}" if isinstance(v, (int, float)) else f"_{k}{v}" for k, v in opts.items())
    path = out_dir / f"fmnist_ipc{ipc}_{tag}.vqsl"
    if reuse and path.exists():
        return path, 0.0
    out_dir.mkdir(parents=True, exist_ok=True)
    augment = {"mode": "seeded", "seed": seed,
               "policy": {"generator": "fmnist_view", "pad": 4, "crop": 28, "hflip": 0.5}}
    t0 = time.perf_counter()
    slcodec.encode(logits, path, codec=name, input_kind="logits", seed=0, augment=augment,
                   provenance={"source": f"fmnist_ipc{ipc}.npz"}, **opts)
    return path, time.perf_counter() - t0


def encode_noflag(logits: np.ndarray, ipc: int, out_dir: Path, reuse: bool) -> tuple[Path, float, dict]:
    """The no-flag ``slcodec encode`` of the logits (the codec chosen for the set), run as a user
    would: the command line in a child process; returns the file, the wall seconds and the
    ``--json`` summary."""
    path = out_dir / f"fmnist_ipc{ipc}_noflag.vqsl"
    summary_path = path.with_suffix(".json")
    if reuse and path.exists() and summary_path.exists():
        return path, 0.0, json.loads(summary_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    npy = out_dir / f"fmnist_ipc{ipc}_logits.npy"
    np.save(npy, logits.astype(np.float32), allow_pickle=False)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "slcodec", "encode", str(npy), "-o", str(path), "--json", "-q"],
                          capture_output=True, text=True)
    sec = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"slcodec encode {npy} (no flags) failed: {proc.stderr.strip()}")
    summary = json.loads(proc.stdout)
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    return path, sec, summary


def decoded_targets(path: Path, images: int, views: int, n_views: int, temperature: float) -> tuple[torch.Tensor, float]:
    """log-probs at ``temperature`` [n_views, I, C], one decode call per view."""
    t0 = time.perf_counter()
    with slcodec.open(path) as reader:
        if tuple(reader.shape[:2]) != (images, views):
            raise SystemExit(f"{path}: shape {reader.shape} does not match the set ({images}, {views})")
        out = torch.stack([reader.decode(np.arange(images) * views + a, as_="log_probs", temperature=temperature)
                           for a in range(n_views)])
    return out, time.perf_counter() - t0


def storage(path: Path) -> dict:
    with Container.open(path) as c:
        s = file_stats(c)
    return {"file": path.name, "file_bytes": s["file_bytes"], "bits_per_label": s["bits_per_label"],
            "fixed_bytes": s["fixed_bytes"], "marginal_bits_per_label": s["marginal_bits_per_label"],
            "ratio_vs_fp16": 16 * s["classes"] / s["bits_per_label"]}


def fidelity(orig_logits: np.ndarray, log_probs_T1: torch.Tensor, log_probs_T: torch.Tensor, T: float) -> dict:
    p = torch.from_numpy(orig_logits.reshape(-1, orig_logits.shape[-1])).double()
    q1 = log_probs_T1.reshape(p.shape).double()
    qT = log_probs_T.reshape(p.shape).double()
    lp1, lpT = torch.log_softmax(p, 1), torch.log_softmax(p / T, 1)
    return {"kl_T1": float((lp1.exp() * (lp1 - q1)).sum(1).mean()),
            f"kl_T{T:g}": float((lpT.exp() * (lpT - qT)).sum(1).mean()),
            "top1_agreement": float((p.argmax(1) == q1.argmax(1)).double().mean())}


# --------------------------------------------------------------------------- training
def train_student(views_x: torch.Tensor, targets, hard: torch.Tensor | None, epochs: int, seed: int,
                  T: float, x_test: torch.Tensor, y_test: torch.Tensor, batch: int = 100, lr: float = 1e-3) -> float:
    """Train from ``seed``; targets: [n_views, I, C] log-probs at T (soft) or None with ``hard`` [I]."""
    torch.manual_seed(seed)
    model = Student()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_views, n = views_x.shape[:2]
    steps_per_epoch = -(-n // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for e in range(epochs):
        a = e % n_views
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            out = model(views_x[a, idx])
            if targets is None:
                loss = F.cross_entropy(out, hard[idx])
            else:
                loss = F.kl_div(F.log_softmax(out / T, 1), targets[a, idx], log_target=True,
                                reduction="batchmean") * (T * T)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for s in range(0, len(x_test), 2000):
            correct += int((model(x_test[s:s + 2000]).argmax(1) == y_test[s:s + 2000]).sum())
    return correct / len(x_test)


# --------------------------------------------------------------------------- main
def default_epochs(ipc: int) -> int:
    """Epochs that keep one student run under ~60 s on 2 busy cores (see the module doc)."""
    return 300 if ipc <= 10 else 200


def fmt_pm(vals: list[float]) -> str:
    m = float(np.mean(vals))
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return f"{100 * m:.2f} ± {100 * sd:.2f}"


def variant_label(r: dict) -> str:
    """The variant's name; for ``noflag`` with the codec and options the choice wrote."""
    nf = r.get("noflag")
    if not nf:
        return r["variant"]
    opts = " ".join(f"{k}={v}" for k, v in nf["choice"]["config"].items())
    return f"noflag (chose {nf['codec']} {opts})".replace("  ", " ").replace(" )", ")")


def markdown(rows: list[dict], T: float) -> str:
    head = ["ipc", "labels", "test acc % (mean ± std)", "retention", "bits/label", "fixed bytes", "marginal bits",
            "× less than FP16", "KL@T1", f"KL@T{T:g}", "top-1 agr."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        st = r.get("storage") or {}
        fi = r.get("fidelity") or {}
        lines.append("| " + " | ".join([
            str(r["ipc"]), variant_label(r), fmt_pm(r["acc"]), f"{100 * r['retention']:.1f}%",
            f"{st['bits_per_label']:.2f}" if st else "-",
            str(st.get("fixed_bytes", "-")) if st else "-",
            f"{st['marginal_bits_per_label']:.2f}" if st else "-",
            f"{st['ratio_vs_fp16']:.1f}" if st else "-",
            f"{fi['kl_T1']:.4f}" if fi else "-", f"{fi[f'kl_T{T:g}']:.5f}" if fi else "-",
            f"{100 * fi['top1_agreement']:.2f}%" if fi else "-"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ipc", type=int, nargs="+", default=[10])
    ap.add_argument("--variants", nargs="+", help=f"label variants (default: {' '.join(DEFAULT_VARIANTS)})")
    ap.add_argument("--codec", choices=["vq"], help="add slcodec variants of this codec at --bits")
    ap.add_argument("--bits", type=float, nargs="+", default=[8, 16, 32])
    ap.add_argument("--vq-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="extra vq option for every vq variant, e.g. --vq-opt hidden=32 --vq-opt decoder_layers=0 "
                         "(the small-C config; the file name and the JSON record carry the options)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, help="student epochs (default: 300 for IPC 10, 200 for IPC 50 and above)")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on 2 busy cores one thread ran a step 2x faster than two)")
    ap.add_argument("--quick", action="store_true", help="2 seeds x 60 epochs, IPC 10, few variants (smoke run)")
    ap.add_argument("--reuse", action="store_true", help="reuse .vqsl files already in the cache")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/downstream[_quick].json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    T = args.temperature
    variants = args.variants or (QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)
    if args.quick:
        args.seeds, args.epochs, args.ipc = min(args.seeds, 2), min(args.epochs or 60, 60), [10]
        if "vq" in codec_ids() and not args.variants:
            variants = variants + ["vq:4"]   # C = 10: the image prior makes 4 bits enough
    if args.codec:
        variants = variants + [f"{args.codec}:{b:g}" for b in args.bits]
    parsed = [(v, *parse_variant(v)) for v in variants]
    vq_extra = parse_vq_opts(args.vq_opt)
    for _, name, opts in parsed:
        if name == "vq":
            opts.update(vq_extra)
    if not any(name == "original" for _, name, _ in parsed):
        parsed.insert(0, ("original", "original", {}))
    available = codec_ids()
    out_json = args.out or RESULTS / ("downstream_quick.json" if args.quick else "downstream.json")
    notes = []
    t_start = time.perf_counter()

    x_test_u8, y_test_np = load_split("test")
    x_test, y_test = to_input(x_test_u8), torch.from_numpy(y_test_np)
    rows = []
    ipc_epochs = {}
    for ipc in args.ipc:
        d = load_set(ipc, args.cache)
        logits, images, classes = d["logits"].astype(np.float32), d["images"], d["classes"]
        n_img, V, C = logits.shape
        epochs = args.epochs or default_epochs(ipc)
        n_views = min(epochs, V)
        ipc_epochs[ipc] = epochs
        t0 = time.perf_counter()
        views_x = build_views(images, d["seed"], n_views)
        assert view_params(d["seed"], 0, 0) is not None
        t_views = time.perf_counter() - t0
        print(f"IPC {ipc}: {n_img} images x {V} views x {C} classes; {epochs} epochs use views "
              f"0..{n_views - 1}; views built in {t_views:.1f}s", file=sys.stderr, flush=True)
        hard = torch.from_numpy(classes.astype(np.int64))
        orig_T = torch.log_softmax(torch.from_numpy(logits[:, :n_views]).transpose(0, 1) / T, dim=2).contiguous()
        base_acc = None
        for spec, name, opts in parsed:
            rec = {"ipc": ipc, "variant": spec, "codec": name, "options": opts, "epochs": epochs}
            if name in ("fp16", "fp32", "topk", "vq") and name not in available:
                notes.append(f"{spec}: codec {name!r} is not available in this slcodec "
                             f"({', '.join(available)}); skipped")
                print("SKIP " + notes[-1], file=sys.stderr)
                continue
            t_enc = t_dec = 0.0
            if name == "original":
                targets, hard_t = orig_T, None
                path, t_enc = encode_variant(logits, "fp32", {}, ipc, d["seed"], args.cache / "downstream", args.reuse)
                rec["storage"] = storage(path)
                rec["storage"]["note"] = "as an fp32 .vqsl file (the labels themselves are used from memory)"
            elif name == "hard":
                targets, hard_t = None, hard
                bits_img = math.ceil(math.log2(C))
                rec["storage"] = {"bits_per_label": bits_img / V, "file_bytes": math.ceil(n_img * bits_img / 8),
                                  "fixed_bytes": 0, "marginal_bits_per_label": bits_img / V,
                                  "ratio_vs_fp16": 16 * C * V / bits_img,
                                  "note": f"{bits_img} bits per image (class id), shared by its {V} views"}
            else:
                if name == "noflag":
                    path, t_enc, summary = encode_noflag(logits, ipc, args.cache / "downstream", args.reuse)
                    rec["noflag"] = {k: summary.get(k) for k in ("codec", "codec_config", "bits_per_label",
                                                                 "fidelity", "missed", "target",
                                                                 "budget_bits_per_label", "seconds")}
                    rec["noflag"]["choice"] = {k: summary["choice"][k] for k in
                                               ("codec", "config", "met", "missed", "reason",
                                                "predicted_bits_per_label")}
                    rec["noflag"]["candidates"] = summary["choice"]["candidates"]
                    rec["noflag"]["command"] = "slcodec encode IN.npy -o OUT.vqsl --json -q"
                else:
                    path, t_enc = encode_variant(logits, name, opts, ipc, d["seed"], args.cache / "downstream",
                                                 args.reuse)
                targets, t_dec = decoded_targets(path, n_img, V, n_views, T)
                hard_t = None
                rec["storage"] = storage(path)
                with slcodec.open(path) as r:
                    lp1 = r.decode(None, as_="log_probs")
                    lpT = r.decode(None, as_="log_probs", temperature=T)
                rec["fidelity"] = fidelity(logits, lp1, lpT, T)
            rec["encode_s"], rec["decode_s"] = round(t_enc, 2), round(t_dec, 2)
            accs, secs = [], []
            for seed in range(args.seeds):
                t1 = time.perf_counter()
                accs.append(train_student(views_x, targets, hard_t, epochs, seed, T, x_test, y_test))
                secs.append(time.perf_counter() - t1)
            rec["acc"] = accs
            rec["acc_mean"], rec["acc_std"] = float(np.mean(accs)), float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
            rec["train_s_per_run"] = round(float(np.mean(secs)), 1)
            if name == "original":
                base_acc = rec["acc_mean"]
            rec["retention"] = rec["acc_mean"] / base_acc
            rows.append(rec)
            st = rec["storage"]
            print(f"  {variant_label(rec)}: acc {fmt_pm(accs)}%, retention {100 * rec['retention']:.1f}%, "
                  f"{st['bits_per_label']:.2f} bits/label ({st['ratio_vs_fp16']:.1f}x < FP16), "
                  f"{rec['train_s_per_run']}s/run, encode {t_enc:.1f}s, decode {t_dec:.1f}s",
                  file=sys.stderr, flush=True)

    table = markdown(rows, T)
    total = time.perf_counter() - t_start
    print(table)
    for n in notes:
        print(f"\nnote: {n}")
    runs = ", ".join(f"{e} epochs (IPC {i})" for i, e in ipc_epochs.items())
    print(f"\n({args.seeds} seeds x {runs}, T={T:g}, student conv16-conv32-fc64; bits/label = "
          f".vqsl file bytes * 8 / labels, all bits counted; total {total:.0f}s)")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    import importlib.metadata as md
    out_json.write_text(json.dumps({
        "command": "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
        "config": {"ipc": args.ipc, "seeds": args.seeds, "epochs": ipc_epochs, "temperature": T,
                   "threads": args.threads, "quick": args.quick, "student": "conv16-pool-conv32-pool-fc64-fc10",
                   "optimizer": "Adam lr 1e-3, cosine to 0, batch 100"},
        "rows": rows, "notes": notes, "total_s": round(total, 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "slcodec": md.version("slcodec"), "codecs": available},
    }, indent=1) + "\n")
    print(f"wrote {out_json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
