"""vq's sparse image prior (format 1.7): per image its k most likely classes at uint8 levels, the other
classes at a set-wide profile plus one offset per image, added to the decoded logits."""
import os
import sys

import numpy as np
import pytest
import torch

import slcodec
from slcodec.cli import main as cli_main
from slcodec.codecs.base import Context
from slcodec.codecs.vq import VQCodec
from slcodec.codecs.vq.prior import (SPARSE_PRIOR_STEP, quantise_sparse_prior, sparse_prior_bits, sparse_prior_rows,
                                     sparse_prior_table)
from slcodec.errors import ConfigError, FormatError
from slcodec.format.container import Container
from slcodec.pipeline.rows import RowReader
from slcodec.pipeline.statistics import image_mean_log_probs

from craft import assert_rejected, rewrite_file

TINY = {"codes": 1, "codebook_size": 8, "code_dim": 4, "hidden": 16, "decoder_layers": 0, "steps": 80,
        "train_batch": 128}
# 16 * C / A = 3.4 bits per label for the exact table (auto: not on); the sparse prior with k = 8:
# (20 * (8 * 24 + 16) + 16 * 64) / 6000 = 0.86 bits per label (auto: sparse)
I, A, C, K = 20, 300, 64, 8
GOLDEN_V17 = os.path.join(os.path.dirname(__file__), "..", "spec", "golden", "v1.7-vq-sparse-prior-logits.vqsl")


