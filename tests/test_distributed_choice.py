"""`slcodec encode --distributed` with no codec flag (issue 15): the codec is chosen once, by rank
0, and every rank writes its shard with that codec and those options - the file a
single-process no-flag encode writes, split in shards."""
import os
import socket
import subprocess
import sys

import numpy as np
import torch

import slcodec
from slcodec import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "slcodec", "data", "lite0_8x64_fp16.npy")

# Two cheap candidates (the real list fits vq trials: minutes); every trial a rank runs is noted
# in a file of that rank, so the test sees which ranks chose.
PATCH = r"""
import os
from slcodec.pipeline import choose as ch
CANDIDATES = [("sparse", {"k": 2}), ("topk", {"k": 5})]
ch.candidates = lambda classes, images: list(CANDIDATES)
_trial = ch.trial
def noted_trial(*a, **kw):
    with open(os.path.join(NOTES, "trials-rank%s" % os.environ.get("RANK", "single")), "a") as f:
        f.write(a[7] + "\n")
    return _trial(*a, **kw)
ch.trial = noted_trial
"""

RANK_SCRIPT = r"""
import sys
NOTES = sys.argv[1]
""" + PATCH + r"""
import torch.distributed as dist
from slcodec import cli
dist.init_process_group("gloo")
rc = cli.main(["encode", sys.argv[1] + "/in.npy", "-o", sys.argv[1] + "/dist.vqsl", "--distributed", "-q"])
dist.barrier()
dist.destroy_process_group()
sys.exit(rc)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_flag_distributed_encode_chooses_once_and_equals_the_single_process_file(tmp_path):
    np.save(tmp_path / "in.npy", np.load(FIXTURE)[:3])   # 3 images x 64 views x 1000 classes
    script = tmp_path / "run.py"
    script.write_text(RANK_SCRIPT)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=180)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # the choice ran on rank 0 alone, over every candidate
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("trials-")) == ["trials-rank0"]
    assert (tmp_path / "trials-rank0").read_text().split() == ["sparse", "topk"]

    # the single-process no-flag encode of the same labels, same candidates
    scope = {"NOTES": str(tmp_path / "single")}
    os.mkdir(scope["NOTES"])
    saved = {}
    from slcodec.pipeline import choose as ch
    saved = {"candidates": ch.candidates, "trial": ch.trial}
    try:
        exec(PATCH, scope)
        assert cli.main(["encode", str(tmp_path / "in.npy"), "-o", str(tmp_path / "one.vqsl"), "-q"]) == 0
    finally:
        ch.candidates, ch.trial = saved["candidates"], saved["trial"]
    with slcodec.open(str(tmp_path / "one.vqsl")) as a, slcodec.open(str(tmp_path / "dist.vqsl")) as b:
        assert [e["count"] for e in b.entries] == [96, 96]
        assert a.codec.codec_id == b.codec.codec_id
        assert a.codec.get_config() == b.codec.get_config()
        assert torch.equal(a.decode(None, as_="logits"), b.decode(None, as_="logits"))
    assert cli.main(["verify", str(tmp_path / "dist.vqsl")]) == 0
