"""vq's per-view residual (format 1.8): the residual_k classes the decoder gets most wrong, each a
uint8 step from the decoder's log-probabilities, plus one tail step, on the committed real fixture."""
import os

import numpy as np
import pytest
import torch

import slcodec
from slcodec.codecs.residual import decode_logits
from slcodec.codecs.vq import VQCodec
from slcodec.errors import ConfigError, FormatError
from slcodec.format import rules
from slcodec.format.container import Container
from slcodec.pipeline.writer import Writer

from conftest import FIXTURE
from craft import assert_rejected, rewrite_file

TINY = {"codes": 2, "codebook_size": 16, "code_dim": 4, "hidden": 32, "decoder_layers": 0, "steps": 60,
        "train_batch": 64, "image_bias": "off"}
GOLDEN_V18 = os.path.join(os.path.dirname(__file__), "..", "spec", "golden", "v1.8-vq-residual-logits.vqsl")


def _labels():
    return np.load(FIXTURE)[:4, :32].astype(np.float32)      # [4, 32, 1000]: 128 real labels


def _kl(x, q, T=1.0):
    p = torch.log_softmax(torch.from_numpy(x).reshape(-1, x.shape[-1]) / T, 1).double()
    lq = torch.log_softmax(q.reshape(p.shape).double() / T, 1)
    return float((p.exp() * (p - lq)).sum(1).mean())


def _write_pair(tmp_path, k=3, **extra):
    """One fit, two files: the plain vq and the same fitted codec with a residual of k classes."""
    x = _labels()
    paths = []
    with Writer(tmp_path / "plain.vqsl", "vq", classes=1000, shape=[4, 32], seed=0, **TINY, **extra) as w:
        w.fit(x.reshape(-1, 1000))
        w.append(x.reshape(-1, 1000))
        fitted = w.codec
    paths.append(tmp_path / "plain.vqsl")
    with Writer(tmp_path / "res.vqsl", "vq", classes=1000, shape=[4, 32], seed=0, residual_k=k, **TINY,
                **extra) as w:
        w.use_fitted(fitted.with_options(residual_k=k))
        w.append(x.reshape(-1, 1000))
    paths.append(tmp_path / "res.vqsl")
    return x, paths


def test_residual_lowers_kl_keeps_top1_and_is_stored_only_when_used(tmp_path):
    x, (plain, res) = _write_pair(tmp_path)
    with slcodec.open(plain) as r:
        q0 = r.decode(None, as_="logits")
        cfg0 = r.header["codec"]["config"]
    with slcodec.open(res) as r:
        q1 = r.decode(None, as_="logits")
        cfg1 = r.header["codec"]["config"]
        streams = {s["name"] for s in r.header["sections"]}
    assert "residual_k" not in cfg0 and "residual_step" not in cfg0
    assert cfg1["residual_k"] == 3 and cfg1["residual_step"] == 0.25
    assert {"streams/residual_ids", "streams/residual_levels", "streams/residual_tail"} <= streams
    with Container.open(res) as c:
        assert c.preamble.minor == 8
    kl0, kl1 = _kl(x, q0), _kl(x, q1)
    assert kl1 < 0.8 * kl0, (kl0, kl1)
    assert _kl(x, q1, 4.0) < _kl(x, q0, 4.0)
    teacher = x.reshape(-1, 1000).argmax(1)
    assert (q0.reshape(-1, 1000).argmax(1).numpy() == teacher).all()
    assert (q1.reshape(-1, 1000).argmax(1).numpy() == teacher).all()
    assert os.path.getsize(res) > os.path.getsize(plain)


def test_decode_is_the_rule_of_format_md(tmp_path):
    """Decoded logits = the plain decoder's logits, log-softmaxed, plus the stored steps (tail on
    every class, then the stored classes' own), then the top-1 lift: recomputed here from the raw
    streams and the plain file's decoder output before its top-1 fix."""
    x, (plain, res) = _write_pair(tmp_path, k=2)
    with Container.open(res) as c:
        raw = {n: c.stream("streams/" + n).read_rows(0, 128)
               for n in ("residual_ids", "residual_levels", "residual_tail", "top1", "codes")}
    ids = raw["residual_ids"].astype(np.int64)
    lev = raw["residual_levels"].astype(np.float32) - 127
    tail = raw["residual_tail"].astype(np.float32) - 127
    top1, codes = raw["top1"].reshape(-1), raw["codes"]
    assert ids.shape == (128, 2) and (np.diff(ids, axis=1) > 0).all() and ids.max() < 1000
    assert lev.max() <= 127 and lev.min() >= -127
    with slcodec.open(res) as r:
        vq = r.codec
        got = r.decode(None, as_="logits").reshape(-1, 1000)
    with torch.no_grad():
        z = vq._fast_for(torch.device("cpu"))(torch.from_numpy(codes.astype(np.int64)))
        want = decode_logits(torch.log_softmax(z, 1), torch.from_numpy(ids), torch.from_numpy(lev),
                             torch.from_numpy(tail), 0.25)
    from slcodec.codecs.vq.top1 import lift_reference
    want = lift_reference(want.numpy(), top1, vq.config["margin"])
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)


