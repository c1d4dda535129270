"""Kill `slcodec encode` (SIGKILL) at random moments and check that nothing is lost.

    python benchmarks/kill_encode.py --trials 50 [--seed 0]

Each trial starts from a valid previous output, runs an encode of 2,000 x 1000 FP32 labels
(codec fp32, about 3 s here) in a subprocess, kills it after a random delay in [0, 4) s, and
checks: the output is either byte-identical to the previous file or a complete new file that
verifies and decodes to the new labels; every leftover temporary file is rejected by the reader.
"""
import argparse
import glob
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import slcodec  # noqa: E402
from slcodec.format.container import Container  # noqa: E402
from slcodec.errors import FormatError  # noqa: E402

ENCODE = ("import sys, numpy as np, slcodec\n"
          "x = np.load(sys.argv[1], mmap_mode='r')\n"
          "print('start', flush=True)\n"
          "slcodec.encode(x, sys.argv[2], codec='fp32', batch_size=64)\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    counts = {"previous_intact": 0, "new_complete": 0, "lost_or_corrupt": 0,
              "leftover_tmp_rejected": 0, "leftover_tmp_valid": 0}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "x.npy")
        new = np.random.default_rng(0).standard_normal((2000, 1000)).astype(np.float32)
        np.save(src, new)
        for t in range(args.trials):
            folder = os.path.join(tmp, f"t{t}")
            os.mkdir(folder)
            out = os.path.join(folder, "labels.vqsl")
            slcodec.encode(np.zeros((4, 3), np.float32), out, codec="fp32", input_kind="logits")
            before = open(out, "rb").read()
            proc = subprocess.Popen([sys.executable, "-c", ENCODE, src, out], stdout=subprocess.PIPE)
            proc.stdout.readline()
            time.sleep(rng.uniform(0, 4))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            after = open(out, "rb").read()
            if after == before:
                counts["previous_intact"] += 1
            else:
                try:
                    with slcodec.open(out) as r:
                        ok = np.array_equal(r.decode(None, as_="logits").numpy(), new)
                    with Container.open(out) as c:
                        ok = ok and not c.verify()
                except FormatError:
                    ok = False
                counts["new_complete" if ok else "lost_or_corrupt"] += 1
            for leftover in glob.glob(os.path.join(folder, ".labels.vqsl.*.tmp")):
                try:
                    with Container.open(leftover) as c:
                        valid = not c.verify()
                except FormatError:
                    valid = False
                counts["leftover_tmp_valid" if valid else "leftover_tmp_rejected"] += 1
    print(f"kill test: {args.trials} trials (seed {args.seed}), SIGKILL after a random 0-4 s")
    for k, v in counts.items():
        print(f"  {k:<24} {v}")
    return 1 if counts["lost_or_corrupt"] else 0


if __name__ == "__main__":
    sys.exit(main())
