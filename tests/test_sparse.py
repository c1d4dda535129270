"""The ``sparse`` codec: top-k classes with one-byte log-probabilities and a 4-bit tail prior."""
import numpy as np
import pytest
import torch

import slcodec
from slcodec.codecs.base import Context
from slcodec.codecs.sparse import SparseCodec
from slcodec.format.container import Container
from slcodec.errors import ConfigError, FormatError

from craft import assert_rejected, rewrite_file

FIXTURE = slcodec.__path__[0] + "/data/lite0_8x64_fp16.npy"


def _labels():
    return np.load(FIXTURE).astype(np.float32).reshape(-1, 1000)      # 512 real teacher labels


def _kl(x, q):
    p = torch.log_softmax(torch.from_numpy(x), 1)
    return float((p.exp() * (p - q)).sum(1).mean())


@pytest.mark.parametrize("k", [1, 5])
def test_keeps_the_argmax_and_beats_an_even_tail(k, tmp_path):
    x = _labels()
    kls = {}
    for tail in ("prior", "uniform"):
        path = tmp_path / f"{tail}.vqsl"
        slcodec.encode(x, path, codec="sparse", k=k, tail=tail)
        with slcodec.open(path) as r:
            q = r.decode(None, as_="log_probs")
        assert torch.equal(q.argmax(1), torch.from_numpy(x).argmax(1))
        kls[tail] = _kl(x, q)
    slcodec.encode(x, tmp_path / "fkd.vqsl", codec="topk", k=k)
    with slcodec.open(tmp_path / "fkd.vqsl") as r:
        kl_fkd = _kl(x, r.decode(None, as_="log_probs"))
    assert kls["prior"] < 0.8 * kls["uniform"]
    # an even tail with one-byte log-probabilities is FKD up to the quantization (step 1/16 nat)
    assert abs(kls["uniform"] - kl_fkd) < 0.02 * kl_fkd + 1e-3


def test_decoded_values_follow_the_stored_log_probs(tmp_path):
    x = _labels()[:64]
    slcodec.encode(x, tmp_path / "s.vqsl", codec="sparse", k=4, tail="uniform")   # step 1/16 nat
    with slcodec.open(tmp_path / "s.vqsl") as r:
        q = r.decode(None, as_="log_probs")
        ids = torch.from_numpy(r.streams["ids"].read_rows(0, 64).astype(np.int64))
    lp = torch.log_softmax(torch.from_numpy(x), 1)
    # the stored classes are the top 4 (FP16 logits tie often: compare values, not ids)
    assert torch.equal(lp.gather(1, ids), torch.topk(lp, 4, dim=1).values)
    # the stored classes keep their log-probabilities to about half a step (after renormalising),
    # except those more than 255 steps (16 nats) below the top, which saturate there
    top = lp.gather(1, ids)
    inside = (top[:, :1] - top) < 255 / 16 - 0.1
    err = (q.gather(1, ids) - top).abs()
    assert float(err[inside].max()) < 0.5 / 16 + 0.04     # half a step + the renormalisation shift
    assert bool((q.gather(1, ids)[~inside] >= top[~inside]).all())
    # no tail class outranks a stored one
    tail_max = q.scatter(1, ids, float("-inf")).max(1).values
    assert bool((tail_max < q.gather(1, ids).min(1).values).all())


def test_prior_is_four_bit_packed_and_checked():
    x = torch.from_numpy(_labels()[:, :999].copy())                   # odd C: a spare nibble
    codec = SparseCodec(k=3)
    codec.fit(x, Context(classes=999))
    prior = codec.get_params()["prior"]
    assert prior.dtype == np.uint8 and prior.shape == (500,) and prior[-1] >> 4 == 0
    cfg = codec.get_config()
    ctx = Context(classes=999)
    other = SparseCodec.from_config(cfg)
    other.set_params({"prior": prior}, ctx)
    streams = {k: torch.as_tensor(v.astype(np.int64)) for k, v in codec.encode(x, ctx).items()}
    assert torch.equal(codec.decode(streams, ctx), other.decode(streams, ctx))
    bad = [{"prior": prior[:-1]}, {"prior": prior.astype(np.int8)}, {},
           {"prior": np.where(np.arange(500) == 499, 0x10, prior).astype(np.uint8)},
           {"prior": prior, "extra": prior}]
    for params in bad:
        with pytest.raises(FormatError) as ei:
            SparseCodec.from_config(cfg).set_params(params, ctx)
        assert ei.value.rule == "codec-params"
    with pytest.raises(FormatError):                                   # a uniform tail has no params
        SparseCodec.from_config(dict(cfg, tail="uniform")).set_params({"prior": prior}, ctx)


