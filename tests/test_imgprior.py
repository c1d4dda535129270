"""The ``imgprior`` codec: per-image mean log-probabilities plus a per-view top-k residual (format 1.4)."""
import numpy as np
import pytest
import torch

import slcodec
from slcodec.codecs.base import Context
from slcodec.codecs.imgprior import ImagePriorCodec, prior_logits, quantise_prior
from slcodec.format.container import Container
from slcodec.errors import ConfigError, FormatError

from craft import assert_rejected, rewrite_file
from test_sq import rewrite_streams

FIXTURE = slcodec.__path__[0] + "/data/lite0_8x64_fp16.npy"
GOLDEN = slcodec.__path__[0] + "/../spec/golden/v1.4-imgprior-k4-logits.vqsl"


def _labels():
    return np.load(FIXTURE).astype(np.float32)                  # [8, 64, 1000] real teacher logits


def _kl(x, q, t=1.0):
    p = torch.log_softmax(torch.from_numpy(x.reshape(-1, x.shape[-1])) / t, 1)
    q = torch.log_softmax(q.reshape(p.shape) / t, 1)
    return float((p.exp() * (p - q)).sum(1).mean())


def _decode(path, **kw):
    with slcodec.open(path) as r:
        return r.decode(None, as_="logits", **kw)


def test_prior_quantisation_error_is_bounded():
    rng = np.random.default_rng(0)
    m = np.log(rng.dirichlet(np.full(50, 0.3), size=6)).astype(np.float32)
    m[0, :10] = -1e4                                    # deeper than the prior spans
    levels, rng_ = quantise_prior(m)
    assert levels.dtype == np.uint8 and rng_.dtype == np.float32 and rng_.shape == (6, 2)
    a = prior_logits(torch.from_numpy(levels), torch.from_numpy(rng_)).numpy()
    top, step = rng_[:, :1].astype(np.float64), rng_[:, 1:].astype(np.float64)
    depth = top - np.maximum(m, -1e4)
    inside = depth <= 64
    # half a level of sqrt(depth): |a - m| <= sqrt(depth) * step + step^2 / 4 (+ float32 rounding)
    bound = np.sqrt(depth) * step + step ** 2 / 4 + 1e-4 * (1 + np.abs(m))
    assert (np.abs(a - m)[inside] <= bound[inside]).all()
    assert (a[~inside] <= top.repeat(50, 1)[~inside] - 63.5).all()       # the deepest level
    assert np.allclose(a.max(1), m.max(1), atol=1e-6)                    # the top class exactly


def test_residuals_improve_on_the_prior_and_keep_the_argmax(tmp_path):
    x = _labels()
    kls, bits = {}, {}
    for k in (0, 4, 16):
        p = tmp_path / f"k{k}.vqsl"
        slcodec.encode(x, p, codec="imgprior", residual_k=k)
        with slcodec.open(p) as r:
            assert r.container.preamble.minor == 4
            assert r.container.read_array("params/prior").shape == (8, 1000)
            q = r.decode(None, as_="logits")
        assert bool(torch.isfinite(q).all())
        assert torch.equal(q.argmax(-1), torch.from_numpy(x).argmax(-1))
        kls[k] = (_kl(x, q), _kl(x, q, 4.0))
        bits[k] = p.stat().st_size * 8 / 512
    assert kls[4][0] < 0.6 * kls[0][0] and kls[16][0] < 0.7 * kls[4][0]
    assert kls[16][1] < kls[4][1] < kls[0][1]
    assert bits[0] < bits[4] < bits[16]


