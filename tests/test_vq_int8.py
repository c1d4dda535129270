"""vq with int8 parameters (format 1.5): weights and codebooks as int8 with one float32 scale per
output channel, biases float16; ``param_dtype="auto"`` picks int8 when it keeps the fit sample's
mean KL at T = 1 and T = 4 within 2% of float16's."""
import dataclasses
import os
import warnings

import numpy as np
import pytest
import torch

import slcodec
from slcodec.codecs.base import Context
from slcodec.codecs.rules import Choice
from slcodec.codecs.vq import VQCodec
from slcodec.codecs.vq import fit as vq_fit
from slcodec.codecs.vq.quant import CLIP_RATIOS, dequantise, quantise, with_scales
from slcodec.errors import ConfigError, FormatError
from slcodec.format.container import Container

from craft import assert_rejected, rewrite_file

ROOT = os.path.join(os.path.dirname(__file__), "..")
GOLDEN_INT8 = os.path.join(ROOT, "spec", "golden", "v1.5-vq-int8-logits.vqsl")
FIXTURE = os.path.join(ROOT, "slcodec", "data", "lite0_8x64_fp16.npy")
#: the golden file's config: a tiny vq fitted in a few seconds
TINY = {"codes": 2, "codebook_size": 16, "code_dim": 4, "hidden": 32, "steps": 60, "train_batch": 64}


def _labels():
    return np.load(FIXTURE)[:4, :16]          # [4 images, 16 views, 1000] FP16 logits of a real teacher


def _kl(x, z, T):
    p = torch.log_softmax(torch.as_tensor(x, dtype=torch.float32).reshape(-1, x.shape[-1]) / T, 1)
    q = torch.log_softmax(torch.as_tensor(z, dtype=torch.float32).reshape(p.shape) / T, 1)
    return float((p.exp() * (p - q)).sum(1).mean())


def _params(path):
    with Container.open(path) as c:
        return {n[7:]: c.read_array(n) for n in c.sections if n.startswith("params/")}


# --------------------------------------------------------------------------- the quantiser
def test_quantiser_layout_error_bound_and_clipping():
    g = np.random.default_rng(0)
    w = g.laplace(size=(4096, 40)).astype(np.float32)   # heavy tails: clipping the largest values pays a little
    w[:, 3] = 0.0                                         # an all-zero channel: scale 1, codes 0
    f32 = {"codebooks": g.standard_normal((2, 16, 4)).astype(np.float32), "w_in": w[:8],
           "b_in": g.standard_normal(40).astype(np.float32), "w_out": w, "b_out": np.zeros(40, np.float32)}
    for clip in (False, True):
        q = quantise(f32, clip=clip)
        shapes = with_scales({k: v.shape for k, v in f32.items()})
        assert {k: v.shape for k, v in q.items()} == shapes
        assert q["w_out"].dtype == np.int8 and q["w_out_scale"].dtype == np.float32
        assert q["b_in"].dtype == np.float16 and q["codebooks_scale"].shape == (2, 4)
        assert int(np.abs(q["w_out"].astype(np.int16)).max()) <= 127
        assert (q["w_out_scale"] > 0).all() and q["w_out_scale"][3] == 1 and not q["w_out"][:, 3].any()
        d = dequantise(q)
        assert set(d) == set(f32) and all(v.dtype == np.float32 for v in d.values())
        # dequantising is float32(q) * scale of the output channel, exactly
        assert np.array_equal(d["w_out"], q["w_out"].astype(np.float32) * q["w_out_scale"])
        assert np.array_equal(d["codebooks"], q["codebooks"].astype(np.float32) * q["codebooks_scale"][:, None, :])
        if not clip:   # round to nearest on max |w|: every value within half a step
            assert (np.abs(d["w_out"] - w) <= q["w_out_scale"] / 2 * (1 + 1e-6)).all()
            plain = d
    err = lambda d: ((d["w_out"] - w) ** 2).sum(0)
    clipped = dequantise(quantise(f32, clip=True))
    assert (err(clipped) <= err(plain) * (1 + 1e-6)).all()    # the search includes ratio 1.0
    assert err(clipped).sum() < 0.995 * err(plain).sum()       # and pays on heavy-tailed channels
    assert CLIP_RATIOS[0] == 1.0


