"""What `slcodec verify` costs on a file whose chunks inflate hugely (issue 12, point 8).

    nice -n 19 python benchmarks/verify_cost.py [--chunks 64] [--repeats 1]

Writes a valid fp16 file whose `streams/values` is CHUNKS chunks of 64 MiB of zeros (the
largest chunk a reader accepts; ~2 KB each stored, so 64 chunks are a ~134 KB file declaring
4 GiB), then runs `slcodec verify --structure-only` (container checks: CRCs, every chunk
inflated and checked) and `slcodec verify` (plus the codec's checks of every stored value)
in child processes, and prints wall time, ns per declared decoded byte and peak resident memory.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import zstandard

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from craft import add_raw_stream  # noqa: E402

from slcodec.format.container import MAX_CHUNK_BYTES, ContainerWriter  # noqa: E402


def inflating_file(path, chunks, width=1024):
    rows_per_chunk = MAX_CHUNK_BYTES // (2 * width)
    frame = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(b"\0" * MAX_CHUNK_BYTES)
    n = rows_per_chunk * chunks
    with ContainerWriter(path, verify=False) as w:
        add_raw_stream(w, "streams/values", [frame] * chunks, "float16", width, rows_per_chunk)
        w.commit({"labels": {"count": n, "shape": [n, width], "classes": width, "source_kind": "logits"},
                  "codec": {"id": "fp16", "config": {}}})
    return n * width * 2


def run(args):
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "slcodec", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read().decode().strip()
    return wall, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "inflating.vqsl")
        decoded = inflating_file(path, a.chunks)
        print(f"file: {os.path.getsize(path):,} bytes declaring {decoded:,} decoded bytes ({a.chunks} chunks)")
        print("| command | exit | wall s (median) | ns per decoded byte | peak RSS MB |")
        print("| --- | --- | --- | --- | --- |")
        for label, args in (("verify --structure-only", ["verify", "--structure-only", path]),
                            ("verify", ["verify", path])):
            runs = [run(args) for _ in range(a.repeats)]
            walls = sorted(r[0] for r in runs)
            wall = walls[len(walls) // 2]
            rss = max(r[1] for r in runs)
            print(f"| `{label}` | {runs[0][2]} | {wall:.1f} | {wall * 1e9 / decoded:.1f} | {rss / 1e6:.0f} |")


if __name__ == "__main__":
    main()
