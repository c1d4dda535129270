"""vq's index streams under zstd (today's layout) and under the rans coding of format 1.6, measured on
the same streams of one fitted codec (issue 16, conditional entropy coding).

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/entropy_streams.py benchmarks/.cache/corpus_small.npy \\
        --steps 300 --out benchmarks/results/entropy_streams_small

1. ``slcodec.encode`` writes the labels ``[images, views, C]`` with ``--codec vq`` (options below; every
   stream coded "auto", as the default writer does): the ``auto`` file.
2. Its ``codes`` and ``top1`` streams are read back and coded again, each on its own, in four layouts:
   ``zstd`` (today: 4096-row chunks, transpose/byteshuffle, level 19), ``zstd-img`` (zstd in chunks of
   whole images, as the rans writer chunks), ``rans-global`` (one static table per column, 4096-row
   chunks, no groups) and ``rans-image`` (per-image adaptive counts, chunks of whole images; the
   increment the writer chooses).  Bytes are the whole section: table, chunks and chunk index.
   Encode time: building the section (median of ``--repeat``); decode time: every chunk of a freshly
   opened container (median of ``--repeat``).
3. A copy of the file with every label stream zstd-coded (today's bytes) is written, and both files
   decode their first ``--decode-rows`` labels (``Reader.decode``, median of ``--repeat``); the labels
   must be identical.

With ``--file`` (an existing vq file of the labels, image-major, e.g. a flat ``[N, C]`` file of them)
step 1 is skipped: its streams are measured, and the ``auto`` file is that file recoded as today's
writer codes a ``[images, views, C]`` set (every stream "auto", the views of an image as groups):

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/entropy_streams.py benchmarks/.cache/corpus_full.npy \
        --file VQ_FILE --out benchmarks/results/entropy_streams_full
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import slcodec  # noqa: E402
from slcodec.format import entropy  # noqa: E402
from slcodec.format.container import Container, ContainerWriter, StreamBuilder  # noqa: E402
from slcodec.format.shards import _copy_section  # noqa: E402

HEADER = {"labels": {"count": 1, "shape": [1, 2], "classes": 2, "source_kind": "logits"},
          "codec": {"id": "fp32", "config": {}}}


def layouts(views: int):
    image_chunk = max(1, 4096 // views) * views
    return {
        "zstd": dict(coding="zstd", chunk_rows=4096),
        "zstd-img": dict(coding="zstd", chunk_rows=image_chunk),
        "rans-global": dict(coding="rans", chunk_rows=4096),
        "rans-image": dict(coding="rans", chunk_rows=image_chunk, group_rows=views),
    }


def build(rows: np.ndarray, dtype: str, opts: dict) -> StreamBuilder:
    b = StreamBuilder(dtype, rows.shape[1], **opts)
    for lo in range(0, len(rows), 8192):
        b.append(rows[lo:lo + 8192])
    return b


def measure_stream(rows, dtype, opts, folder, repeat):
    enc, enc_cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        b = build(rows, dtype, opts)
        meta, payload = b.finish()
        enc.append(time.perf_counter() - t0)
        enc_cpu.append(time.process_time() - c0)
    path = os.path.join(folder, "s.vqsl")
    with ContainerWriter(path, verify=False) as w:
        w._add_parts("streams/s", "stream", [payload], meta)
        w.commit(HEADER)
    dec, dec_cpu = [], []
    for _ in range(repeat):
        with Container.open(path) as c:
            s = c.stream("streams/s")
            t0, c0 = time.perf_counter(), time.process_time()
            got = s.read_rows(0, s.rows)
            dec.append(time.perf_counter() - t0)
            dec_cpu.append(time.process_time() - c0)
    assert np.array_equal(got, rows), "decoded stream differs"
    return {"bytes": len(payload), "bits_per_label": 8 * len(payload) / len(rows),
            "encode_s": statistics.median(enc), "decode_s": statistics.median(dec),
            "encode_cpu_s": statistics.median(enc_cpu), "decode_cpu_s": statistics.median(dec_cpu),
            "decode_labels_per_s": len(rows) / statistics.median(dec),
            "decode_labels_per_cpu_s": len(rows) / statistics.median(dec_cpu),
            "increment": meta.get("rans", {}).get("increment"), "chunk_rows": meta["chunk_rows"]}


def recode(src: str, out: str, opts: dict) -> None:
    """``src`` with every label stream coded with builder options ``opts`` (all else copied)."""
    folder = os.path.dirname(os.path.abspath(out))
    builders = []
    with Container.open(src) as c, ContainerWriter(out) as cw:
        for sec in c.header["sections"]:
            if sec["kind"] == "stream" and sec["name"].startswith("streams/"):
                r = c.stream(sec["name"])
                b = build(r.read_rows(0, r.rows), sec["dtype"], opts)
                builders.append(b)
                cw.add_stream(sec["name"], b)
            else:
                _copy_section(cw, c, sec, folder, builders)
        header = {k: v for k, v in c.header.items() if k != "sections"}
        minor = c.preamble.minor if c.preamble.minor != entropy_minor() else 0
        cw.commit(header, minor=minor)
    for b in builders:
        b.close()


def entropy_minor():
    from slcodec.format.container import FORMAT_MINOR_RANS
    return FORMAT_MINOR_RANS


def decode_time(path, repeat, rows):
    """Median wall and CPU seconds (this process, every thread) of decoding the first ``rows`` labels."""
    times, cpu, out = [], [], None
    for _ in range(repeat):
        with slcodec.open(path) as r:
            t0, c0 = time.perf_counter(), time.process_time()
            out = r.decode(np.arange(rows), as_="logits")
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpu), out


def parse_opt(text):
    k, _, v = text.partition("=")
    for conv in (int, float):
        try:
            return k, conv(v)
        except ValueError:
            pass
    return k, v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("labels", help=".npy [images, views, C] logits")
    ap.add_argument("--steps", type=int, default=300, help="vq fit steps (default 300; vq's own default is 3000)")
    ap.add_argument("--fit-sample", type=int, default=None)
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="another vq option (default: image_bias=off param_dtype=float16)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--file", default=None, help="an existing vq file of these labels, in image-major order "
                    "(skip the fit; its streams are recoded as the writer would now)")
    ap.add_argument("--decode-rows", type=int, default=60000, help="labels of the timed whole-file decodes")
    ap.add_argument("--out", required=True, help="output prefix (.json, .md)")
    args = ap.parse_args(argv)

    x = np.load(args.labels, mmap_mode="r")
    if x.ndim != 3:
        raise SystemExit(f"{args.labels}: expected [images, views, C], got {list(x.shape)}")
    images, views, C = x.shape
    n = images * views
    opts = {"image_bias": "off", "param_dtype": "float16"}
    opts.update(dict(parse_opt(o) for o in args.opt))
    work = tempfile.mkdtemp(prefix="entropy_streams_", dir=os.path.dirname(os.path.abspath(args.out)))
    auto = args.file or os.path.join(work, "auto.vqsl")
    res = {"labels": args.labels, "shape": list(x.shape), "steps": args.steps, "vq_options": opts,
           "python": platform.python_version(), "machine": platform.machine(),
           "threads": os.environ.get("OMP_NUM_THREADS"),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=HERE).stdout.strip()}
    if args.file is None:
        t0 = time.perf_counter()
        kw = {"fit_sample": args.fit_sample} if args.fit_sample else {}
        slcodec.encode(np.asarray(x), auto, codec="vq", seed=0, steps=args.steps, **kw, **opts)
        res["encode_file_s"] = time.perf_counter() - t0
    with Container.open(auto) as c:
        res["codec_config"] = c.header["codec"]["config"]
        res["auto_streams"] = {s["name"]: {"coding": s["coding"], "bytes": s["length"], "rans": s.get("rans")}
                               for s in c.header["sections"] if s["kind"] == "stream"}
        streams = {s["name"][len("streams/"):]: (c.stream(s["name"]).read_rows(0, n), s["dtype"])
                   for s in c.header["sections"] if s["kind"] == "stream" and s["name"].startswith("streams/")}
    res["streams"] = {}
    for name, (rows, dtype) in sorted(streams.items()):
        res["streams"][name] = {lay: measure_stream(rows, dtype, o, work, args.repeat)
                                for lay, o in layouts(views).items()}
        print(name, {k: round(v["bits_per_label"], 3) for k, v in res["streams"][name].items()}, flush=True)
    zfile = os.path.join(work, "zstd.vqsl")
    recode(auto, zfile, dict(coding="zstd", chunk_rows=4096))
    if args.file:   # the file as today's writer writes it: every stream "auto", the views of an image as groups
        auto = os.path.join(work, "auto.vqsl")
        recode(args.file, auto, dict(coding="auto", chunk_rows=layouts(views)["rans-image"]["chunk_rows"],
                                     group_rows=views))
        with Container.open(auto) as c:
            res["auto_streams"] = {s["name"]: {"coding": s["coding"], "bytes": s["length"], "rans": s.get("rans")}
                                   for s in c.header["sections"] if s["kind"] == "stream"}
    res["file_bits_per_label"] = {"auto": 8 * os.path.getsize(auto) / n, "zstd": 8 * os.path.getsize(zfile) / n}
    rows = min(n, args.decode_rows)
    res["decode_rows"] = rows
    t_auto, c_auto, a = decode_time(auto, args.repeat, rows)
    t_zstd, c_zstd, z = decode_time(zfile, args.repeat, rows)
    res["file_decode_cpu_s"] = {"auto": c_auto, "zstd": c_zstd}
    res["file_decode_labels_per_cpu_s"] = {"auto": rows / c_auto, "zstd": rows / c_zstd}
    assert np.array_equal(a.numpy(), z.numpy()), "the two files decode differently"
    res["file_decode_s"] = {"auto": t_auto, "zstd": t_zstd}
    res["file_decode_labels_per_s"] = {"auto": rows / t_auto, "zstd": rows / t_zstd}
    for name in ("auto", "zstd"):
        with Container.open(auto if name == "auto" else zfile) as c:
            res.setdefault("file_marginal_bits_per_label", {})[name] = 8 * sum(
                s["length"] for s in c.header["sections"] if s["name"].startswith("streams/")) / n
    with open(args.out + ".json", "w") as f:
        json.dump(res, f, indent=2, sort_keys=True)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(res))
    print(markdown(res))
    for p in (zfile, auto, os.path.join(work, "s.vqsl")):
        os.remove(p)
    if not os.listdir(work):
        os.rmdir(work)
    return 0


def markdown(res) -> str:
    lines = ["| stream | layout | bits/label | vs zstd | encode CPU s | decode CPU s | decode labels/CPU s | increment |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, lays in res["streams"].items():
        base = lays["zstd"]["bits_per_label"]
        for lay, m in lays.items():
            lines.append(f"| {name} | {lay} | {m['bits_per_label']:.2f} | {m['bits_per_label'] / base:.3f} | "
                         f"{m['encode_cpu_s']:.2f} | {m['decode_cpu_s']:.3f} | {m['decode_labels_per_cpu_s']:,.0f} | "
                         f"{'' if m['increment'] is None else m['increment']} |")
    tot = {lay: sum(res["streams"][s][lay]["bits_per_label"] for s in res["streams"]) for lay in
           next(iter(res["streams"].values()))}
    lines.append("| all streams | " + " / ".join(f"{k} {v:.2f}" for k, v in tot.items()) + " | | | | | | |")
    fb, dl = res["file_bits_per_label"], res["file_decode_labels_per_cpu_s"]
    written = ", ".join(f"{k[8:]} {v['coding']}" for k, v in res["auto_streams"].items())
    lines.append("")
    lines.append(f"Whole file, every byte counted: {fb['zstd']:.2f} bits/label with zstd streams, {fb['auto']:.2f} "
                 f"as written (streams: {written}); "
                 f"marginal {res['file_marginal_bits_per_label']['zstd']:.2f} -> "
                 f"{res['file_marginal_bits_per_label']['auto']:.2f}. Decode of the first {res['decode_rows']:,} labels "
                 f"(vq decoder included): "
                 f"{dl['zstd']:,.0f} labels per CPU second (zstd) vs {dl['auto']:,.0f} (as written); wall "
                 f"{res['file_decode_s']['zstd']:.1f} s vs {res['file_decode_s']['auto']:.1f} s on a shared machine.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