def test_bad_config_and_streams(tmp_path):
    with pytest.raises(ConfigError):
        SparseCodec(k=0)
    with pytest.raises(ConfigError):
        SparseCodec(step=0)
    with pytest.raises(ConfigError, match="smaller than"):
        slcodec.encode(np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32), tmp_path / "x.vqsl",
                       codec="sparse", k=4)
    assert not (tmp_path / "x.vqsl").exists()
    codec = SparseCodec(k=2, tail="uniform")
    with pytest.raises(FormatError):
        codec.validate_streams({"ids": np.array([[3, 10]], np.uint16), "gaps": np.zeros((1, 2), np.uint8)}, 10)


def test_file_layout_and_random_access(tmp_path):
    x = _labels()
    slcodec.encode(x.reshape(8, 64, 1000), tmp_path / "s.vqsl", codec="sparse", k=3)
    with Container.open(tmp_path / "s.vqsl") as c:
        assert c.read_array("params/prior").shape == (500,)
        assert c.stream("streams/ids").width == 3 and c.stream("streams/gaps").dtype == np.uint8
    with slcodec.open(tmp_path / "s.vqsl") as r:
        whole = r.decode(None).reshape(-1, 1000)
        idx = np.array([3, 500, 0, 64 * 5 + 7])
        assert torch.equal(r.decode(idx), whole[idx])
        assert torch.equal(r.decode((5, 7)), whole[64 * 5 + 7])


def test_sharded_and_probs_input(tmp_path):
    x = _labels()
    slcodec.encode(x, tmp_path / "one.vqsl", codec="sparse", k=4)
    slcodec.encode(x, tmp_path / "set.vqsl", codec="sparse", k=4, shards=3)
    with slcodec.open(tmp_path / "one.vqsl") as a, slcodec.open(tmp_path / "set.vqsl") as b:
        idx = np.random.default_rng(0).permutation(len(x))[:200]
        assert torch.equal(a.decode(idx), b.decode(idx))
    # probabilities in, with exact zeros: the same classes, finite output
    p = torch.softmax(torch.from_numpy(x), 1).numpy()
    p[:, ::2] = 0.0
    p /= p.sum(1, keepdims=True)
    slcodec.encode(p, tmp_path / "p.vqsl", codec="sparse", k=4, input_kind="probs")
    with slcodec.open(tmp_path / "p.vqsl") as r:
        q = r.decode(None)
    assert bool(torch.isfinite(q).all())
    assert torch.equal(q.argmax(1), torch.from_numpy(p).argmax(1))


def test_review_cases(tmp_path):
    # most of the prior on the stored classes, a tiny weight on the 3 left: their share is summed
    # over them, not taken as a difference of two sums (float32 would give 0 there)
    codec = SparseCodec(k=17)
    ctx = Context(classes=20)
    u = np.zeros(20, np.uint8)
    u[17:] = 15
    codec.set_params({"prior": (u[0::2] | (u[1::2] << 4)).astype(np.uint8)}, ctx)
    ids = torch.arange(17).view(1, -1)
    gaps = torch.full((1, 17), 80)
    gaps[0, 0] = 1                       # the stored probabilities sum past 1: R is the 1e-6 floor
    z = codec.decode({"ids": ids, "gaps": gaps}, ctx)
    np.testing.assert_allclose(z[0, 17:].exp().numpy(), np.full(3, 1e-6 / 3), rtol=1e-4)
    # repeated class ids and bad option values are rejected
    with pytest.raises(FormatError):
        SparseCodec(k=3, tail="uniform").validate_streams(
            {"ids": np.array([[1, 1, 2]], np.uint16), "gaps": np.zeros((1, 3), np.uint8)}, 10)
    for bad in ({"step": "abc"}, {"step": True}, {"prior_step": float("inf")}, {"fit_sample": "x"},
                {"fit_sample": float("inf")}):
        with pytest.raises(ConfigError):
            SparseCodec(**bad)
    with pytest.raises(ConfigError, match="too fine"):
        slcodec.encode(_labels()[:8], tmp_path / "f.vqsl", codec="sparse", step=1 / 64)


