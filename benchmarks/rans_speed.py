"""Speed of the ``rans`` stream coding's chunk coder: slcodec's current ``encode_chunk`` /
``decode_chunk`` / ``choose_increment`` against the former numpy implementation kept in
``tests/entropy_before.py``, on the same chunks in the same run (issue 16: decode no slower than
before the rans coding landed).  Every chunk's bytes and decoded rows must be identical between the
two (the script stops otherwise), so the figures compare two implementations of one format.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/rans_speed.py --file VQ_FILE --views 300 \\
        --rows 60000 --repeat 5 --out benchmarks/results/rans_speed

Streams: with ``--file`` (a vq file of ``[images, views, C]`` labels in image-major order, any
coding) its ``codes`` and ``top1`` streams, first ``--rows`` rows; without it, seeded synthetic
streams shaped like vq's: ``codes`` (width 6, K = 203) and ``top1`` (width 1, S = 1016), each image
drawing from its own Zipf law over a random permutation of the alphabet.  Chunks as the writer
makes them for ``[images, views, C]``: ``views * max(1, 4096 // views)`` rows, groups of ``views``
rows; the increment is the one the writer chooses.  Times: CPU seconds of this process
(``time.process_time``), median of ``--repeat``, old and new alternating.

With ``--file`` and ``--decode-rows N`` (> 0), the whole-file decode too: the file is recoded as
today's writer codes an ``[images, views, C]`` set (every label stream "auto", the views of an
image as groups: rans where smaller) and with every label stream in zstd (4096-row chunks), and
``Reader.decode`` of the first N labels (vq decoder included) is timed on the zstd file, on the
rans file with the former chunk decoder (``entropy.decode_chunk`` replaced by the one of
``tests/entropy_before.py`` for the run) and on the rans file as slcodec decodes it now; the three
must decode the same labels.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from slcodec.format import entropy as new  # noqa: E402
from slcodec.format.container import Container  # noqa: E402
import entropy_before as old  # noqa: E402


def synthetic(images: int, views: int, width: int, S: int, seed: int, zipf: float = 1.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, S + 1) ** zipf
    p /= p.sum()
    out = np.empty((images * views, width), dtype=np.int64)
    for i in range(images):
        for m in range(width):
            perm = rng.permutation(S)
            out[i * views:(i + 1) * views, m] = perm[rng.choice(S, size=views, p=p)]
    return out


def streams_of(args):
    if args.file:
        with Container.open(args.file) as c:
            got = {}
            for name in ("codes", "top1"):
                s = c.stream(f"streams/{name}")
                got[name] = s.read_rows(0, min(args.rows, s.rows)).astype(np.int64)
            return got
    images = args.rows // args.views
    return {"codes": synthetic(images, args.views, 6, 203, 0),
            "top1": synthetic(images, args.views, 1, 1016, 1)}


def cpu(fn):
    c0 = time.process_time()
    out = fn()
    return time.process_time() - c0, out


def measure(rows: np.ndarray, views: int, repeat: int) -> dict:
    n, width = rows.shape
    S = int(rows.max()) + 1
    counts = np.stack([np.bincount(rows[:, m], minlength=S) for m in range(width)])
    table = new.normalise_counts(counts).astype(np.int64)
    chunk_rows = views * max(1, 4096 // views)
    firsts = list(range(0, n, chunk_rows))
    blocks = [rows[f:f + chunk_rows] for f in firsts]
    res = {"rows": n, "width": width, "alphabet": S, "chunk_rows": chunk_rows, "chunks": len(blocks)}
    times = {k: {"old": [], "new": []} for k in ("choose", "encode", "decode")}
    for _ in range(repeat):
        for name, mod in (("old", old), ("new", new)):
            dt, inc = cpu(lambda: mod.choose_increment(blocks, table, firsts, views, 0, chunk_rows))
            times["choose"][name].append(dt)
            res.setdefault("increment", {})[name] = inc
            dt, data = cpu(lambda: [mod.encode_chunk(b, table, f, views, 0, inc) for b, f in zip(blocks, firsts)])
            times["encode"][name].append(dt)
            res.setdefault("bytes", {})[name] = data
            dt, dec = cpu(lambda: [mod.decode_chunk(d, len(b), table, f, views, 0, inc, np.int64, "bench")
                                   for d, b, f in zip(data, blocks, firsts)])
            times["decode"][name].append(dt)
            if not all(np.array_equal(x, b) for x, b in zip(dec, blocks)):
                raise SystemExit(f"{name}: decoded rows differ from the stream")
    if res["increment"]["old"] != res["increment"]["new"] or res["bytes"]["old"] != res["bytes"]["new"]:
        raise SystemExit("old and new code paths choose or write different bytes")
    res["increment"] = res["increment"]["new"]
    res["coded_bits_per_row"] = 8 * sum(len(d) for d in res.pop("bytes")["new"]) / n
    for k, v in times.items():
        o, w = statistics.median(v["old"]), statistics.median(v["new"])
        res[k] = {"old_cpu_s": o, "new_cpu_s": w, "speedup": o / w,
                  "old_rows_per_cpu_s": n / o, "new_rows_per_cpu_s": n / w}
    return res


def file_decode(args, res) -> None:
    import tempfile

    import slcodec
    from entropy_streams import recode
    work = tempfile.mkdtemp(prefix="rans_speed_")
    rfile, zfile = os.path.join(work, "rans.vqsl"), os.path.join(work, "zstd.vqsl")
    recode(args.file, rfile, dict(coding="auto", chunk_rows=args.views * max(1, 4096 // args.views),
                                  group_rows=args.views))
    recode(args.file, zfile, dict(coding="zstd", chunk_rows=4096))
    with Container.open(rfile) as c:
        res["file_streams"] = {s["name"]: s["coding"] for s in c.header["sections"] if s["kind"] == "stream"}
    rows = np.arange(args.decode_rows)
    fast = new.decode_chunk
    cpu_s = {"zstd": [], "rans-before": [], "rans-now": []}
    got = {}
    for path in (zfile, rfile):     # warm-up (imports, torch's first call), not timed
        with slcodec.open(path) as r:
            r.decode(np.arange(10), as_="logits")
    for _ in range(args.repeat):
        for name, path, decoder in (("zstd", zfile, fast), ("rans-before", rfile, old.decode_chunk),
                                    ("rans-now", rfile, fast)):
            new.decode_chunk = decoder     # the container calls entropy.decode_chunk
            try:
                with slcodec.open(path) as r:
                    dt, out = cpu(lambda: r.decode(rows, as_="logits"))
            finally:
                new.decode_chunk = fast
            cpu_s[name].append(dt)
            got[name] = out.numpy()
    if not (np.array_equal(got["zstd"], got["rans-before"]) and np.array_equal(got["zstd"], got["rans-now"])):
        raise SystemExit("the files decode differently")
    res["file_decode"] = {"rows": args.decode_rows, **{
        k: {"cpu_s": statistics.median(v), "labels_per_cpu_s": args.decode_rows / statistics.median(v)}
        for k, v in cpu_s.items()}}
    for p in (rfile, zfile):
        os.remove(p)
    os.rmdir(work)


def markdown(res) -> str:
    lines = ["| stream | rows x width, alphabet | increment | step | before CPU s | after CPU s | before rows/CPU s | "
             "after rows/CPU s | speedup |", "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in res["streams"].items():
        for k in ("decode", "encode", "choose"):
            m = r[k]
            lines.append(f"| {name} | {r['rows']} x {r['width']}, {r['alphabet']} | {r['increment']} | {k} | "
                         f"{m['old_cpu_s']:.3f} | {m['new_cpu_s']:.3f} | {m['old_rows_per_cpu_s']:,.0f} | "
                         f"{m['new_rows_per_cpu_s']:,.0f} | {m['speedup']:.1f}x |")
    if "file_decode" in res:
        d = res["file_decode"]
        lines += ["", f"Reader.decode of the first {d['rows']:,} labels (streams: "
                  + ", ".join(f"{k[8:]} {v}" for k, v in res["file_streams"].items()) + "), labels per CPU second: "
                  + ", ".join(f"{k} {d[k]['labels_per_cpu_s']:,.0f}" for k in ("zstd", "rans-before", "rans-now"))
                  + f"; now / before {d['rans-now']['labels_per_cpu_s'] / d['rans-before']['labels_per_cpu_s']:.2f}x, "
                  f"now / zstd {d['rans-now']['labels_per_cpu_s'] / d['zstd']['labels_per_cpu_s']:.2f}x."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--file", default=None, help="a vq file of [images, views, C] labels (image-major)")
    ap.add_argument("--views", type=int, default=300, help="views per image: the group size (default 300)")
    ap.add_argument("--rows", type=int, default=60000, help="rows of each stream measured (default 60,000)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--decode-rows", type=int, default=0,
                    help="with --file: labels of the timed whole-file decodes (default 0: none)")
    ap.add_argument("--out", default=None, help="output prefix (.json, .md)")
    args = ap.parse_args(argv)
    res = {"file": args.file, "views": args.views, "repeat": args.repeat, "python": platform.python_version(),
           "machine": platform.machine(), "threads": os.environ.get("OMP_NUM_THREADS"),
           "numpy": np.__version__,
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=HERE).stdout.strip(), "streams": {}}
    for name, rows in streams_of(args).items():
        res["streams"][name] = measure(rows, args.views, args.repeat)
        print(name, {k: round(res["streams"][name][k]["speedup"], 2) for k in ("decode", "encode", "choose")},
              flush=True)
    if args.file and args.decode_rows:
        file_decode(args, res)
    print(markdown(res))
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump(res, f, indent=2, sort_keys=True)
        with open(args.out + ".md", "w") as f:
            f.write(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
