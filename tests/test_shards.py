"""Sharded sets (format 1.1): manifest + shards, merge/split, distributed encoding, and one
crafted set for every sharding rule of FORMAT.md (SHARD_CASES; test_attacks checks that every
rule in FORMAT.md's table has a case here or in its own CASES)."""
import copy
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import slcodec
from slcodec import cli
from slcodec.format import shards
from slcodec.format.container import FLAG_EXTERNAL_PARAMS, FLAG_MANIFEST, Container, ContainerWriter, StreamBuilder
from slcodec.errors import FormatError

from craft import parse, rebuild

ROOT = os.path.join(os.path.dirname(__file__), "..")
GOLDEN = os.path.join(ROOT, "spec", "golden")
SET = "v1.1-topk5-sharded"
FIXTURE = os.path.join(ROOT, "slcodec", "data", "lite0_8x64_fp16.npy")
VQ_TINY = {"codes": 2, "codebook_size": 16, "code_dim": 4, "hidden": 32, "steps": 40}


def labels(images=3):
    return np.load(FIXTURE)[:images]        # [images, 64, 1000] FP16 logits


# --------------------------------------------------------------------------- crafting
def copy_set(tmp):
    tmp = str(tmp)
    for f in os.listdir(GOLDEN):
        if f.startswith(SET) and f.endswith(".vqsl"):
            shutil.copy(os.path.join(GOLDEN, f), os.path.join(tmp, f))
    return os.path.join(tmp, SET + ".vqsl")


def shard(tmp, k):
    return os.path.join(str(tmp), f"{SET}-{k:05d}.vqsl")


def rewrite_manifest(path, table=None, header=None, flags=FLAG_MANIFEST, drop=(), add_stream=False):
    """Write the manifest at ``path`` again with its shard table / header edited by functions."""
    with Container.open(path) as m:
        secs = [(s["name"], s["kind"], m.read_array(s["name"]) if s["kind"] == "array" else m.read_msgpack(s["name"]))
                for s in m.header["sections"] if s["name"] not in drop]
        h = {k: copy.deepcopy(v) for k, v in m.header.items() if k != "sections"}
    tmp = path + ".new"
    with ContainerWriter(tmp, verify=False) as w:
        for name, kind, value in secs:
            if name == "shards" and table:
                value = copy.deepcopy(value)
                table(value["shards"])
            (w.add_array if kind == "array" else w.add_msgpack)(name, value)
        if add_stream:
            b = StreamBuilder("uint16", 5)
            b.append(np.zeros((6, 5), np.uint16))
            w.add_stream("streams/ids", b)
        if header:
            header(h)
        w.commit(h, required_flags=flags)
    os.replace(tmp, path)


def edit_shard(path, fn, flags=None):
    data = open(path, "rb").read()
    _, h = parse(data)
    fn(h)
    kw = {} if flags is None else {"required_flags": flags}
    open(path, "wb").write(rebuild(data, header=h, **kw))


def resign(manifest):
    """Make the manifest's entries match the shard files as they now are (size, sha256, header CRC)."""
    folder = os.path.dirname(manifest)

    def fix(entries):
        for e in entries:
            p = os.path.join(folder, e["file"])
            data = open(p, "rb").read()
            pre, _ = parse(data)
            e.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), header_crc32=pre["header_crc32"])
    rewrite_manifest(manifest, table=fix)


def case_manifest(table=None, header=None, **kw):
    def make(tmp):
        m = copy_set(tmp)
        rewrite_manifest(m, table=table, header=header, **kw)
        return m
    return make


def case_shard(fn, k=0, flags=None, sign=True):
    def make(tmp):
        m = copy_set(tmp)
        edit_shard(shard(tmp, k), fn, flags)
        if sign:
            resign(m)
        return m
    return make


def _swap_shards(tmp):
    m = copy_set(tmp)
    a, b = shard(tmp, 0), shard(tmp, 1)
    os.rename(a, a + ".x")
    os.rename(b, a)
    os.rename(a + ".x", b)
    return m