# --------------------------------------------------------------------------- round trip
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The same tiny fit written with float16 and int8 parameters (the fit is deterministic and
    the weights are quantised after it, so both files hold the same fitted decoder)."""
    d = tmp_path_factory.mktemp("int8")
    x = _labels()
    out = {}
    for pd in ("float16", "int8", "auto"):
        p = str(d / f"{pd}.vqsl")
        slcodec.encode(x, p, codec="vq", seed=0, param_dtype=pd, **TINY)
        out[pd] = p
    return x, out


def test_int8_round_trip_top1_size_and_fidelity(fitted):
    x, files = fitted
    with Container.open(files["int8"]) as c:
        assert c.preamble.minor == 5 and c.header["codec"]["config"]["param_dtype"] == "int8"
    with Container.open(files["float16"]) as c:
        assert c.preamble.minor == 0 and c.header["codec"]["config"]["param_dtype"] == "float16"
    p8, p16 = _params(files["int8"]), _params(files["float16"])
    assert p8["w_out"].dtype == np.int8 and p8["b_out"].dtype == np.float16
    assert set(p8) == set(with_scales({k: v.shape for k, v in p16.items()}))
    fixed8, fixed16 = sum(a.nbytes for a in p8.values()), sum(a.nbytes for a in p16.values())
    # one byte per weight, 4 per scale, 2 per bias (at C = 1000, H = 32 the output layer's 1,000
    # scales and biases are a sixth of the int8 file's fixed part)
    assert fixed8 == sum(a.size * (1 if k.startswith(("w_", "codebooks")) and not k.endswith("_scale")
                                   else 4 if k.endswith("_scale") else 2) for k, a in p8.items())
    assert fixed8 < 0.6 * fixed16
    assert os.path.getsize(files["int8"]) < os.path.getsize(files["float16"]) - 0.4 * fixed16
    ref = x.reshape(-1, x.shape[-1]).astype(np.float32)
    kl = {}
    for pd in ("float16", "int8"):
        with slcodec.open(files[pd]) as r:
            z = r.decode(None, as_="logits").numpy().reshape(ref.shape)
        assert np.array_equal(z.argmax(1), ref.argmax(1))          # top-1 agreement 100%
        kl[pd] = [_kl(ref, z, T) for T in (1.0, 4.0)]
    for a, b in zip(kl["int8"], kl["float16"]):
        assert a <= 1.05 * b


def test_int8_decoder_in_memory_is_the_readers():
    """The encoder computed the top1 stream with the decoder the file stores: the fitted codec's
    float32 weights are the dequantised stored arrays, bit for bit."""
    x = _labels().reshape(-1, 1000)
    codec = VQCodec(param_dtype="int8", **TINY)
    codec.fit(x, Context(classes=1000, seed=0))
    stored = codec.get_params()
    want = dequantise(stored)
    got = {k: v.numpy() for k, v in codec._dec.t.items()}
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)


def test_top1_survives_near_ties(tmp_path):
    """Labels whose two best classes are 1e-3 nats apart: int8 weights move the decoded logits
    by far more than that, and the argmax still holds on every label (the top1 stream was
    computed with the int8 decoder)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(512, 12, generator=g) * 2
    top2 = x.topk(2, dim=1)
    x.scatter_(1, top2.indices[:, 1:], top2.values[:, :1] - 1e-3)
    p = str(tmp_path / "ties.vqsl")
    slcodec.encode(x.numpy(), p, codec="vq", seed=0, param_dtype="int8", codes=1, codebook_size=16, code_dim=4,
                   hidden=16, decoder_layers=0, steps=80, train_batch=128)
    with slcodec.open(p) as r:
        z = r.decode(None, as_="logits")
    assert torch.equal(z.argmax(1), x.argmax(1))


