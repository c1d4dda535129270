#!/usr/bin/env python3
"""vq's fitting option ``rank_weight`` on real ImageNet labels: how many rows still need the
top-1 fix-up, the label-stream bits and the KL, for each weight.

    python benchmarks/vq_rank_weight.py [--labels benchmarks/.cache/lite0_40x300.npy]
        [--weights 0 0.3] [--vq-opt KEY=VALUE ...]

Each weight fits the codec on the whole set with ``slcodec.encode`` (seed 0) and decodes the
file back; "fix rows" are the labels whose ``top1`` symbol is not 0 (the decoder's own argmax
is not the teacher's class, so decoding must find and lift it).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import slcodec  # noqa: E402
from slcodec.codecs import get_codec_class  # noqa: E402
from slcodec.format.container import Container  # noqa: E402
from slcodec.format.stats import file_stats  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", default=os.path.join(os.path.dirname(__file__), ".cache", "lite0_40x300.npy"))
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3])
    ap.add_argument("--vq-opt", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    known = {o.name: o for o in get_codec_class("vq").options}
    opts = {}
    for item in args.vq_opt:
        k, _, v = item.partition("=")
        opts[k] = [known[k].type(x) for x in v.split(",")] if known[k].nargs else known[k].type(v)
    labels = np.load(args.labels)
    x = torch.from_numpy(labels.reshape(-1, labels.shape[-1]).astype(np.float32))
    lp1, lp4 = torch.log_softmax(x, 1), torch.log_softmax(x / 4, 1)
    print(f"{os.path.basename(args.labels)}: {x.shape[0]:,} labels; vq options {opts or 'default'}")
    print("| rank_weight | fix rows | label-stream bits | KL@T1 | KL@T4 | fit s |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.weights:
            path = os.path.join(tmp, f"w{w}.vqsl")
            t0 = time.perf_counter()
            slcodec.encode(labels, path, codec="vq", rank_weight=w, **opts)
            secs = time.perf_counter() - t0
            with slcodec.open(path) as r:
                v = r.streams["top1"].read_rows(0, len(r)).ravel()
                q1 = r.decode(None, as_="log_probs").reshape(x.shape)
                q4 = r.decode(None, as_="log_probs", temperature=4).reshape(x.shape)
            with Container.open(path) as c:
                st = file_stats(c)
            kl1 = float((lp1.exp() * (lp1 - q1)).sum(1).mean())
            kl4 = float((lp4.exp() * (lp4 - q4)).sum(1).mean())
            print(f"| {w:g} | {100 * float((v != 0).mean()):.1f}% | {st['marginal_bits_per_label']:.2f} | "
                  f"{kl1:.4f} | {kl4:.5f} | {secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