def _missing_shard(tmp):
    m = copy_set(tmp)
    os.unlink(shard(tmp, 1))
    return m


def _shard_alone(tmp):
    copy_set(tmp)
    return shard(tmp, 0)


def _shard_with_params(tmp):
    copy_set(tmp)
    p = shard(tmp, 0)
    with Container.open(p) as c:
        h = {k: v for k, v in c.header.items() if k != "sections"}
        streams = {s["name"]: c.stream(s["name"]).read_rows(0, s["rows"]) for s in c.header["sections"]}
    with ContainerWriter(p + ".new", verify=False) as w:
        w.add_array("params/extra", np.zeros(4, np.float32))
        for name, rows in streams.items():
            b = StreamBuilder(rows.dtype, rows.shape[1])
            b.append(rows)
            w.add_stream(name, b)
        w.commit(h, required_flags=FLAG_EXTERNAL_PARAMS)
    os.replace(p + ".new", p)
    return p


def _plain_file_as_shard(tmp):
    m = copy_set(tmp)
    edit_shard(shard(tmp, 0), lambda h: None, flags=0)
    resign(m)
    return m


# rule, maker(tmp) -> the path to open, whether `slcodec verify PATH` must fail
SHARD_CASES = {
    # rule: manifest
    "manifest-holds-streams": ("manifest", case_manifest(add_stream=True), True),
    "manifest-and-shard-flags": ("manifest", case_manifest(flags=FLAG_MANIFEST | FLAG_EXTERNAL_PARAMS), True),
    "manifest-without-shards-table": ("manifest", case_manifest(drop=("shards",)), True),
    "manifest-without-params-hash": ("manifest", case_manifest(header=lambda h: h["codec"].pop("params_sha256")),
                                     True),
    "manifest-params-hash-wrong": ("manifest", case_manifest(
        header=lambda h: h["codec"].update(params_sha256="0" * 64)), True),
    "shard-name-escapes-folder": ("manifest", case_manifest(
        table=lambda t: t[1].update(file="../" + t[1]["file"])), True),
    "shard-name-absolute": ("manifest", case_manifest(table=lambda t: t[1].update(file="/etc/passwd")), True),
    "shard-named-twice": ("manifest", case_manifest(table=lambda t: t[1].update(file=t[0]["file"])), True),
    "shards-overlap": ("manifest", case_manifest(table=lambda t: t[1].update(start=2)), True),
    "shards-leave-a-gap": ("manifest", case_manifest(table=lambda t: t[1].update(start=4)), True),
    "shards-do-not-cover-count": ("manifest", case_manifest(table=lambda t: t.pop()), True),
    "shards-out-of-order": ("manifest", case_manifest(table=lambda t: t.reverse()), True),
    "shards-table-bad-schema": ("manifest", case_manifest(table=lambda t: t[0].pop("sha256")), True),
    "shards-table-bad-hex": ("manifest", case_manifest(table=lambda t: t[0].update(sha256="z" * 64)), True),
    # rule: external-params
    "shard-opened-alone": ("external-params", _shard_alone, False),
    "shard-holds-params": ("external-params", _shard_with_params, True),
    "shard-without-params-hash": ("external-params", case_shard(lambda h: h["codec"].pop("params_sha256")), True),
    "shard-without-position": ("external-params", case_shard(lambda h: h.pop("shard")), True),
    # rule: shard-missing
    "shard-missing": ("shard-missing", _missing_shard, True),
    # rule: shard-mismatch
    "shards-swapped": ("shard-mismatch", _swap_shards, True),
    "shard-size-differs": ("shard-mismatch", case_manifest(table=lambda t: t[0].update(bytes=t[0]["bytes"] + 64)),
                           True),
    "shard-header-crc-differs": ("shard-mismatch", case_shard(lambda h: h.update(created_by="x"), sign=False), True),
    "shard-params-hash-differs": ("shard-mismatch", case_shard(
        lambda h: h["codec"].update(params_sha256="1" * 64)), True),
    "shard-codec-differs": ("shard-mismatch", case_shard(lambda h: h["codec"]["config"].update(k=4)), True),
    "shard-count-differs": ("shard-mismatch", case_shard(lambda h: h["labels"].update(count=2, shape=[2, 1000])),
                            True),
    "shard-position-differs": ("shard-mismatch", case_shard(lambda h: h["shard"].update(index=1)), True),
    "shard-is-a-plain-file": ("shard-mismatch", _plain_file_as_shard, True),
}