# --------------------------------------------------------------------------- auto
def test_auto_picks_int8_within_two_percent_and_records_why(fitted):
    _, files = fitted
    with Container.open(files["auto"]) as c:
        cfg, info = c.header["codec"]["config"], c.header["codec"]["info"]
        assert c.preamble.minor == 5
    ch = info["param_dtype_choice"]
    assert cfg["param_dtype"] == info["param_dtype"] == ch["chosen"] == "int8"
    assert ch["temperatures"] == [1.0, 4.0] and ch["rows"] == 64
    assert all(a <= 1.02 * b for a, b in zip(ch["kl_int8"], ch["kl_float16"]))
    with slcodec.open(files["auto"]) as a, slcodec.open(files["int8"]) as b:
        assert torch.equal(a.decode(None), b.decode(None))       # auto's int8 is the int8 file


def test_auto_falls_back_to_float16_when_int8_costs_fidelity():
    """A decoder that int8 ruins: three codes 1e-3 apart on one codebook coordinate (amplified
    1000x by w_in into distinct logits) beside an unused entry at 100, so one scale per channel
    rounds the three to the same value.  Labels are the float16 decoder's outputs plus noise."""
    codec = VQCodec(codes=1, codebook_size=4, code_dim=1, hidden=1, decoder_layers=0, param_dtype="auto")
    f32 = {"codebooks": np.array([[[0.0], [1e-3], [2e-3], [100.0]]], np.float32),
           "w_in": np.array([[1000.0]], np.float32), "b_in": np.zeros(1, np.float32),
           "w_out": np.array([[1.0, -1.0, 0.5, 0.0]], np.float32), "b_out": np.zeros(4, np.float32)}
    idx = torch.tensor([[0], [1], [2]] * 10)
    from slcodec.codecs.vq.networks import _Decoder, _lookup
    dec = _Decoder({k: torch.from_numpy(v.astype(np.float16).astype(np.float32)) for k, v in f32.items()})
    x = dec.forward(_lookup(dec.t["codebooks"], idx).reshape(30, 1))
    x = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))

    @dataclasses.dataclass
    class Sample:     # what choose_param_dtype reads of a fit (vq.fit._Trainer)
        x: torch.Tensor
        n: int = 30
        dev: torch.device = torch.device("cpu")
        b_all: torch.Tensor = None

        @property
        def cls_all(self):
            return self.x.argmax(1)

    ch = vq_fit.choose_param_dtype(codec, f32, Sample(x), idx)
    assert ch["chosen"] == "float16"
    assert ch["kl_int8"][0] > 1.5 * ch["kl_float16"][0] > 0
    # the same decoder without the outlier entry quantises well: int8
    f32["codebooks"][0, 3, 0] = 3e-3
    assert vq_fit.choose_param_dtype(codec, f32, Sample(x), idx)["chosen"] == "int8"


def test_auto_float16_writes_the_float16_file(tmp_path, monkeypatch):
    """When auto decides float16 (here: a ratio no int8 decoder meets), the file is the
    param_dtype=float16 file: same params, same streams, format 1.0."""
    monkeypatch.setattr(vq_fit, "INT8_MAX_KL_RATIO", 0.5)
    x = _labels()[:2]
    for pd in ("auto", "float16"):
        slcodec.encode(x, str(tmp_path / f"{pd}.vqsl"), codec="vq", seed=0, param_dtype=pd, **TINY)
    with Container.open(str(tmp_path / "auto.vqsl")) as c:
        assert c.preamble.minor == 0 and c.header["codec"]["config"]["param_dtype"] == "float16"
        assert c.header["codec"]["info"]["param_dtype_choice"]["chosen"] == "float16"
    a, b = _params(str(tmp_path / "auto.vqsl")), _params(str(tmp_path / "float16.vqsl"))
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    with slcodec.open(str(tmp_path / "auto.vqsl")) as ra, slcodec.open(str(tmp_path / "float16.vqsl")) as rb:
        assert torch.equal(ra.decode(None), rb.decode(None))


# --------------------------------------------------------------------------- versions
def test_a_minor_4_reader_rejects_the_int8_file(monkeypatch):
    """Config-versioned feature: a reader whose param_dtype rule knows only float16/float32 (every
    reader before format 1.5) rejects the int8 golden file by rule `codec`."""
    old = tuple(dataclasses.replace(o, rule=Choice(("float16", "float32")), choices=("float16", "float32"), default="float16")
                if o.name == "param_dtype" else o for o in VQCodec.options)
    monkeypatch.setattr(VQCodec, "options", old)
    with pytest.raises(FormatError) as ei:
        with slcodec.open(GOLDEN_INT8) as r:
            r.decode(None)
    assert ei.value.rule == "codec"


