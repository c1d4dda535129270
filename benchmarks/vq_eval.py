"""Fit the ``vq`` codec on a label file and report bits, fidelity and speed.

Usage::

    python benchmarks/vq_eval.py benchmarks/.cache/lite0_40x300.npy \
        --heldout benchmarks/.cache/lite0_40x50_heldout.npy [--json out.json] [--opt bits=40 ...]

Label files are ``.npy`` arrays of teacher logits, ``[images, views, C]`` or ``[n, C]`` (any float
dtype), flattened image-major (row = image * views + view).  Bits are measured exactly as the
container stores streams: row chunks of ``--chunk-rows`` (4096), each chunk transposed
(column-major) when its width is > 1, byte-shuffled when its itemsize is > 1, zstd level 19;
the 16-byte per-chunk index entry of the container is counted separately.
Speeds are medians of ``--repeats`` runs over the whole file (encode = assignment after fitting,
decode = streams -> float32 logits [n, C]).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import zstandard

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from slcodec.codecs.base import Context  # noqa: E402
from slcodec.codecs.vq import VQCodec  # noqa: E402

CHUNK_INDEX_BYTES = 16


def load_labels(path):
    a = np.load(path)
    if a.ndim == 3:
        a = a.reshape(-1, a.shape[-1])
    if a.ndim != 2:
        raise SystemExit(f"{path}: expected [images, views, C] or [n, C], got {a.shape}")
    return torch.from_numpy(a.astype(np.float32))


def stream_bytes(arr: np.ndarray, chunk_rows=4096, level=19):
    """zstd-coded bytes of a [n, width] stream, chunked like the container (payload only)."""
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    total, nchunks = 0, 0
    for i in range(0, arr.shape[0], chunk_rows):
        block = arr[i:i + chunk_rows]
        if block.shape[1] > 1:
            block = np.ascontiguousarray(block.T)
        data = np.ascontiguousarray(block).view(np.uint8).reshape(-1)
        if arr.dtype.itemsize > 1:
            data = np.ascontiguousarray(data.reshape(-1, arr.dtype.itemsize).T).reshape(-1)
        total += len(cctx.compress(data.tobytes()))
        nchunks += 1
    return total, nchunks


def fidelity(x, z, temps=(1.0, 4.0), batch=4096):
    """x: teacher logits, z: decoded logits (torch [n, C]) -> dict of mean KL per T, top-1, top-5 overlap."""
    n = x.shape[0]
    kl = {T: 0.0 for T in temps}
    top1 = top5 = 0.0
    for i in range(0, n, batch):
        xb, zb = x[i:i + batch].double(), z[i:i + batch].double()
        for T in temps:
            lp = torch.log_softmax(xb / T, 1)
            lq = torch.log_softmax(zb / T, 1)
            kl[T] += float((lp.exp() * (lp - lq)).sum(1).sum())
        top1 += float((xb.argmax(1) == zb.argmax(1)).sum())
        a, b = xb.topk(5, 1).indices, zb.topk(5, 1).indices
        top5 += float((a.unsqueeze(2) == b.unsqueeze(1)).any(2).sum()) / 5
    out = {f"kl_T{T:g}": kl[T] / n for T in temps}
    out.update(top1=top1 / n, top5_overlap=top5 / n)
    return out


def timed(fn, repeats):
    ts, res = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        res = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), ts, res


def parse_opt(s):
    key, _, val = s.partition("=")
    opts = {o.name: o for o in VQCodec.options}
    if key not in opts:
        raise SystemExit(f"unknown vq option {key!r}; known: {', '.join(opts)}")
    o = opts[key]
    if o.nargs:
        return key, [o.type(v) for v in val.split(",")]
    return key, o.type(val)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels")
    ap.add_argument("--heldout")
    ap.add_argument("--opt", action="append", default=[], help="codec option key=value (lists comma-separated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk-rows", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    x = load_labels(args.labels)
    n, C = x.shape
    config = dict(parse_opt(s) for s in args.opt)
    codec = VQCodec(**config)
    ctx = Context(source_kind="logits", classes=C, device=args.device, seed=args.seed,
                  log=lambda m: print(m, file=sys.stderr))
    t = time.perf_counter()
    codec.fit(x, ctx)
    fit_s = time.perf_counter() - t

    xd = x.to(args.device)
    enc_s, enc_all, streams = timed(lambda: codec.encode(xd, ctx), args.repeats)
    tstreams = {k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.uint16 else v).to(args.device)
                for k, v in streams.items()}
    dec_s, dec_all, z = timed(lambda: codec.decode(tstreams, ctx), args.repeats)

    bits = {}
    total_payload = total_index = 0
    for name, arr in streams.items():
        b, nch = stream_bytes(arr, args.chunk_rows)
        bits[name] = 8 * b / n
        total_payload += b
        total_index += nch * CHUNK_INDEX_BYTES
    params = codec.get_params()
    fixed_bytes = int(sum(a.nbytes for a in params.values()))

    report = {
        "file": args.labels, "labels": n, "classes": C, "config": codec.get_config(),
        "M": codec.M, "K": codec.K, "nominal_bits": codec.nominal_bits,
        "raw_index_bits": codec.M * math.log2(codec.K),
        "stream_bits_per_label": bits,
        "total_stream_bits_per_label": 8 * total_payload / n,
        "chunk_index_bits_per_label": 8 * total_index / n,
        "fixed_bytes": fixed_bytes,
        "fixed_bits_per_label": 8 * fixed_bytes / n,
        "param_shapes": {k: [list(v.shape), str(v.dtype)] for k, v in params.items()},
        "fit_seconds": fit_s,
        "encode_labels_per_s": n / enc_s, "encode_runs_s": enc_all,
        "decode_labels_per_s": n / dec_s, "decode_runs_s": dec_all,
        "threads": torch.get_num_threads(),
        "fit": fidelity(x, z.cpu(), codec.config["temperature"] if 4.0 in codec.config["temperature"]
                        else tuple(codec.config["temperature"]) + (1.0, 4.0)),
        "fit_info": {k: v for k, v in codec.fit_info.items() if k != "loss_history"},
    }
    if args.heldout:
        h = load_labels(args.heldout)
        hs = codec.encode(h.to(args.device), ctx)
        hz = codec.decode({k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.uint16 else v)
                           .to(args.device) for k, v in hs.items()}, ctx)
        hb = {name: 8 * stream_bytes(arr, args.chunk_rows)[0] / h.shape[0] for name, arr in hs.items()}
        report["heldout"] = {"file": args.heldout, "labels": int(h.shape[0]),
                             "stream_bits_per_label": hb, "total_stream_bits_per_label": sum(hb.values()),
                             **fidelity(h, hz.cpu(), (1.0, 4.0))}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
