"""Never lose a label: a killed encode leaves the previous output intact; concurrent readers agree."""
import glob
import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import slcodec
from slcodec import cli
from slcodec.format.container import Container
from slcodec.errors import FormatError

ENCODE = """
import sys, numpy as np, slcodec
x = np.load(sys.argv[1], mmap_mode='r')
print('start', flush=True)
slcodec.encode(x, sys.argv[2], codec='fp32', batch_size=64)
"""


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 1000)).astype(np.float32)  # 8 MB: fp32 + zstd takes a moment
    np.save(d / "x.npy", x)
    return d / "x.npy"


@pytest.mark.parametrize("delay", [0.0, 0.3, 0.8, 1.5, 3.0])
def test_sigkill_during_encode_keeps_previous_output(tmp_path, big_input, delay):
    out = tmp_path / "labels.vqsl"
    slcodec.encode(np.zeros((4, 3), np.float32), out, codec="fp32", input_kind="logits")
    before = out.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", ENCODE, str(big_input), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"start"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = out.read_bytes()
    if after != before:
        # The encode finished before the kill: the file must then be the complete new one.
        with slcodec.open(out) as r:
            assert r.shape == (2000, 1000)
        assert cli.main(["verify", str(out)]) == 0
    # Whatever is left besides the output is a temporary file that no reader takes for valid.
    for leftover in glob.glob(str(tmp_path / ".labels.vqsl.*.tmp")):
        with pytest.raises(FormatError):
            with Container.open(leftover) as c:
                if c.verify():
                    raise FormatError("damaged")
                raise AssertionError("complete temporary file: rename was due")  # pragma: no cover


READ = """
import hashlib, sys, numpy as np, slcodec
with slcodec.open(sys.argv[1]) as r:
    rng = np.random.default_rng(int(sys.argv[2]))
    idx = rng.permutation(len(r))
    full = np.empty((len(r), r.classes), np.float32)
    for part in np.array_split(idx, 7):  # each process reads in its own random order
        full[part] = r.decode(part, as_='probs', temperature=2.0).numpy()
print(hashlib.sha256(full.tobytes()).hexdigest())
"""


def test_concurrent_readers_get_identical_results(tmp_path, real_labels):
    p = tmp_path / "x.vqsl"
    slcodec.encode(real_labels, p, codec="topk", k=10)
    procs = [subprocess.Popen([sys.executable, "-c", READ, str(p), str(seed)], stdout=subprocess.PIPE)
             for seed in range(4)]
    digests = {proc.communicate()[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(digests) == 1 and len(next(iter(digests))) == 64