def test_stored_auto_is_rejected_and_old_configs_mean_float16():
    with Container.open(GOLDEN_INT8) as c:
        cfg = dict(c.header["codec"]["config"])
    with pytest.raises(ConfigError):
        VQCodec.from_config(dict(cfg, param_dtype="auto"))
    cfg.pop("param_dtype")
    assert VQCodec.from_config(cfg).config["param_dtype"] == "float16"


# --------------------------------------------------------------------------- hostile files
def _hostile(case):
    p = _params(GOLDEN_INT8)
    s = p["w_out_scale"].copy()
    edits = {
        "scale_nan": {"w_out_scale": np.where(np.arange(s.size) == 3, np.float32(np.nan), s).astype(np.float32)},
        "scale_inf": {"w_in_scale": np.full_like(p["w_in_scale"], np.inf)},
        "scale_zero": {"w_out_scale": np.where(np.arange(s.size) == 0, np.float32(0), s).astype(np.float32)},
        "scale_negative": {"codebooks_scale": -p["codebooks_scale"]},
        # finite, but int8 x scale overflows float32: caught by the logit bound, not a numpy warning
        "scale_huge": {"w_out_scale": np.full_like(s, np.float32(3e38))},
        "scale_short": {"w_out_scale": s[:-1]},
        "scale_2d": {"w_out_scale": s.reshape(1, -1)},
        "scale_float16": {"w_out_scale": s.astype(np.float16)},
        "scale_missing": {"w_h0_scale": None},
        "int8_short": {"w_out": p["w_out"][:-1]},
        "int8_long": {"w_h0": np.concatenate([p["w_h0"], p["w_h0"][:1]])},
        "weight_float16": {"w_in": p["w_in"].astype(np.float16)},
        "bias_int8": {"b_out": p["b_out"].astype(np.int8)},
        "bias_scale": {"b_out_scale": np.ones_like(p["b_out"], dtype=np.float32)},
    }
    return edits[case]


@pytest.mark.parametrize("case", ["scale_nan", "scale_inf", "scale_zero", "scale_negative", "scale_huge", "scale_short", "scale_2d",
                                  "scale_float16", "scale_missing", "int8_short", "int8_long", "weight_float16",
                                  "bias_int8", "bias_scale"])
def test_hostile_int8_files_are_rejected(case, tmp_path):
    out = str(tmp_path / f"{case}.vqsl")
    rewrite_file(GOLDEN_INT8, out, params=_hostile(case), minor=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a hostile file gets a rule, never a RuntimeWarning on stderr
        assert_rejected(out, "codec-params")


@pytest.mark.parametrize("case, config, rule", [
    ("stored_auto", {"param_dtype": "auto"}, "codec"),
    ("said_float16", {"param_dtype": "float16"}, "codec-params"),    # int8 arrays under a float16 config
    ("unknown_dtype", {"param_dtype": "int4"}, "codec")])
def test_int8_file_with_another_param_dtype_is_rejected(case, config, rule, tmp_path):
    out = str(tmp_path / f"{case}.vqsl")
    rewrite_file(GOLDEN_INT8, out, config=config, minor=5)
    assert_rejected(out, rule)


def test_float16_file_with_scales_is_rejected(tmp_path):
    """A scale array beside float16 weights (a file that is not int8): not a parameter of the config."""
    golden16 = os.path.join(ROOT, "spec", "golden", "v1.0-vq-tiny-logits.vqsl")
    p = _params(golden16)
    out = str(tmp_path / "scale16.vqsl")
    rewrite_file(golden16, out, params={"w_out_scale": np.ones(p["w_out"].shape[1], np.float32)}, minor=0)
    assert_rejected(out, "codec-params")


def test_rewrite_without_edits_decodes_like_the_golden_file(tmp_path):
    out = str(tmp_path / "same.vqsl")
    rewrite_file(GOLDEN_INT8, out, minor=5)
    with slcodec.open(out) as a, slcodec.open(GOLDEN_INT8) as b:
        assert torch.equal(a.decode(None), b.decode(None))