def _views(seed=0, images=I, augs=A, classes=C):
    """Peaked labels with strong per-image structure: each image's mean logits (a few classes far
    above the rest) plus per-view noise."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(images, 1, classes, generator=g) * 4.0
    return (mean + 0.7 * torch.randn(images, augs, classes, generator=g)).numpy()


def _kl(x, q, T=1.0):
    p = torch.log_softmax(torch.from_numpy(x).reshape(-1, x.shape[-1]) / T, 1)
    lq = torch.log_softmax(q.reshape(p.shape) / T, 1)
    return float((p.exp() * (p - lq)).sum(1).mean())


def test_quantiser_layout_and_reader_rows():
    x = _views(seed=1)
    with RowReader(x.reshape(-1, C)) as rr:
        means = image_mean_log_probs(rr, [I, A], "logits")
    p = quantise_sparse_prior(means, K)
    assert p["image_prior_ids"].dtype == np.uint16 and p["image_prior_ids"].shape == (I, K)
    assert p["image_prior_levels"].dtype == np.uint8 and p["image_prior_offset"].shape == (I,)
    assert p["image_prior_profile"].dtype == np.float16 and p["image_prior_profile"].shape == (C,)
    ids = p["image_prior_ids"].astype(np.int64)
    assert (np.diff(ids, axis=1) > 0).all()
    # the listed classes are each image's k most likely ones, the top one at level 0
    want = np.sort(np.argsort(-means, axis=1, kind="stable")[:, :K], axis=1)
    assert np.array_equal(ids, want)
    assert (p["image_prior_levels"].min(axis=1) == 0).all()
    # listed values within half a level of the truth (relative to each image's top)
    r = means - means.max(1, keepdims=True)
    dq = np.take_along_axis(sparse_prior_table(p), ids, axis=1)
    err = np.abs(np.sqrt(-dq) - np.sqrt(-np.take_along_axis(r, ids, axis=1)))
    assert err.max() <= SPARSE_PRIOR_STEP / 2 + 1e-6
    # torch rows (what encode, fit and decode add) are the numpy table bit for bit
    t = {"ids": torch.from_numpy(ids), "levels": torch.from_numpy(p["image_prior_levels"].astype(np.float32)),
         "offset": torch.from_numpy(p["image_prior_offset"].astype(np.float32)),
         "profile": torch.from_numpy(p["image_prior_profile"].astype(np.float32))}
    img = torch.tensor([3, 0, 19, 3])
    assert torch.equal(sparse_prior_rows(t, img), torch.from_numpy(sparse_prior_table(p)[img.numpy()]))
    with pytest.raises(ConfigError, match="image_bias_k"):
        quantise_sparse_prior(means, C)


def test_round_trip_top1_and_gain_over_no_prior(tmp_path):
    x = _views()
    sp, off = tmp_path / "sp.vqsl", tmp_path / "off.vqsl"
    slcodec.encode(x, sp, codec="vq", image_bias="sparse", image_bias_k=K, **TINY)
    slcodec.encode(x, off, codec="vq", image_bias="off", **TINY)
    with Container.open(sp) as c:
        assert c.preamble.minor == 7
        cfg = c.header["codec"]["config"]
        assert cfg["image_bias"] == "sparse" and cfg["image_bias_k"] == K
        assert "params/image_bias" not in c.sections
        assert c.read_array("params/image_prior_ids").shape == (I, K)
    with Container.open(off) as c:
        assert "image_bias_k" not in c.header["codec"]["config"] and c.preamble.minor < 7
    with slcodec.open(sp) as a, slcodec.open(off) as b:
        qa, qb = a.decode(None, as_="logits"), b.decode(None, as_="logits")
    want = torch.from_numpy(x.reshape(-1, C)).argmax(1)
    assert torch.equal(qa.reshape(-1, C).argmax(1), want)          # top-1 100% with the prior
    assert _kl(x, qa) < 0.7 * _kl(x, qb) and _kl(x, qa, 4) < 0.7 * _kl(x, qb, 4)
    assert cli_main(["verify", str(sp)]) == 0


def test_auto_decides_by_bits_per_label(tmp_path):
    x = _views(seed=2)
    slcodec.encode(x, tmp_path / "auto.vqsl", codec="vq", image_bias_k=K, **TINY)
    with Container.open(tmp_path / "auto.vqsl") as c:
        assert c.header["codec"]["config"]["image_bias"] == "sparse"
    codec = VQCodec(image_bias_k=K, **TINY)
    assert codec._auto_prior((I, A), C) == "sparse"
    assert codec._auto_prior((12, 160), 8) == "on"                        # exact table <= 1 bit per label
    assert codec._auto_prior((I * A,), C) == "off"                        # no images
    assert codec._auto_prior((I, 8), C) == "off"                          # 8 views: the list costs > 4 bits
    assert VQCodec(image_bias_k=17, **TINY)._auto_prior((I, A), C) == "off"   # k > C / 4: not a sparse list
    # the corpus of issue 16 (1,000 images x 300 views x 1,000 classes) gets it at the default k
    assert VQCodec()._auto_prior((1000, 300), 1000) == "sparse"
    assert sparse_prior_bits(1000, 300, 1000, 32) == pytest.approx((1000 * (32 * 24 + 16) + 16000) / 300000)
    assert VQCodec(image_bias_k=K).wants_image_means((I, A), C)


def test_writer_shards_and_fitted_codec_decode_alike(tmp_path):
    x = _views(seed=3)
    slcodec.encode(x, tmp_path / "one.vqsl", codec="vq", image_bias="sparse", image_bias_k=K, **TINY)
    slcodec.encode(x, tmp_path / "set.vqsl", codec="vq", image_bias="sparse", image_bias_k=K, shards=3, **TINY)
    with slcodec.open(tmp_path / "one.vqsl") as a, slcodec.open(tmp_path / "set.vqsl") as b:
        assert b.codec.get_config()["image_bias"] == "sparse"
        idx = np.random.default_rng(0).permutation(I * A)[:500]
        assert torch.equal(a.decode(idx, as_="logits"), b.decode(idx, as_="logits"))
    w = slcodec.Writer(tmp_path / "w.vqsl", codec="vq", classes=C, shape=[I, A], image_bias="sparse",
                       image_bias_k=K, **TINY)
    with pytest.raises(ConfigError, match="mean log-probabilities"):
        w.fit(x.reshape(-1, C)[:500])
    w.abort()


def _fitted():
    x = torch.from_numpy(_views(seed=5).reshape(-1, C))
    codec = VQCodec(image_bias="sparse", image_bias_k=K, **TINY)
    with RowReader(x.numpy()) as rr:
        codec.set_image_means(image_mean_log_probs(rr, [I, A], "logits"))
    codec.fit(x, Context(classes=C, label_shape=(I, A), rows=np.arange(I * A)))
    return codec, x


def test_encoder_codes_against_the_decoded_prior():
    codec, x = _fitted()
    rows = np.arange(1000, 1600)
    ctx = Context(classes=C, label_shape=(I, A), rows=rows)
    streams = {k: torch.as_tensor(v.astype(np.int64)) for k, v in codec.encode(x[rows], ctx).items()}
    reader = VQCodec.from_config(codec.get_config())
    reader.set_params(codec.get_params(), Context(classes=C, label_shape=(I, A)))
    z = reader.decode(streams, ctx)
    assert torch.equal(z, codec.decode(streams, ctx))
    assert torch.equal(z.argmax(1), x[rows].argmax(1))


def test_set_params_checks_the_sparse_prior():
    codec, _ = _fitted()
    good = codec.get_params()
    cfg = codec.get_config()
    ctx = Context(classes=C, label_shape=(I, A))
    VQCodec.from_config(cfg).set_params(good, ctx)
    ids = good["image_prior_ids"]

    def rejected(params, rule="codec-params", config=cfg, c=ctx):
        with pytest.raises(FormatError) as ei:
            VQCodec.from_config(config).set_params(params, c)
        assert ei.value.rule == rule

    big = ids.copy()
    big[0, -1] = C                                                       # class id out of range
    rejected(dict(good, image_prior_ids=big))
    dup = ids.copy()
    dup[1, 1] = dup[1, 0]                                                # the same class twice
    rejected(dict(good, image_prior_ids=dup))
    rejected(dict(good, image_prior_ids=ids[:, ::-1].copy()))             # out of order
    rejected(dict(good, image_prior_ids=ids.astype(np.uint32)))           # wrong dtype
    rejected(dict(good, image_prior_levels=good["image_prior_levels"][:-1]))   # one image short
    rejected(dict(good, image_prior_offset=good["image_prior_offset"][:-1]))
    rejected(dict(good, image_prior_profile=good["image_prior_profile"][:-1]))  # wrong number of classes
    for name in ("image_prior_offset", "image_prior_profile"):
        for bad in (np.nan, np.inf, 2e4):
            rejected(dict(good, **{name: np.full_like(good[name], bad)}))
    rejected({k: v for k, v in good.items() if k != "image_prior_levels"})       # one array missing
    rejected(dict(good, image_bias=np.zeros((I, C), np.float16)))                # and the exact table too
    rejected(good, c=Context(classes=C, label_shape=(I * A,)))                    # a flat set has no images
    rejected(good, rule="codec", config=dict(cfg, image_bias_k=C))               # k must be < C
    with pytest.raises(ConfigError):                                             # k only with sparse
        VQCodec.from_config(dict(cfg, image_bias="on"))


# --------------------------------------------------------------------------- hostile whole files
@pytest.mark.parametrize("case, rule", [
    ("id_out_of_range", "codec-params"), ("id_twice", "codec-params"), ("ids_short", "codec-params"),
    ("levels_wrong_count", "codec-params"), ("offset_nan", "codec-params"), ("profile_inf", "codec-params"),
    ("no_profile", "codec-params"), ("k_not_below_C", "codec"), ("k_without_sparse", "codec"),
    ("unknown_mode", "codec"), ("flat_labels", "codec-params")])
def test_hostile_v17_files_are_rejected(case, rule, tmp_path):
    with Container.open(GOLDEN_V17) as c:
        ids = c.read_array("params/image_prior_ids")
        levels = c.read_array("params/image_prior_levels")
        offset = c.read_array("params/image_prior_offset")
        profile = c.read_array("params/image_prior_profile")
        n_img, n_aug, classes = c.header["labels"]["shape"]
    big, dup = ids.copy(), ids.copy()
    big[2, -1] = classes
    dup[0, 3] = dup[0, 2]
    out = str(tmp_path / f"{case}.vqsl")
    kw = {"id_out_of_range": {"params": {"image_prior_ids": big}},
          "id_twice": {"params": {"image_prior_ids": dup}},
          "ids_short": {"params": {"image_prior_ids": ids[:, :-1].copy()}},
          "levels_wrong_count": {"params": {"image_prior_levels": levels[:-1]}},
          "offset_nan": {"params": {"image_prior_offset": np.full_like(offset, np.nan)}},
          "profile_inf": {"params": {"image_prior_profile": np.where(np.arange(classes) == 7, np.inf,
                                                                     profile).astype(profile.dtype)}},
          "no_profile": {"params": {"image_prior_profile": None}},
          "k_not_below_C": {"config": {"image_bias_k": classes}},
          "k_without_sparse": {"config": {"image_bias": "on"}},
          "unknown_mode": {"config": {"image_bias": "dense"}},
          "flat_labels": {"shape": [n_img * n_aug, classes]}}[case]
    rewrite_file(GOLDEN_V17, out, minor=7, **kw)
    assert_rejected(out, rule)
    # the fuzzer's independent checker (written from FORMAT.md) flags the same rule
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from fuzz_check import violations
    found = violations({os.path.basename(out): open(out, "rb").read()}, os.path.basename(out))
    assert found and all(v.startswith(rule + ":") for v in found), found


def test_rewrite_without_edits_decodes_like_the_golden_file(tmp_path):
    out = str(tmp_path / "same.vqsl")
    rewrite_file(GOLDEN_V17, out, minor=7)
    with slcodec.open(out) as a, slcodec.open(GOLDEN_V17) as b:
        assert torch.equal(a.decode(None), b.decode(None))
