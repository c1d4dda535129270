"""The simple codecs: fp32/fp16 are bit-exact, topk is FKD's definition."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import slcodec
from slcodec.codecs import Context, get_codec_class
from slcodec.errors import ConfigError

shapes = st.one_of(
    st.tuples(st.integers(1, 40), st.integers(2, 50)),
    st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(2, 30)),
)


@given(data=st.data(), dtype=st.sampled_from([np.float16, np.float32]), shape=shapes)
def test_lossless_round_trip_bit_exact(data, dtype, shape):
    finite = st.floats(-1e4, 1e4, width=16 if dtype == np.float16 else 32, allow_nan=False)
    labels = data.draw(hnp.arrays(dtype, shape, elements=finite))
    codec = "fp16" if dtype == np.float16 else data.draw(st.sampled_from(["fp32", "fp16"]))
    if codec == "fp16" and dtype == np.float32:
        labels = labels.astype(np.float16).astype(np.float32)  # an FP16-representable source
    blob = slcodec.encode(labels, codec=codec, input_kind="logits")
    r = slcodec.Reader.__new__(slcodec.Reader)
    import tempfile, os
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "x.vqsl")
        open(p, "wb").write(blob)
        with slcodec.open(p) as r:
            out = r.decode(None, as_="logits").numpy()
            assert r.shape == labels.shape
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.view(np.uint32), labels.astype(np.float32).view(np.uint32))


def test_fp16_round_trips_real_fp16_logits_bit_exactly(real_labels, tmp_path):
    p = tmp_path / "x.vqsl"
    slcodec.encode(real_labels, p, codec="fp16")
    with slcodec.open(p) as r:
        out = r.decode(None, as_="logits").numpy()
    assert np.array_equal(out.astype(np.float16).view(np.uint16), real_labels.view(np.uint16))


def test_fp16_refuses_values_beyond_its_range():
    with pytest.raises(ConfigError):
        slcodec.encode(np.array([[1e6, 0.0]], np.float32), codec="fp16", input_kind="logits")


def fkd_reference(probs: np.ndarray, k: int) -> np.ndarray:
    """FKD's soft label, written independently with numpy: top-k (FP16) values at their ids, the rest of
    the mass shared evenly by the other classes."""
    n, c = probs.shape
    out = np.empty_like(probs, dtype=np.float64)
    for i in range(n):
        order = np.argsort(-probs[i], kind="stable")[:k]
        vals = probs[i, order].astype(np.float16).astype(np.float64)
        out[i] = max(0.0, 1.0 - vals.sum()) / (c - k)
        out[i, order] = vals
    return out


@pytest.mark.parametrize("k", [1, 5, 50])
def test_topk_matches_fkd_definition(real_labels, tmp_path, k):
    logits = real_labels.reshape(-1, 1000)[:64].astype(np.float32)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    p = tmp_path / "x.vqsl"
    slcodec.encode(logits, p, codec="topk", k=k)
    with slcodec.open(p) as r:
        got = r.decode(None, as_="probs").numpy()
    np.testing.assert_allclose(got, fkd_reference(probs, k), rtol=0, atol=2e-7)
    # the stored ids are the teacher's top-k classes
    assert (got.argmax(1) == probs.argmax(1)).all()


def test_topk_on_probability_source(tmp_path):
    probs = np.array([[0.7, 0.2, 0.1, 0.0], [0.1, 0.1, 0.3, 0.5]], np.float32)
    p = tmp_path / "x.vqsl"
    slcodec.encode(probs, p, codec="topk", k=2)
    with slcodec.open(p) as r:
        assert r.source_kind == "probs"
        got = r.decode(None).numpy()
    np.testing.assert_allclose(got, fkd_reference(probs, 2), atol=1e-7)


def test_topk_k_larger_than_classes_is_refused():
    with pytest.raises(ConfigError):
        slcodec.encode(np.zeros((2, 4), np.float32), codec="topk", k=5, input_kind="logits")


@pytest.mark.parametrize("codec_id", ["fp32", "fp16", "topk"])
def test_config_round_trip(codec_id):
    cls = get_codec_class(codec_id)
    codec = cls()
    again = cls.from_config(codec.get_config())
    assert again.get_config() == codec.get_config()
    with pytest.raises(ConfigError):
        cls(no_such_option=1)


def test_codec_decode_runs_on_the_device_it_is_given():
    codec = get_codec_class("topk")(k=2)
    labels = torch.randn(4, 6)
    streams = {k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.uint16 else v)
               for k, v in codec.encode(labels, Context("logits", 6)).items()}
    out = codec.decode(streams, Context("logits", 6, device="cpu"))
    assert out.device.type == "cpu" and out.shape == (4, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_on_cuda_matches_cpu(tmp_path, real_labels):
    p = tmp_path / "x.vqsl"
    slcodec.encode(real_labels[:2], p, codec="topk", k=10)
    with slcodec.open(p) as r:
        cpu = r.decode(None)
        gpu = r.decode(None, device="cuda")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)
