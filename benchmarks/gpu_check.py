#!/usr/bin/env python3
"""The GPU check of issue 14: one prepared run, under 8 minutes on one GPU.

    python benchmarks/gpu_check.py                       # on a machine with CUDA
    python benchmarks/gpu_check.py --device cpu --vq-steps 30 --max-labels 4096 --skip-tests --json /tmp/g.json
                                                         # dry run of the same code on the CPU (not GPU figures)

Steps, in this order, each timed; a step that would start after ``--budget-s`` seconds is skipped
and recorded as skipped (so the whole run stays inside the device lease):

1. **CUDA-only tests**: ``pytest -q -rs -k cuda tests/`` (the tests whose names say cuda; they
   skip themselves without CUDA). Their pass / skip / fail counts are recorded; a skip on a CUDA
   machine counts as a failure of the check.
2. **Labels**: the first of ``--source`` (a ``[images, views, C]`` or ``[N, C]`` logits ``.npy``),
   ``benchmarks/.cache/corpus_small.npy`` (200 images x 300 views of the 1,000-class corpus), the
   committed corpus images ``benchmarks/data/corpus/recovered_images.npz`` labelled here on the
   device by the EfficientNet-Lite0 teacher in torch (first ``--relabel-images`` images x 300 seeded
   views, the corpus's own crop policy; needs the benchmark teacher packages, see
   ``benchmarks/data/imagenet_corpus.py``), or the committed 512-label fixture
   ``slcodec/data/lite0_8x64_fp16.npy``. Nothing is downloaded. ``.cache/`` does not travel to a
   remote device machine (and corpus_small.npy is 120 MB): there the committed images are labelled.
3. **Per configuration** (``vq`` default, ``vq-h32`` = hidden 32, no residual layer, 8 bits - the
   fastest decoder, a table -, ``vq-h64``, ``topk``, ``imgprior``, ``fp16``): fit on the device on the
   codec's default fit sample (seconds, synchronised), assignment labels/s (``codec.encode`` of a
   block of up to 65,536 rows already on the device, median of 3), a ``.vqsl`` of every label
   written by ``slcodec.Writer`` with that codec, its bits per label all counted and its KL at T = 1
   and 4 against the source.
4. **Decode** labels/s at batch 1,024 / 16,384 / 65,536 of the same random indices (a shuffled
   training loop), medians of ``--repeats`` samples of >= 65,536 labels, taking turns, synchronised:
   ``raw_host`` = gather the rows from a memory-mapped FP16 ``.npy``, copy to the device, float32,
   softmax in place; ``raw_resident`` = the FP16 labels already in device memory, gather + float32 +
   softmax; each codec = ``reader.decode(idx, device=...)`` (probabilities, float32, on the device).

Output: JSON to ``--json`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is set, else
``benchmarks/results/gpu_check.json``), replaced only by a complete file; the tables on stdout.

Exit status: 0 the check ran (every step that ran passed); 1 a step failed (tests, an encode or
decode error); 3 **no CUDA device** (nothing measured, no JSON written; the message says so).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXIT_NO_CUDA = 3
CORPUS_SMALL = HERE / ".cache" / "corpus_small.npy"
CORPUS_IMAGES = HERE / "data" / "corpus" / "recovered_images.npz"
FIXTURE = ROOT / "slcodec" / "data" / "lite0_8x64_fp16.npy"
BATCHES = (1024, 16384, 65536)
#: (name, codec id, options): the default, the fastest decoders (vq-h32 is a table; topk and fp16
#: have no network) and the per-image codec
CONFIGS = (("vq", "vq", {}),
           ("vq-h32", "vq", {"hidden": 32, "decoder_layers": 0, "bits": 8}),
           ("topk", "topk", {}),
           ("fp16", "fp16", {}),
           ("vq-h64", "vq", {"hidden": 64, "decoder_layers": 0, "bits": 16}),
           ("imgprior", "imgprior", {}))


def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run_tests(timeout: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda", "tests/"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(cmd[1:]), "ok": False, "error": f"timed out after {timeout} s"}
    tail = (p.stdout + p.stderr).strip().splitlines()[-15:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|skipped|failed|error|errors|deselected)",
                                                "\n".join(tail))}
    ok = p.returncode == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped") \
        and not counts.get("failed")
    return {"command": "python " + " ".join(cmd[1:]), "returncode": p.returncode, "counts": counts, "ok": ok,
            "seconds": round(time.perf_counter() - t0, 1), "tail": tail}


def relabel_committed_images(n_images: int, views: int, device: str) -> np.ndarray:
    """Logits [n_images, views, 1000] (FP16) of the committed corpus images, labelled on ``device`` by
    the torch teacher with the corpus's seeded views (image id = its class, seed 0, 96 px)."""
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, str(HERE / "data"))
    from imagenet_teacher import load_torch_teacher

    from slcodec.augment import Policy, crop_params

    z = np.load(CORPUS_IMAGES, allow_pickle=False)
    images, classes = z["images"][:n_images], z["classes"][:n_images].astype(np.int64)
    size = 96
    model = load_torch_teacher(max(1, os.cpu_count() or 1)).to(device)
    chw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device).float()
    n, R = len(images), images.shape[1]
    ii = np.repeat(np.arange(n), views)
    cp = crop_params(0, np.repeat(classes, views), np.tile(np.arange(views), n),
                     Policy(size=size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5), R, R)
    out = np.empty((len(ii), 1000), np.float16)
    with torch.inference_mode():
        for b0 in range(0, len(ii), 500):
            xs = []
            for j in range(b0, min(len(ii), b0 + 500)):
                t, l, h, w = (int(cp[k][j]) for k in ("top", "left", "height", "width"))
                crop = chw[ii[j], :, t:t + h, l:l + w]
                if cp["flip"][j]:
                    crop = crop.flip(-1)
                xs.append(F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=bool(h > size or w > size))[0])
            logits = model((torch.stack(xs) - 127.0) / 128.0)
            out[b0:b0 + len(xs)] = logits.float().cpu().numpy().astype(np.float16)
    return out.reshape(n, views, 1000)