@pytest.mark.parametrize("case", sorted(SHARD_CASES))
def test_set_rejects(case, tmp_path, capsys):
    rule, make, verify_fails = SHARD_CASES[case]
    path = make(tmp_path)
    with pytest.raises(FormatError) as e:
        with slcodec.open(path) as r:
            r.decode(None)
    assert e.value.rule == rule, f"{case}: expected {rule}, got {e.value.rule}: {e.value}"
    capsys.readouterr()
    assert cli.main(["verify", path]) == (1 if verify_fails else 0)
    assert cli.main(["decode", path, "-o", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slcodec: error:") and err.count("\n") == 1
    assert not (tmp_path / "o.npy").exists()


def test_golden_set_is_valid(tmp_path):
    m = copy_set(tmp_path)
    with slcodec.open(m) as r:
        assert isinstance(r, slcodec.pipeline.reader.ShardedReader) and len(r.entries) == 2
        r.decode(None)
        assert r.verify_shards() == []
    with Container.open(m) as c:
        assert (c.preamble.minor, c.preamble.required_flags) == (1, FLAG_MANIFEST)
    with Container.open(shard(tmp_path, 0)) as c:
        assert (c.preamble.minor, c.preamble.required_flags) == (1, FLAG_EXTERNAL_PARAMS)


def test_sha256_is_checked_by_verify(tmp_path, capsys):
    """A shard whose sha256 differs from the manifest's decodes (cheap checks pass) but fails verify."""
    m = copy_set(tmp_path)
    rewrite_manifest(m, table=lambda t: t[1].update(sha256="ab" * 32))
    with slcodec.open(m) as r:
        r.decode(None)
    assert cli.main(["verify", m]) == 1
    assert "sha256" in capsys.readouterr().out


def test_a_1_0_reader_rejects_sets(tmp_path, monkeypatch):
    import slcodec.format.container as container
    m = copy_set(tmp_path)
    monkeypatch.setattr(container, "KNOWN_REQUIRED_FLAGS", 0)
    for p in (m, shard(tmp_path, 0)):
        with pytest.raises(FormatError) as e:
            Container.open(p)
        assert e.value.rule == "required-flags"


def test_params_hash_definition():
    """The hash FORMAT.md defines, computed here from its text."""
    p = {"b": np.arange(6, dtype=np.float16).reshape(2, 3), "a": np.zeros(0, np.int32)}
    h = hashlib.sha256(b"vqsl-params-sha256-v1\0")
    for name in ("a", "b"):
        arr = p[name]
        h.update(len(name).to_bytes(4, "little") + name.encode() + len(arr.dtype.name).to_bytes(4, "little")
                 + arr.dtype.name.encode() + arr.ndim.to_bytes(4, "little")
                 + b"".join(d.to_bytes(8, "little") for d in arr.shape) + arr.nbytes.to_bytes(8, "little")
                 + arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    assert shards.params_sha256(p) == h.hexdigest()
    assert shards.params_sha256({}) == hashlib.sha256(b"vqsl-params-sha256-v1\0").hexdigest()


# --------------------------------------------------------------------------- writing and reading
@pytest.mark.parametrize("codec,opts", [("fp16", {}), ("topk", {"k": 5}), ("vq", VQ_TINY)])
def test_sharded_encode_decodes_as_single_file(codec, opts, tmp_path):
    x = labels()
    single, sharded = str(tmp_path / "one.vqsl"), str(tmp_path / "set.vqsl")
    slcodec.encode(x, single, codec=codec, seed=1, **opts)
    slcodec.encode(x, sharded, codec=codec, seed=1, shard_rows=50, **opts)
    with slcodec.open(sharded) as b:
        token = b.entries[0]["file"].split("-")[1]  # one write token for every shard of a write
    assert re.fullmatch("[0-9a-f]{8}", token)
    assert sorted(os.listdir(tmp_path)) == ["one.vqsl", *[f"set-{token}-{k:05d}.vqsl" for k in range(4)], "set.vqsl"]
    with slcodec.open(single) as a, slcodec.open(sharded) as b:
        assert len(b) == len(a) == 192 and b.shape == a.shape and b.classes == a.classes
        assert torch.equal(a.decode(None, as_="logits"), b.decode(None, as_="logits"))
        rng = np.random.default_rng(0)
        for index in (rng.permutation(192)[:70], slice(45, 155), 49, 50, -1, (2, slice(None)), (slice(None), 3),
                      [149, 150, 0, 199 - 8]):
            assert torch.equal(a.decode(index, temperature=4.0), b.decode(index, temperature=4.0))
        b.verify_streams()
    assert cli.main(["verify", sharded]) == 0


def test_merge_and_split_round_trip(tmp_path, capsys):
    x = labels(2)
    single = str(tmp_path / "one.vqsl")
    slcodec.encode(x, single, codec="topk", k=5)
    man = str(tmp_path / "set.vqsl")
    assert cli.main(["split", single, "-o", man, "--shards", "3", "-q"]) == 0
    merged = str(tmp_path / "merged.vqsl")
    assert cli.main(["merge", man, "-o", merged, "-q"]) == 0
    assert cli.main(["verify", man, merged]) == 0
    with slcodec.open(single) as a, slcodec.open(man) as s, slcodec.open(merged) as m:
        assert len(s.entries) == 3 and [e["count"] for e in s.entries] == [43, 43, 42]
        ref = a.decode(None)
        assert torch.equal(ref, s.decode(None)) and torch.equal(ref, m.decode(None))
        assert m.container.preamble.minor == 0 and m.container.preamble.required_flags == 0
        assert m.header["labels"] == a.header["labels"]
    # split again with fewer shards: the old set's extra shards are removed with it
    assert cli.main(["split", merged, "-o", man, "--shard-rows", "64", "-q"]) == 0
    with slcodec.open(man) as s:
        names = [e["file"] for e in s.entries]
    assert len(names) == 2 and sorted(f for f in os.listdir(tmp_path) if f.startswith("set")) == [*names, "set.vqsl"]
    assert cli.main(["split", man, "-o", str(tmp_path / "x.vqsl"), "--shards", "2"]) == 2  # already sharded


def test_stats_of_a_set_counts_every_file(tmp_path, capsys):
    import json
    m = copy_set(tmp_path)
    capsys.readouterr()
    assert cli.main(["stats", m, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    files = [m, shard(tmp_path, 0), shard(tmp_path, 1)]
    assert s["files"] == 3 and s["file_bytes"] == sum(os.path.getsize(p) for p in files)
    assert sum(e["bytes"] for e in s["sections"]) == s["file_bytes"]
    assert s["labels"] == 6 and s["marginal_bits_per_label"] > 0


def test_failed_sharded_encode_leaves_nothing(tmp_path):
    x = labels(2).reshape(-1, 1000).astype(np.float32)
    x[100, 3] = np.nan   # found by the writer after two shards were written (to temporary files)
    with pytest.raises(slcodec.InputError):
        slcodec.encode(x, str(tmp_path / "set.vqsl"), codec="fp16", shard_rows=40, batch_size=20)
    assert os.listdir(tmp_path) == []



def test_replacing_a_set_is_atomic_for_readers(tmp_path, monkeypatch):
    """A set being replaced: readers see the old set whole until the new manifest is in
    place, the new one whole after; a reader left holding the old manifest is told that the
    set was replaced (not that it is damaged)."""
    a = labels(3)
    b = (a[::-1] + 1).astype(a.dtype)
    out = str(tmp_path / "set.vqsl")
    slcodec.encode(a, out, codec="fp16", shard_rows=50)
    ref_a = torch.from_numpy(a.reshape(-1, 1000).astype(np.float32))
    early = slcodec.open(out)
    assert torch.equal(early.decode(0, as_="logits"), ref_a[0])  # opens shard 0 only

    # a writer stopped between renaming its shards and renaming its manifest (a kill, a crash)
    def crash(self):
        raise KeyboardInterrupt("killed before the manifest rename")
    monkeypatch.setattr(shards.ShardSetWriter, "publish_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        slcodec.encode(b, out, codec="fp16", shard_rows=50)
    monkeypatch.undo()
    with slcodec.open(out) as mid:  # the old set, whole: no shard of it was touched
        assert torch.equal(mid.decode(None, as_="logits").reshape(-1, 1000), ref_a)
    assert torch.equal(early.decode(slice(60, 70), as_="logits"), ref_a[60:70])

    # the complete replace: the new set whole, nothing of the old one or of the stopped write left
    slcodec.encode(b, out, codec="fp16", shard_rows=50)
    with slcodec.open(out) as late:
        assert torch.equal(late.decode(None, as_="logits").reshape(-1, 1000),
                           torch.from_numpy(b.reshape(-1, 1000).astype(np.float32)))
        assert sorted(os.listdir(tmp_path)) == sorted([*(e["file"] for e in late.entries), "set.vqsl"])
    # the early reader still reads the shards it opened; the others are gone, and it says why
    assert torch.equal(early.decode(1, as_="logits"), ref_a[1])
    with pytest.raises(slcodec.SlcodecError, match="replaced while it was being read") as err:
        early.decode(170, as_="logits")
    assert not isinstance(err.value, FormatError)
    early.close()
    assert cli.main(["verify", out]) == 0

# --------------------------------------------------------------------------- distributed
DIST_SCRIPT = r"""
import sys, numpy as np
import torch.distributed as dist
import slcodec.distributed as d
from slcodec import cli
dist.init_process_group("gloo")   # joined by every call below (as a training script would)
x = np.load(sys.argv[2])[:3]
if dist.get_rank() == 0:
    np.save(sys.argv[1] + "/in.npy", x)
dist.barrier()
for name, codec, opts in [("fp16", "fp16", {}), ("topk", "topk", {"k": 5}), ("vq", "vq", %r),
                          ("vq-ib", "vq", dict(%r, image_bias="on"))]:
    d.encode(x, f"{sys.argv[1]}/{name}-dist.vqsl", codec=codec, seed=3, **opts)
rc = cli.main(["encode", sys.argv[1] + "/in.npy", "-o", sys.argv[1] + "/cli-dist.vqsl", "--distributed",
               "--codec", "topk", "--k", "3", "--device", "cpu", "-q"])
dist.destroy_process_group()
sys.exit(rc)
""" % (VQ_TINY, VQ_TINY)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_gloo_encode_equals_single_process(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(DIST_SCRIPT)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path), FIXTURE], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    x = labels()
    for codec, opts in [("fp16", {}), ("topk", {"k": 5}), ("vq", VQ_TINY), ("vq-ib", dict(VQ_TINY, image_bias="on")),
                        ("cli", None)]:
        single = str(tmp_path / f"{codec}-one.vqsl")
        if codec == "cli":
            slcodec.encode(x, single, codec="topk", k=3)
        else:
            slcodec.encode(x, single, codec=codec.split("-")[0], seed=3, **opts)
        man = str(tmp_path / f"{codec}-dist.vqsl")
        with slcodec.open(single) as a, slcodec.open(man) as b:
            assert [e["count"] for e in b.entries] == [96, 96]
            assert torch.equal(a.decode(None, as_="logits"), b.decode(None, as_="logits")), codec
            if codec == "vq-ib":
                assert b.codec.get_config()["image_bias"] == "on"
            with Container.open(single) as c, Container.open(man) as m:
                assert shards.params_sha256(shards.container_params(c)) == m.header["codec"]["params_sha256"]
        assert cli.main(["verify", man]) == 0


# A codec whose fit goes wrong: non-finite parameters, on every rank or (NAN_RANK) on one rank only.
NAN_CODEC = r"""
import os, numpy as np
from slcodec.codecs.base import Codec

class NanCodec(Codec):
    codec_id = "test-nan"

    def fit(self, labels, ctx):
        bad = os.environ.get("NAN_RANK") in (None, os.environ.get("RANK"))
        self.scale = np.array([np.nan if bad else 1.0], dtype=np.float32)

    def get_params(self):
        return {"scale": self.scale}

    def encode(self, labels, ctx):
        return {"values": labels.cpu().numpy().astype(np.float16)}

    def decode(self, streams, ctx):
        return streams["values"].float()

    def stream_specs(self, classes):
        return {"values": ("float16", classes)}
"""

NAN_DIST_SCRIPT = NAN_CODEC + r"""
import sys, numpy as np
import torch.distributed as dist
import slcodec.distributed as d
from slcodec.codecs.base import register
from slcodec.errors import ConfigError
register(NanCodec)
dist.init_process_group("gloo")
x = np.load(sys.argv[2])[:3]
try:
    d.encode(x, sys.argv[1] + "/nan-dist.vqsl", codec="test-nan")
    rc = 5
except ConfigError as exc:
    print("REFUSED:", exc)
    rc = 0
dist.barrier()   # both ranks got here: neither leaves while the other still reads from it
dist.destroy_process_group()
sys.exit(rc)
"""


def _run_two_ranks(script_text, tmp_path, env_extra=None):
    script = tmp_path / "run.py"
    script.write_text(script_text)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", **(env_extra or {}))
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path), FIXTURE], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    return [p.returncode for p in procs], outs


@pytest.fixture
def nan_codec(monkeypatch):
    from slcodec.codecs import base
    scope = {}
    exec(NAN_CODEC, scope)
    monkeypatch.setitem(base._REGISTRY, "test-nan", scope["NanCodec"])   # this test only
    return scope["NanCodec"]


@pytest.mark.parametrize("nan_rank", [None, "1"])
def test_non_finite_parameters_are_refused_by_every_encode_path(tmp_path, nan_codec, nan_rank):
    """A fit gone wrong writes nothing, whichever path encodes: one file, a sharded set, or a
    2-rank team - and a team stops on every rank with the same error even when only one rank's
    fit went wrong (the others would otherwise wait for it forever)."""
    from slcodec.errors import ConfigError
    x = labels()
    if nan_rank is None:
        for kw in ({}, {"shard_rows": 50}):
            with pytest.raises(ConfigError, match="non-finite parameter 'scale'"):
                slcodec.encode(x, str(tmp_path / "nan-one.vqsl"), codec="test-nan", **kw)
        with pytest.raises(ConfigError, match="non-finite parameter 'scale'"):
            with slcodec.Writer(str(tmp_path / "nan-w.vqsl"), "test-nan", classes=1000) as w:
                w.append(x.reshape(-1, 1000))
        assert os.listdir(tmp_path) == []
    rcs, outs = _run_two_ranks(NAN_DIST_SCRIPT, tmp_path, {"NAN_RANK": nan_rank} if nan_rank else None)
    assert rcs == [0, 0], outs
    for out in outs:
        assert "REFUSED:" in out and "non-finite parameter 'scale'" in out, out
    assert sorted(os.listdir(tmp_path)) == ["run.py"]