def test_with_options_shares_the_fit_and_refuses_fit_options():
    c = VQCodec(**TINY)
    x = torch.from_numpy(_labels().reshape(-1, 1000))
    from slcodec.codecs.base import Context
    c.fit(x, Context(source_kind="logits", classes=1000))
    twin = c.with_options(residual_k=4, residual_step=0.5)
    assert twin.config["residual_k"] == 4 and c.config["residual_k"] == 0
    assert twin.get_params().keys() == c.get_params().keys()
    assert all(np.array_equal(twin.get_params()[k], v) for k, v in c.get_params().items())
    with pytest.raises(ConfigError, match="changes the fit"):
        c.with_options(bits=8)
    with pytest.raises(ConfigError):
        c.with_options(residual_step=-1.0)
    with pytest.raises(ConfigError, match="smaller than the number of classes"):
        c.with_options(residual_k=1000).stream_specs(1000)


def test_stored_config_rules():
    cfg = dict(VQCodec(**TINY, residual_k=2).get_config(), param_dtype="float16")
    assert VQCodec.from_config(cfg).config["residual_k"] == 2
    with pytest.raises(ConfigError, match="only with a residual"):
        VQCodec.from_config(dict(cfg, residual_k=0))
    no_k = {k: v for k, v in cfg.items() if k != "residual_k"}
    with pytest.raises(ConfigError, match="only with a residual"):
        VQCodec.from_config(no_k)
    plain = {k: v for k, v in cfg.items() if k not in ("residual_k", "residual_step")}
    assert VQCodec.from_config(plain).config["residual_k"] == 0


def _bad_file(tmp_path, name, corrupt):
    """A file whose residual streams the encoder hands over corrupted (valid container, CRCs)."""
    x = _labels()
    out = tmp_path / name
    real = VQCodec.encode

    def encode(self, labels, ctx):
        streams = real(self, labels, ctx)
        corrupt(streams)
        return streams
    VQCodec.encode = encode
    try:
        slcodec.encode(x, out, codec="vq", residual_k=3, seed=0, **TINY)
    finally:
        VQCodec.encode = real
    return out


@pytest.mark.parametrize("name,corrupt", [
    ("id_out_of_range.vqsl", lambda s: s["residual_ids"].__setitem__((5, 0), 1000)),
    ("id_twice.vqsl", lambda s: s["residual_ids"].__setitem__((7, 1), s["residual_ids"][7, 0])),
    ("level_255.vqsl", lambda s: s["residual_levels"].__setitem__((3, 2), 255)),
    ("tail_255.vqsl", lambda s: s["residual_tail"].__setitem__((0, 0), 255)),
])
def test_hostile_residual_streams_are_rejected(tmp_path, name, corrupt):
    assert_rejected(_bad_file(tmp_path, name, corrupt), rules.CODEC_STREAMS)


def test_hostile_residual_config_is_rejected(tmp_path):
    _, (_, res) = _write_pair(tmp_path, k=3)
    out = str(tmp_path / "k_too_big.vqsl")
    rewrite_file(str(res), out, config={"residual_k": 1000}, minor=8)
    with pytest.raises(FormatError) as ei:
        with slcodec.open(out) as r:
            r.decode(None)
    assert ei.value.rule == rules.CODEC
    out2 = str(tmp_path / "k_zero.vqsl")
    rewrite_file(str(res), out2, config={"residual_k": 0}, minor=8)
    with pytest.raises(FormatError):
        with slcodec.open(out2) as r:
            r.decode(None)


def test_golden_v18_decodes_with_the_residual():
    with slcodec.open(GOLDEN_V18) as r:
        assert r.header["codec"]["config"]["residual_k"] == 4
        q = r.decode(None, as_="logits")
    assert torch.isfinite(q).all()
