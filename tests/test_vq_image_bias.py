"""vq's image_bias (format 1.2): a per-image prior [images, C] added to the decoded logits."""
import os

import numpy as np
import pytest
import torch

import slcodec
from slcodec.codecs.base import Context
from slcodec.codecs.vq import VQCodec
from slcodec.format.container import FLAG_RANS_STREAMS, Container
from slcodec.errors import ConfigError, FormatError
from slcodec.pipeline.rows import RowReader
from slcodec.pipeline.statistics import image_mean_log_probs

from craft import assert_rejected, rewrite_file

TINY = {"codes": 1, "codebook_size": 8, "code_dim": 4, "hidden": 16, "decoder_layers": 0, "steps": 80,
        "train_batch": 128, "param_dtype": "float16"}   # the format-1.2 feature alone (int8 is format 1.5)
I, A, C = 12, 160, 8          # 16 * C / A = 0.8 bits per label: image_bias "auto" turns on


def _views(seed=0, images=I, augs=A, classes=C):
    """Labels with strong per-image structure: an image's mean logits plus small per-view noise."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(images, 1, classes, generator=g) * 3.0
    return (mean + 0.5 * torch.randn(images, augs, classes, generator=g)).numpy()


def _kl(x, q):
    p = torch.log_softmax(torch.from_numpy(x).reshape(-1, x.shape[-1]), 1)
    return float((p.exp() * (p - q.reshape(p.shape))).sum(1).mean())


def test_auto_turns_on_for_image_sets_and_improves_fidelity(tmp_path):
    x = _views()
    on, off = tmp_path / "on.vqsl", tmp_path / "off.vqsl"
    slcodec.encode(x, on, codec="vq", **TINY)                       # auto
    slcodec.encode(x, off, codec="vq", image_bias="off", **TINY)
    with Container.open(on) as c:
        # 1.2, or 1.6 when a stream is rans-coded (format 1.6: the minor is the newest feature used)
        assert c.preamble.minor == (6 if c.preamble.required_flags & FLAG_RANS_STREAMS else 2)
        assert c.header["codec"]["config"]["image_bias"] == "on"
        assert c.read_array("params/image_bias").shape == (I, C)
    with Container.open(off) as c:
        assert c.preamble.minor == (6 if c.preamble.required_flags & FLAG_RANS_STREAMS else 0)
        assert "image_bias" not in c.header["codec"]["config"]      # files without it are 1.0 files
        assert "params/image_bias" not in c.sections
    with slcodec.open(on) as r_on, slcodec.open(off) as r_off:
        q_on, q_off = r_on.decode(None, as_="log_probs"), r_off.decode(None, as_="log_probs")
        assert torch.equal(q_on.reshape(-1, C).argmax(1), torch.from_numpy(x.reshape(-1, C)).argmax(1))
        # 8 codes cannot tell 12 images apart; the prior can
        assert _kl(x, q_on) < 0.5 * _kl(x, q_off)
        # random access (and (image, aug) pairs) gives the rows of a whole decode
        idx = np.array([0, 5, A * 7 + 3, I * A - 1, A])
        assert torch.equal(r_on.decode(idx, as_="logits"), r_on.decode(None, as_="logits").reshape(-1, C)[idx])
        assert torch.equal(r_on.decode((7, 3), as_="logits"), r_on.decode(A * 7 + 3, as_="logits"))


def test_auto_stays_off_when_the_table_costs_more_than_a_bit_per_label(tmp_path):
    x = _views(augs=64)                                              # 16 * 8 / 64 = 2 bits
    slcodec.encode(x, tmp_path / "a.vqsl", codec="vq", **TINY)
    slcodec.encode(x.reshape(-1, C), tmp_path / "flat.vqsl", codec="vq", **TINY)
    for name in ("a.vqsl", "flat.vqsl"):
        with Container.open(tmp_path / name) as c:
            assert "image_bias" not in c.header["codec"]["config"]


def test_on_needs_an_image_axis(tmp_path):
    with pytest.raises(ConfigError, match="image_bias"):
        slcodec.encode(_views().reshape(-1, C), tmp_path / "x.vqsl", codec="vq", image_bias="on", **TINY)
    assert not (tmp_path / "x.vqsl").exists()


def test_writer_needs_means_for_on_and_matches_encode(tmp_path):
    x = _views(seed=3)
    w = slcodec.Writer(tmp_path / "w.vqsl", codec="vq", classes=C, shape=[I, A], image_bias="on", **TINY)
    with pytest.raises(ConfigError, match="set_image_means"):
        w.append(x.reshape(-1, C))
        w.close()
    # with the means the streaming writer writes what slcodec.encode writes
    rows = x.reshape(-1, C)
    with RowReader(rows) as rr:
        means = image_mean_log_probs(rr, [I, A], "logits", block_rows=100)
    np.testing.assert_allclose(means, torch.log_softmax(torch.from_numpy(x).double(), -1).mean(1).numpy(),
                               atol=1e-6)
    w = slcodec.Writer(tmp_path / "w.vqsl", codec="vq", classes=C, shape=[I, A], image_bias="on", **TINY)
    w.set_image_means(means)
    w.fit(rows, rows=np.arange(len(rows)))
    for s in range(0, len(rows), 500):
        w.append(rows[s:s + 500])
    w.close()
    slcodec.encode(x, tmp_path / "e.vqsl", codec="vq", image_bias="on", **TINY)
    with slcodec.open(tmp_path / "w.vqsl") as a, slcodec.open(tmp_path / "e.vqsl") as b:
        assert torch.equal(a.decode(None, as_="logits"), b.decode(None, as_="logits"))


def test_sharded_set_decodes_like_one_file(tmp_path):
    x = _views(seed=4)
    slcodec.encode(x, tmp_path / "one.vqsl", codec="vq", **TINY)
    slcodec.encode(x, tmp_path / "set.vqsl", codec="vq", shards=3, **TINY)
    with slcodec.open(tmp_path / "one.vqsl") as a, slcodec.open(tmp_path / "set.vqsl") as b:
        assert b.codec.get_config()["image_bias"] == "on"
        idx = np.random.default_rng(0).permutation(I * A)[:500]
        assert torch.equal(a.decode(idx, as_="logits"), b.decode(idx, as_="logits"))


def _fitted():
    x = torch.from_numpy(_views(seed=5).reshape(-1, C))
    codec = VQCodec(image_bias="on", **TINY)
    with RowReader(x.numpy()) as rr:
        codec.set_image_means(image_mean_log_probs(rr, [I, A], "logits"))
    codec.fit(x, Context(classes=C, label_shape=(I, A), rows=np.arange(I * A)))
    return codec, x


def test_set_params_checks_the_table():
    codec, _ = _fitted()
    good = codec.get_params()
    assert good["image_bias"].shape == (I, C) and good["image_bias"].dtype == np.float16
    cfg = codec.get_config()
    ctx = Context(classes=C, label_shape=(I, A))
    VQCodec.from_config(cfg).set_params(good, ctx)
    bad = dict(good, image_bias=good["image_bias"][:-1])                  # one image short
    with pytest.raises(FormatError) as ei:
        VQCodec.from_config(cfg).set_params(bad, ctx)
    assert ei.value.rule == "codec-params"
    missing = {k: v for k, v in good.items() if k != "image_bias"}
    with pytest.raises(FormatError) as ei:
        VQCodec.from_config(cfg).set_params(missing, ctx)
    assert ei.value.rule == "codec-params"
    with pytest.raises(FormatError) as ei:                                 # a flat set has no images
        VQCodec.from_config(cfg).set_params(good, Context(classes=C, label_shape=(I * A,)))
    assert ei.value.rule == "codec-params"
    nan = dict(good, image_bias=np.full_like(good["image_bias"], np.nan))
    with pytest.raises(FormatError):
        VQCodec.from_config(cfg).set_params(nan, ctx)
    off = dict(cfg)
    off.pop("image_bias")                                                  # the table without the config
    with pytest.raises(FormatError) as ei:
        VQCodec.from_config(off).set_params(good, ctx)
    assert ei.value.rule == "codec-params"
    with pytest.raises(ConfigError):                                       # "auto" is never stored
        VQCodec.from_config(dict(cfg, image_bias="auto"))


def test_decode_needs_the_label_indices():
    codec, x = _fitted()
    ctx = Context(classes=C, label_shape=(I, A), rows=np.arange(100, 164))
    streams = {k: torch.as_tensor(v.astype(np.int64)) for k, v in codec.encode(x[100:164], ctx).items()}
    z = codec.decode(streams, ctx)
    assert torch.equal(z.argmax(1), x[100:164].argmax(1))
    with pytest.raises(ConfigError, match="indices"):
        codec.decode(streams, Context(classes=C, label_shape=(I, A)))
    with pytest.raises(FormatError):
        codec.decode(streams, Context(classes=C, label_shape=(I, A), rows=np.arange(64) + I * A))


# --------------------------------------------------------------------------- hostile whole files
GOLDEN_V12 = os.path.join(os.path.dirname(__file__), "..", "spec", "golden", "v1.2-vq-image-bias-logits.vqsl")


def _rewrite(out, params=None, config=None, shape=None):
    """The v1.2 golden file rewritten with valid checksums and edited params / config / shape."""
    rewrite_file(GOLDEN_V12, out, params=params, config=config, shape=shape, minor=2)


@pytest.mark.parametrize("case, rule", [
    ("short_table", "codec-params"), ("no_table", "codec-params"), ("flat_labels", "codec-params"),
    ("stored_auto", "codec"), ("unknown_key", "codec")])
def test_hostile_v12_files_are_rejected(case, rule, tmp_path):
    with Container.open(GOLDEN_V12) as c:
        table = c.read_array("params/image_bias")
        n_img, n_aug, classes = c.header["labels"]["shape"]
    out = str(tmp_path / f"{case}.vqsl")
    kw = {"short_table": {"params": {"image_bias": table[:-1]}},
          "no_table": {"params": {"image_bias": None}},
          "flat_labels": {"shape": [n_img * n_aug, classes]},
          "stored_auto": {"config": {"image_bias": "auto"}},
          "unknown_key": {"config": {"image_prior_v2": True}}}[case]
    _rewrite(out, **kw)
    assert_rejected(out, rule)


def test_rewrite_without_edits_decodes_like_the_golden_file(tmp_path):
    out = str(tmp_path / "same.vqsl")
    _rewrite(out)
    with slcodec.open(out) as a, slcodec.open(GOLDEN_V12) as b:
        assert torch.equal(a.decode(None), b.decode(None))


def test_masked_logits_and_row_checks(tmp_path):
    x = _views(seed=6)
    x[:, :, 0] = -1e5                                   # a masked class: log-prob -1e5 < float16 range
    slcodec.encode(x, tmp_path / "m.vqsl", codec="vq", **TINY)
    with slcodec.open(tmp_path / "m.vqsl") as r:
        q = r.decode(None, as_="probs")
        assert r.codec.get_config()["image_bias"] == "on" and bool(torch.isfinite(q).all())
    w = slcodec.Writer(tmp_path / "w.vqsl", codec="vq", classes=C, shape=[I, A], **TINY)
    with pytest.raises(ConfigError, match="row indices"):
        w.fit(x.reshape(-1, C)[:10], rows=np.arange(10) - 1)
    w = slcodec.Writer(tmp_path / "w.vqsl", codec="vq", classes=C, shape=[I, A], **TINY)
    with pytest.raises(ConfigError, match="row indices"):
        w.fit(x.reshape(-1, C)[:10], rows=np.arange(10) + I * A)