def test_decoded_values_follow_the_streams(tmp_path):
    x = _labels()
    slcodec.encode(x, tmp_path / "s.vqsl", codec="imgprior", residual_k=3, residual_step=0.25)
    with Container.open(tmp_path / "s.vqsl") as c:
        levels, rng = c.read_array("params/prior"), c.read_array("params/prior_range")
        ids = c.stream("streams/ids").read_rows(0, 512).astype(np.int64)
        res = c.stream("streams/residuals").read_rows(0, 512).astype(np.float32)
        tail = c.stream("streams/tail").read_rows(0, 512).astype(np.float32)
        top1 = c.stream("streams/top1").read_rows(0, 512).reshape(-1).astype(np.int64)
    z = _decode(tmp_path / "s.vqsl").reshape(512, 1000).numpy()
    a = prior_logits(torch.from_numpy(levels.copy()), torch.from_numpy(rng.copy())).numpy()[np.arange(512) // 64]
    want = a + tail * np.float32(0.25)
    np.put_along_axis(want, ids, np.take_along_axis(a, ids, 1) + res * np.float32(0.25), 1)
    assert (np.diff(ids, axis=1) > 0).all()          # written in increasing id order
    plain = top1 == 0
    assert np.array_equal(z[plain], want[plain])
    lp = torch.log_softmax(torch.from_numpy(x.reshape(512, 1000)), 1).numpy()
    # the stored classes keep their log-probabilities to half a step
    inside = np.abs(np.take_along_axis(lp - a, ids, 1)) < 127 * 0.25
    assert (np.abs(np.take_along_axis(want - lp, ids, 1))[inside] <= 0.125 + 1e-5).all()


def test_the_top1_fix_lifts_the_stored_class(tmp_path):
    x = _labels()
    slcodec.encode(x, tmp_path / "k0.vqsl", codec="imgprior", residual_k=0, top1_margin=0.25)
    with Container.open(tmp_path / "k0.vqsl") as c:
        levels, rng = c.read_array("params/prior"), c.read_array("params/prior_range")
        top1 = c.stream("streams/top1").read_rows(0, 512).reshape(-1).astype(np.int64)
    a = prior_logits(torch.from_numpy(levels.copy()), torch.from_numpy(rng.copy())).numpy()[np.arange(512) // 64]
    z = _decode(tmp_path / "k0.vqsl").reshape(512, 1000).numpy()
    fixed = np.flatnonzero(top1)
    assert fixed.size > 0                   # views whose top class is not their image's
    assert np.array_equal(z[top1 == 0], a[top1 == 0])
    c = top1[fixed] - 1
    np.testing.assert_allclose(z[fixed, c], a[fixed].max(1) + 0.25, rtol=0, atol=1e-5)
    z[fixed, c] = a[fixed, c]
    assert np.array_equal(z, a)             # nothing else changed


def test_flat_labels_get_one_global_prior(tmp_path):
    x = _labels().reshape(512, 1000)
    slcodec.encode(x, tmp_path / "f.vqsl", codec="imgprior", residual_k=4)
    with slcodec.open(tmp_path / "f.vqsl") as r:
        assert r.container.read_array("params/prior").shape == (1, 1000)
        q = r.decode(None, as_="logits")
        part = r.decode(np.array([7, 500, 7]), as_="logits")
    assert torch.equal(part, q[[7, 500, 7]])
    assert torch.equal(q.argmax(1), torch.from_numpy(x).argmax(1))
    # one prior for all 8 images is worse than one per image, but the residuals still help
    slcodec.encode(x.reshape(8, 64, 1000), tmp_path / "i.vqsl", codec="imgprior", residual_k=4)
    assert _kl(x, _decode(tmp_path / "i.vqsl")) < _kl(x, q)


def test_writer_without_image_means_is_refused_clearly(tmp_path):
    x = _labels()
    with pytest.raises(ConfigError, match="set_image_means"):
        with slcodec.Writer(tmp_path / "w.vqsl", "imgprior", classes=1000, shape=[8, 64]) as w:
            w.append(x)
    assert not (tmp_path / "w.vqsl").exists()
    # with them it works, and gives the file slcodec.encode gives
    from slcodec.pipeline.rows import RowReader
    from slcodec.pipeline.statistics import image_mean_log_probs
    with RowReader(x.reshape(512, 1000)) as reader:
        means = image_mean_log_probs(reader, [8, 64], "logits")
    with slcodec.Writer(tmp_path / "w.vqsl", "imgprior", classes=1000, shape=[8, 64]) as w:
        w.set_image_means(means)
        w.append(x)
    slcodec.encode(x, tmp_path / "e.vqsl", codec="imgprior")
    assert torch.equal(_decode(tmp_path / "w.vqsl"), _decode(tmp_path / "e.vqsl"))


def test_random_access_sharded_and_probs(tmp_path):
    x = _labels()
    slcodec.encode(x, tmp_path / "one.vqsl", codec="imgprior")
    slcodec.encode(x, tmp_path / "set.vqsl", codec="imgprior", shard_rows=100)
    full = _decode(tmp_path / "one.vqsl")
    assert torch.equal(full, _decode(tmp_path / "set.vqsl"))
    with slcodec.open(tmp_path / "one.vqsl") as r:
        assert torch.equal(r.decode((slice(2, 4), [5, 0]), as_="logits"), full[2:4][:, [5, 0]])
        idx = np.array([511, 0, 300, 64])
        assert torch.equal(r.decode(idx, as_="logits"), full.reshape(512, 1000)[idx])
    probs = torch.softmax(torch.from_numpy(x), -1).numpy()
    slcodec.encode(probs, tmp_path / "p.vqsl", codec="imgprior", input_kind="probs")
    q = _decode(tmp_path / "p.vqsl")
    assert torch.equal(q.argmax(-1), torch.from_numpy(x).argmax(-1))
    assert _kl(x, q) < 1.05 * _kl(x, full) + 1e-3


def test_encode_is_deterministic(tmp_path):
    x = _labels()[:3]
    got = []
    for i in range(2):
        slcodec.encode(x, tmp_path / f"d{i}.vqsl", codec="imgprior", residual_k=5)
        with Container.open(tmp_path / f"d{i}.vqsl") as c:
            got.append([c.read_array("params/prior"), c.read_array("params/prior_range")]
                       + [c.stream(f"streams/{s}").read_rows(0, 192) for s in ("ids", "residuals", "tail", "top1")])
    for a, b in zip(*got):
        assert np.array_equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_on_cuda_matches_cpu(tmp_path):
    x = _labels()
    slcodec.encode(x, tmp_path / "c.vqsl", codec="imgprior", device="cuda")
    with slcodec.open(tmp_path / "c.vqsl") as r:
        a = r.decode(None, as_="logits")
        b = r.decode(None, as_="logits", device="cuda").cpu()
    assert torch.equal(a, b)        # additions and products only: the same on every device
    assert torch.equal(a.argmax(-1), torch.from_numpy(x).argmax(-1))


# ---------------------------------------------------------------------------------- checks
@pytest.mark.parametrize("opts", [
    {"residual_k": -1}, {"residual_k": True}, {"residual_k": 2.0}, {"residual_step": 0},
    {"residual_step": 5.0}, {"residual_step": float("nan")}, {"top1_margin": 0.0}, {"top1_margin": "1"},
    {"fit_sample": 0}, {"image_bias": "on"}])
def test_bad_config_is_refused(opts):
    with pytest.raises(ConfigError):
        ImagePriorCodec(**opts)


def test_k_must_be_below_the_classes():
    with pytest.raises(ConfigError, match="smaller"):
        ImagePriorCodec(residual_k=10).fit(torch.zeros(4, 10), Context(classes=10))


def test_params_are_checked():
    ctx = Context(classes=5, label_shape=(2, 3))
    good = {"prior": np.zeros((2, 5), np.uint8), "prior_range": np.array([[-0.5, 0.01], [0, 0]], np.float32)}
    ImagePriorCodec().set_params(dict(good), Context(classes=5, label_shape=(2, 3)))
    rng = good["prior_range"]
    bad = [dict(good, prior=np.zeros((1, 5), np.uint8)),                 # rows are not the images
           dict(good, prior=np.zeros((2, 5), np.int8)),
           dict(good, prior_range=rng.astype(np.float64)),
           dict(good, prior_range=np.array([[np.nan, 0.01], [0, 0]], np.float32)),
           dict(good, prior_range=np.array([[0.5, 0.01], [0, 0]], np.float32)),     # top above 0
           dict(good, prior_range=np.array([[-2e4, 0.01], [0, 0]], np.float32)),    # below the floor
           dict(good, prior_range=np.array([[-1, -0.01], [0, 0]], np.float32)),     # negative step
           dict(good, prior_range=np.array([[-1, 0.04], [0, 0]], np.float32)),      # step > sqrt(64)/255
           {"prior": good["prior"]}]
    for params in bad:
        with pytest.raises(FormatError) as ei:
            ImagePriorCodec(residual_k=2).set_params(params, ctx)
        assert ei.value.rule == "codec-params"
    with pytest.raises(FormatError) as ei:       # k >= C in a file
        ImagePriorCodec(residual_k=5).set_params(dict(good), ctx)
    assert ei.value.rule == "codec"


def test_streams_are_checked():
    codec = ImagePriorCodec(residual_k=2)
    good = {"ids": np.array([[0, 4]], np.uint16), "residuals": np.array([[127, -127]], np.int8),
            "tail": np.array([[3]], np.int8), "top1": np.array([[5]], np.uint16)}
    codec.validate_streams(good, 5)
    for name, value in (("ids", [[0, 5]]), ("ids", [[2, 2]]), ("residuals", [[0, -128]]),
                        ("tail", [[-128]]), ("top1", [[6]])):
        with pytest.raises(FormatError) as ei:
            codec.validate_streams(dict(good, **{name: np.array(value, good[name].dtype)}), 5)
        assert ei.value.rule == "codec-streams"


@pytest.mark.parametrize("case, rule", [
    ("k_too_large", "codec"), ("step_zero", "codec"), ("unknown_key", "codec"),
    ("range_missing", "codec-params"), ("range_nan", "codec-params"), ("flat_shape", "codec-params"),
    ("ids_repeated", "codec-streams"), ("residual_min", "codec-streams"), ("top1_above_c", "codec-streams")])
def test_hostile_files_are_rejected(case, rule, tmp_path):
    with Container.open(GOLDEN) as c:
        n = c.header["labels"]["count"]
        rng = c.read_array("params/prior_range")
        ids = c.stream("streams/ids").read_rows(0, n)
        res = c.stream("streams/residuals").read_rows(0, n)
        top1 = c.stream("streams/top1").read_rows(0, n)
    out = tmp_path / f"{case}.vqsl"
    if case in ("ids_repeated", "residual_min", "top1_above_c"):
        if case == "ids_repeated":
            ids = ids.copy()
            ids[2, 1] = ids[2, 0]
            rewrite_streams(GOLDEN, out, {"ids": ids})
        elif case == "residual_min":
            res = res.copy()
            res[0, 0] = -128
            rewrite_streams(GOLDEN, out, {"residuals": res})
        else:
            top1 = top1.copy()
            top1[0, 0] = 1001
            rewrite_streams(GOLDEN, out, {"top1": top1})
    else:
        kw = {"k_too_large": {"config": {"residual_k": 1000}},
              "step_zero": {"config": {"residual_step": 0.0}},
              "unknown_key": {"config": {"image_bias": "on"}},
              "range_missing": {"params": {"prior_range": None}},
              "range_nan": {"params": {"prior_range": np.where(np.arange(2) == 1, np.nan, rng).astype(np.float32)}},
              "flat_shape": {"shape": [6, 1000]}}[case]
        rewrite_file(GOLDEN, str(out), minor=4, **kw)
    assert_rejected(out, rule)


def test_golden_rewrite_without_edits_decodes_alike(tmp_path):
    out = tmp_path / "same.vqsl"
    rewrite_file(GOLDEN, str(out), minor=4)
    assert torch.equal(_decode(out), _decode(GOLDEN))