def test_prior_over_listed_classes(tmp_path):
    """prior_classes P: P ids + (P + 1) 4-bit levels instead of C/2 bytes; a format-1.3 file;
    the tail is still far better than an even spread, and files without it stay 1.2."""
    x = _labels()
    kls = {}
    for name, opts in (("full", {}), ("listed", {"prior_classes": 64}), ("uniform", {"tail": "uniform"})):
        path = tmp_path / f"{name}.vqsl"
        slcodec.encode(x, path, codec="sparse", k=1, **opts)
        with slcodec.open(path) as r:
            q = r.decode(None, as_="log_probs")
            cfg = r.header["codec"]["config"]
            params = r.codec.get_params()
            minor = r.container.preamble.minor
        assert torch.equal(q.argmax(1), torch.from_numpy(x).argmax(1))
        kls[name] = _kl(x, q)
        if name == "listed":
            assert cfg["prior_classes"] == 64 and minor == 3
            ids = params["prior_ids"]
            assert ids.dtype == np.uint16 and ids.shape == (64,) and bool((np.diff(ids.astype(int)) > 0).all())
            assert params["prior"].shape == (33,) and params["prior"][-1] >> 4 == 0   # 65 levels
            # the listed classes are those with the most mass outside each label's top 1
            lp = torch.log_softmax(torch.from_numpy(x), 1).double()
            p = lp.exp().scatter(1, lp.argmax(1, keepdim=True), 0.0).sum(0)
            assert set(ids.tolist()) == set(torch.topk(p, 64).indices.tolist())
        else:
            assert "prior_classes" not in cfg and minor == 2
    assert kls["listed"] < 0.8 * kls["uniform"]
    assert kls["full"] <= kls["listed"] * 1.05


def test_prior_classes_params_are_checked():
    ctx = Context(classes=20)
    codec = SparseCodec(k=2, prior_classes=4)
    good = {"prior_ids": np.array([1, 5, 9, 19], np.uint16), "prior": np.array([0x10, 0x32, 0x04], np.uint8)}
    codec.set_params(dict(good), ctx)
    lw = codec._log_w.numpy()
    np.testing.assert_array_equal(lw[[1, 5, 9, 19]], -np.array([0, 1, 2, 3], np.float32))
    assert (lw[[0, 2, 3, 4, 18]] == -4).all()                   # the shared level of the rest
    bad = [dict(good, prior_ids=np.array([1, 5, 5, 19], np.uint16)),       # repeated
           dict(good, prior_ids=np.array([5, 1, 9, 19], np.uint16)),       # not increasing
           dict(good, prior_ids=np.array([1, 5, 9, 20], np.uint16)),       # not a class
           dict(good, prior_ids=np.array([1, 5, 9, 19], np.uint32)),       # wrong dtype
           dict(good, prior_ids=np.array([1, 5, 9], np.uint16)),           # wrong count
           dict(good, prior=np.array([0x10, 0x32, 0x14], np.uint8)),       # unused nibble set
           dict(good, prior=np.array([0x10, 0x32], np.uint8)),             # too short
           {"prior": good["prior"]}]                                       # ids missing
    for params in bad:
        with pytest.raises(FormatError):
            SparseCodec(k=2, prior_classes=4).set_params(params, ctx)
    with pytest.raises(FormatError):     # a file without the option has no prior_ids
        SparseCodec(k=2).set_params(dict(good), ctx)
    for opts in ({"prior_classes": 0}, {"prior_classes": True}, {"prior_classes": 2.5},
                 {"prior_classes": 3, "tail": "uniform"}):
        with pytest.raises(ConfigError):
            SparseCodec(**opts)
    with pytest.raises(ConfigError, match="smaller"):
        SparseCodec(k=2, prior_classes=20).fit(torch.zeros(4, 20), ctx)
    with pytest.raises(ConfigError):
        SparseCodec.from_config({"k": 2, "prior_classes": None})
    # numpy integers (a Python caller's computed values) are taken as the ints they are
    codec = SparseCodec(k=np.int64(2), prior_classes=np.int32(4), fit_sample=np.uint16(50))
    assert codec.get_config()["prior_classes"] == 4 and type(codec.get_config()["k"]) is int


GOLDEN_V13 = slcodec.__path__[0] + "/../spec/golden/v1.3-sparse-k2-prior-classes-logits.vqsl"


@pytest.mark.parametrize("case, rule", [
    ("ids_reversed", "codec-params"), ("no_ids", "codec-params"), ("fewer_listed", "codec-params"),
    ("stored_null", "codec"), ("uniform_with_ids", "codec")])
def test_hostile_v13_files_are_rejected(case, rule, tmp_path):
    with Container.open(GOLDEN_V13) as c:
        ids = c.read_array("params/prior_ids")
    out = str(tmp_path / f"{case}.vqsl")
    kw = {"ids_reversed": {"params": {"prior_ids": ids[::-1].copy()}},
          "no_ids": {"params": {"prior_ids": None}},
          "fewer_listed": {"config": {"prior_classes": 31}},
          "stored_null": {"config": {"prior_classes": None}},
          "uniform_with_ids": {"config": {"tail": "uniform"}}}[case]
    rewrite_file(GOLDEN_V13, out, minor=3, **kw)
    assert_rejected(out, rule)


def test_v13_rewrite_without_edits_decodes_like_the_golden_file(tmp_path):
    out = str(tmp_path / "same.vqsl")
    rewrite_file(GOLDEN_V13, out, minor=3)
    with slcodec.open(out) as a, slcodec.open(GOLDEN_V13) as b:
        assert torch.equal(a.decode(None), b.decode(None))
