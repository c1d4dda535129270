"""Decode and encode throughput of slcodec against reading raw FP16 labels, in the same run.

    python benchmarks/throughput.py [--labels benchmarks/.cache/lite0_40x300.npy] [--tile 11]
                                    [--codecs vq topk fp16] [--repeats 5] [--device cpu]

The real label set is tiled (with a small seeded perturbation, so that no chunk is a copy of
another) to have enough labels for large batches. For each batch size, the same random
indices (a shuffled training loop) are decoded to float32 probabilities by
  * the baseline: FP16 logits in a memory-mapped .npy -> gather -> float32 -> softmax in place (torch);
  * slcodec: reader.decode(indices, as_="probs").
Figures are medians over --repeats samples (each sample: as many calls as make >= 65,536 labels;
the baseline and the codecs take turns); "ratio" is slcodec / baseline labels per second.
Encode: the codec's fit and its assignment pass (codec.encode over all rows) are timed apart.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import slcodec  # noqa: E402
from slcodec.codecs import Context, get_codec_class  # noqa: E402

BATCHES = (256, 1024, 4096, 16384, 65536)
#: named vq configurations (``--codecs vq-h64``): the small decoders of the ImageNet rate-distortion table
#: (vq-h32 = its 36.7x point against FKD top-50)
PRESETS = {"vq-h64": ("vq", {"hidden": 64, "decoder_layers": 0, "bits": 16}),
           "vq-h32": ("vq", {"hidden": 32, "decoder_layers": 0, "bits": 8})}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_rate(fn, n, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", default=os.path.join(HERE, ".cache", "lite0_40x300.npy"))
    ap.add_argument("--tile", type=int, default=11)
    ap.add_argument("--codecs", nargs="+", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write results here too")
    ap.add_argument("--vq-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="vq option for both fits (e.g. steps=200 for a short run); repeatable")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from slcodec.codecs import codec_ids
    vq_opts = {}
    for item in args.vq_opt:
        key, _, val = item.partition("=")
        opt = {o.name: o for o in get_codec_class("vq").options}[key]
        vq_opts[key] = [opt.type(v) for v in val.split(",")] if opt.nargs else opt.type(val)
    codecs = args.codecs or [c for c in ("vq", "topk", "fp16") if c in codec_ids()]

    base = np.load(args.labels).reshape(-1, np.load(args.labels, mmap_mode="r").shape[-1]).astype(np.float32)
    rng = np.random.default_rng(0)
    tiles = [base] + [base + rng.normal(0, 0.05, size=base.shape).astype(np.float32) for _ in range(args.tile - 1)]
    labels = np.concatenate(tiles)
    n, c = labels.shape
    print(f"labels: {n:,} x {c} (real EfficientNet-Lite0 logits from {os.path.basename(args.labels)}, "
          f"tiled {args.tile}x); torch threads {args.threads}; device {args.device}; median of {args.repeats}")
    results = {"vq_options": vq_opts, "labels": n, "classes": c, "threads": args.threads, "device": args.device, "decode": {}, "encode": {}}
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = os.path.join(tmp, "raw_fp16.npy")
        np.save(raw_path, labels.astype(np.float16))
        raw = np.load(raw_path, mmap_mode="r")

        def baseline(idx):
            x = torch.from_numpy(np.ascontiguousarray(raw[np.sort(idx)])).to(args.device).float()
            return torch.softmax(x, dim=1, out=x)   # in place, as slcodec's reader does

        readers = {}
        for codec_id in codecs:
            path = os.path.join(tmp, f"{codec_id}.vqsl")
            real_id, opts = PRESETS.get(codec_id, (codec_id, {}))
            opts = dict(opts, **vq_opts) if real_id == "vq" else opts
            codec = get_codec_class(real_id)(**opts)
            ctx = Context(source_kind="logits", classes=c, device=args.device, seed=0)
            t0 = time.perf_counter()
            codec.fit(torch.from_numpy(base), ctx)
            fit_s = time.perf_counter() - t0
            block = torch.from_numpy(labels[:65536])
            enc_rate = median_rate(lambda: codec.encode(block, ctx), block.shape[0], max(1, args.repeats // 2))
            results["encode"][codec_id] = {"fit_seconds": fit_s, "fit_labels": base.shape[0],
                                           "assign_labels_per_s": enc_rate}
            print(f"encode {codec_id}: fit {fit_s:.1f} s on {base.shape[0]:,} labels; "
                  f"assignment {enc_rate:,.0f} labels/s (batch 65,536)")
            # the file is written by the codec fitted above (a second fit would double the run)
            w = slcodec.Writer(path, codec=real_id, classes=c, seed=0, device=args.device, **opts)
            w.codec = codec
            codec.fit = lambda labels, ctx: None
            w.fit(labels[:1])
            for s in range(0, n, 65536):
                w.append(labels[s:s + 65536])
            w.close()
            del codec.fit
            readers[codec_id] = slcodec.open(path)
            results["encode"][codec_id]["file_bits_per_label"] = os.path.getsize(path) * 8 / n

        print("\n| batch | raw FP16 -> probs (labels/s) | " +
              " | ".join(f"{cid} (labels/s) | {cid} ratio" for cid in codecs) + " |")
        print("|---:|---:|" + "---:|---:|" * len(codecs))
        for r in readers.values():
            r.decode(np.arange(16))  # warm: load parameters to the device (and build decode tables)
        for bs in BATCHES:
            idx = np.random.default_rng(bs).choice(n, size=min(bs, n), replace=False)
            # one sample = enough calls for >= 65,536 labels (a single small call is mostly timer
            # noise); the baseline and every codec take turns, so drift hits them alike
            calls = max(1, 65536 // idx.size)
            fns = {"baseline": lambda: baseline(idx)}
            fns.update({cid: (lambda r=r: r.decode(idx, device=args.device)) for cid, r in readers.items()})
            times = {name: [] for name in fns}
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        fn()
                    times[name].append(time.perf_counter() - t0)
            row = {name: calls * idx.size / statistics.median(ts) for name, ts in times.items()}
            results["decode"][bs] = row
            print(f"| {bs:,} | {row['baseline']:,.0f} | " +
                  " | ".join(f"{row[cid]:,.0f} | {row[cid] / row['baseline']:.2f}" for cid in codecs) + " |")
        for r in readers.values():
            r.close()
    results["peak_rss_mb"] = peak_rss_mb()
    print(f"\npeak RSS {results['peak_rss_mb']:.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