def load_source(args, device: str) -> tuple[np.ndarray, dict]:
    if args.source is not None:
        x = np.load(args.source, mmap_mode="r", allow_pickle=False)
        info = {"source": str(args.source)}
    elif CORPUS_SMALL.exists() and not args.relabel:
        x = np.load(CORPUS_SMALL, mmap_mode="r", allow_pickle=False)
        info = {"source": str(CORPUS_SMALL.relative_to(ROOT))}
    else:
        try:
            t0 = time.perf_counter()
            x = relabel_committed_images(args.relabel_images, 300, device)
            info = {"source": f"{CORPUS_IMAGES.relative_to(ROOT)}: first {args.relabel_images} images x 300 views "
                              f"labelled on {device} by the torch teacher",
                    "labelling_s": round(time.perf_counter() - t0, 1)}
        except Exception as exc:   # the teacher packages are benchmark-only: fall back to the fixture
            x = np.load(FIXTURE, allow_pickle=False)
            info = {"source": str(FIXTURE.relative_to(ROOT)), "relabel_error": f"{type(exc).__name__}: {exc}"}
    if x.ndim not in (2, 3) or x.dtype.kind != "f":
        raise SystemExit(f"{info['source']}: expected float logits [images, views, C] or [N, C], "
                         f"got {x.dtype} {x.shape}")
    if args.max_labels and x.ndim == 3 and x.shape[0] * x.shape[1] > args.max_labels:
        x = x[:max(1, args.max_labels // x.shape[1])]             # whole images
    elif args.max_labels and x.ndim == 2:
        x = x[:args.max_labels]
    flat = np.ascontiguousarray(np.asarray(x, dtype=np.float16).reshape(-1, x.shape[-1]))
    info.update({"labels": int(flat.shape[0]), "classes": int(flat.shape[1]), "shape": list(x.shape)})
    return flat, info


def kl_at(ref: np.ndarray, path: str, device: str, temps=(1, 4)) -> dict:
    """Mean KL(p||q) over the file at each temperature, computed on ``device`` in float64 blocks."""
    import torch

    import slcodec
    out = {t: 0.0 for t in temps}
    top1 = 0
    with slcodec.open(path) as r:
        for s in range(0, len(ref), 16384):
            p = torch.from_numpy(np.asarray(ref[s:s + 16384], np.float32)).to(device).double()
            q = r.decode(np.arange(s, s + len(p)), as_="logits", device=device).double()
            for t in temps:
                lp, lq = torch.log_softmax(p / t, 1), torch.log_softmax(q / t, 1)
                out[t] += float((lp.exp() * (lp - lq)).sum())
            top1 += int((p.argmax(1) == q.argmax(1)).sum())
    n = len(ref)
    return {**{f"kl_T{t}": out[t] / n for t in temps}, "top1": top1 / n}


def fit_and_write(name: str, codec_id: str, opts: dict, flat: np.ndarray, shape, device: str, tmp: str,
                  vq_steps: int | None) -> tuple[dict, str]:
    import torch

    import slcodec
    from slcodec.codecs import Context, get_codec_class
    from slcodec.pipeline.rows import RowReader, fit_rows
    from slcodec.pipeline.statistics import compute_fit_statistics

    opts = dict(opts)
    if codec_id == "vq" and vq_steps:
        opts["steps"] = vq_steps
    codec = get_codec_class(codec_id)(**opts)
    n, C = flat.shape
    ctx = Context(source_kind="logits", classes=C, device=device, seed=0)
    rec = {"codec": codec_id, "options": opts}
    fit_n = int(codec.config.get("fit_sample", 100_000)) if hasattr(codec, "config") else 100_000
    idx = fit_rows(n, min(fit_n, n))
    sample = torch.from_numpy(flat[idx].astype(np.float32))
    if len(shape) == 2:      # [images, views]: the per-image statistics a codec asks for, as encode does
        ctx.label_shape, ctx.rows = tuple(shape), np.asarray(idx, dtype=np.int64)
        for stat, value in compute_fit_statistics(codec.fit_statistics(tuple(shape), C), RowReader(flat),
                                                  tuple(shape), "logits", 16384, 0, n).items():
            codec.set_fit_statistic(stat, value)
    fit_s = _timed(lambda: codec.fit(sample, ctx), device)
    rec.update({"fit_s": round(fit_s, 2), "fit_labels": int(len(idx))})
    block = torch.from_numpy(flat[:65536].astype(np.float32)).to(device)
    ctx.rows = np.arange(len(block), dtype=np.int64)
    times = [_timed(lambda: codec.encode(block, ctx), device) for _ in range(3)]
    rec["assign_labels_per_s"] = round(len(block) / statistics.median(times))
    rec["assign_block"] = int(len(block))
    path = os.path.join(tmp, f"{name}.vqsl")
    w = slcodec.Writer(path, codec=codec_id, classes=C, shape=list(shape), seed=0, device=device, **opts)
    w.codec = codec
    codec.fit = lambda labels, ctx: None          # keep the parameters fitted above
    t0 = time.perf_counter()
    try:
        w.fit(flat[:1])
        for s in range(0, n, 65536):
            w.append(flat[s:s + 65536])
        w.close()
    finally:
        del codec.fit
    rec["write_s"] = round(time.perf_counter() - t0, 2)
    rec["file_bits_per_label"] = os.path.getsize(path) * 8 / n
    return rec, path


def decode_rates(flat: np.ndarray, paths: dict, device: str, repeats: int, tmp: str) -> dict:
    import torch

    import slcodec
    raw_path = os.path.join(tmp, "raw_fp16.npy")
    np.save(raw_path, flat)
    raw = np.load(raw_path, mmap_mode="r")
    resident = torch.from_numpy(np.array(flat, copy=True)).to(device)
    n = len(flat)

    def raw_host(idx):
        x = torch.from_numpy(np.ascontiguousarray(raw[np.sort(idx)])).to(device).float()
        return torch.softmax(x, dim=1, out=x)

    def raw_resident(idx_t):
        x = resident.index_select(0, idx_t).float()
        return torch.softmax(x, dim=1, out=x)

    readers = {name: slcodec.open(p) for name, p in paths.items()}
    try:
        for r in readers.values():
            r.decode(np.arange(min(16, n)), device=device)     # parameters to the device, tables built
        out = {}
        for size in sorted({min(bs, n) for bs in BATCHES}):
            idx = np.random.default_rng(size).choice(n, size=size, replace=False)
            idx_t = torch.from_numpy(np.sort(idx)).to(device)
            calls = max(1, 65536 // size)
            fns = {"raw_host": lambda: raw_host(idx), "raw_resident": lambda: raw_resident(idx_t)}
            fns.update({name: (lambda r=r: r.decode(idx, device=device)) for name, r in readers.items()})
            for fn in fns.values():
                fn()                                          # warm-up (allocator, kernels)
            times = {name: [] for name in fns}
            for _ in range(repeats):
                for name, fn in fns.items():
                    def many(fn=fn):
                        for _ in range(calls):
                            fn()
                    times[name].append(_timed(many, device))
            row = {name: round(calls * size / statistics.median(ts)) for name, ts in times.items()}
            out[str(size)] = row
    finally:
        for r in readers.values():
            r.close()
    return out


def environment(device: str) -> dict:
    import torch

    import slcodec
    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "slcodec": slcodec.__version__, "numpy": np.__version__, "cpu_count": os.cpu_count(),
           "device": device, "load_1min": round(os.getloadavg()[0], 2)}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}"})
        try:
            env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm",
                                                "--format=csv,noheader"], capture_output=True, text=True,
                                               timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu = a dry run of the script itself")
    ap.add_argument("--source", type=Path, default=None, help="logits .npy to use instead of the corpus")
    ap.add_argument("--relabel-images", type=int, default=200,
                    help="committed corpus images to label on the device when no cached corpus exists")
    ap.add_argument("--relabel", action="store_true",
                    help="label the committed corpus images even when the cached corpus exists")
    ap.add_argument("--max-labels", type=int, default=0, help="use at most this many labels (0: all)")
    ap.add_argument("--configs", nargs="+", default=None, choices=[c[0] for c in CONFIGS])
    ap.add_argument("--vq-steps", type=int, default=None, help="vq fit steps (default: the codec's 3,000)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="no step starts after this many seconds (the whole check must end < 8 min)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
              f"nothing measured, no JSON written (exit {EXIT_NO_CUDA})", file=sys.stderr)
        return EXIT_NO_CUDA
    out_json = args.json or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT")
                             else HERE / "results" / "gpu_check.json")
    t_start = time.perf_counter()
    record = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv or sys.argv[1:])),
              "dry_run_on_cpu": not device.startswith("cuda"), "env": environment(device), "steps": {},
              "skipped": []}
    failed = []

    def left() -> bool:
        return time.perf_counter() - t_start < args.budget_s

    if not args.skip_tests:
        res = run_tests(timeout=240)
        record["steps"]["cuda_tests"] = res
        print(f"cuda tests: {res.get('counts')} ok={res['ok']} ({res.get('seconds')} s)", flush=True)
        if not res["ok"]:
            failed.append("cuda_tests")
    t0 = time.perf_counter()
    flat, src = load_source(args, device)
    src["seconds"] = round(time.perf_counter() - t0, 1)
    record["steps"]["source"] = src
    print(f"labels: {src['labels']:,} x {src['classes']} from {src['source']}", flush=True)
    shape = src["shape"][:2] if len(src["shape"]) == 3 else [src["labels"]]     # the labels' leading shape
    paths, encode = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, codec_id, opts in CONFIGS:
            if args.configs and name not in args.configs:
                continue
            if not left():
                record["skipped"].append(f"{name}: budget of {args.budget_s:.0f} s reached")
                continue
            try:
                rec, path = fit_and_write(name, codec_id, opts, flat, shape, device, tmp, args.vq_steps)
                rec.update(kl_at(flat, path, device))
            except Exception as exc:     # recorded, and the check fails; the other configs still run
                encode[name] = {"error": f"{type(exc).__name__}: {exc}"}
                failed.append(name)
                print(f"{name}: FAILED {exc}", flush=True)
                continue
            encode[name], paths[name] = rec, path
            print(f"{name}: fit {rec['fit_s']} s on {rec['fit_labels']:,}; assignment {rec['assign_labels_per_s']:,} "
                  f"labels/s; {rec['file_bits_per_label']:.1f} bits/label; KL {rec['kl_T1']:.4f} / {rec['kl_T4']:.5f}",
                  flush=True)
        record["steps"]["encode"] = encode
        if paths and left():
            try:
                dec = decode_rates(flat, paths, device, args.repeats, tmp)
            except Exception as exc:     # recorded, and the check fails
                dec = {}
                record["steps"]["decode_error"] = f"{type(exc).__name__}: {exc}"
                failed.append("decode")
                print(f"decode: FAILED {exc}", flush=True)
            record["steps"]["decode_labels_per_s"] = dec
            names = ["raw_host", "raw_resident", *paths]
            print("\n| batch | " + " | ".join(names) + " | " + " | ".join(f"{n} / raw_host" for n in paths) + " |")
            print("|---:|" + "---:|" * (len(names) + len(paths)))
            for bs, row in dec.items():
                print(f"| {int(bs):,} | " + " | ".join(f"{row[n]:,}" for n in names) + " | "
                      + " | ".join(f"{row[n] / row['raw_host']:.2f}" for n in paths) + " |")
        elif paths:
            record["skipped"].append(f"decode: budget of {args.budget_s:.0f} s reached")
    record["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if device.startswith("cuda"):
        record["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    record["seconds"] = round(time.perf_counter() - t_start, 1)
    record["failed"] = failed
    out_json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = out_json.with_name(out_json.name + ".part")
    tmp_json.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp_json, out_json)
    print(f"\n{record['seconds']:.0f} s; results in {out_json}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
