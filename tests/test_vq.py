"""Unit tests of the ``vq`` codec through its API (fit / encode / decode with a Context)."""
from __future__ import annotations

import math
from pathlib import Path

import msgpack
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from slcodec.codecs.base import Context, get_codec_class  # noqa: E402
from slcodec.codecs.vq import TOP1_RANKS, VQCodec, apply_top1, nominal_bits, rate_for_bits, top1_symbols  # noqa: E402
from slcodec.errors import ConfigError, FormatError  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "slcodec" / "data" / "lite0_8x64_fp16.npy"
# float16 parameters: the format-1.0 layout these tests check (int8, the auto default: test_vq_int8.py)
TINY = dict(codes=2, codebook_size=16, code_dim=4, hidden=32, steps=40, train_batch=64, param_dtype="float16")


def _fixture():
    a = np.load(FIXTURE).astype(np.float32)
    return torch.from_numpy(a.reshape(-1, a.shape[-1]))


def _synthetic(n=300, C=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, generator=g) * 3


def _tensors(streams):
    return {k: torch.from_numpy(v.astype(np.int64)) for k, v in streams.items()}


def _roundtrip(codec, x, ctx):
    streams = codec.encode(x, ctx)
    return streams, codec.decode(_tensors(streams), ctx)


def test_registered():
    assert get_codec_class("vq") is VQCodec


def test_determinism_same_seed():
    x = _synthetic()
    ctx = Context(classes=x.shape[1], seed=7)
    a, b = VQCodec(**TINY), VQCodec(**TINY)
    a.fit(x, ctx)
    b.fit(x, ctx)
    pa, pb = a.get_params(), b.get_params()
    assert sorted(pa) == sorted(pb)
    for k in pa:
        assert pa[k].dtype == np.float16
        np.testing.assert_array_equal(pa[k], pb[k])
    sa, da = _roundtrip(a, x, ctx)
    sb, db = _roundtrip(b, x, ctx)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
    assert torch.equal(da, db)
    assert torch.equal(da, a.decode(_tensors(sa), ctx))   # decoding twice is identical
    # another seed gives another fit
    c = VQCodec(**TINY)
    c.fit(x, Context(classes=x.shape[1], seed=8))
    assert any(not np.array_equal(pa[k], c.get_params()[k]) for k in pa)


@pytest.mark.parametrize("bits", [8, 12, 16, 24, 32, 40, 48, 64, 96, 160])
def test_bits_honoured(bits):
    codec = VQCodec(bits=bits)
    assert abs(codec.nominal_bits - bits) <= 0.1 * bits
    specs = codec.stream_specs(1000)
    assert specs["codes"] == ("uint8" if codec.K <= 256 else "uint16", codec.M)
    assert specs["top1"] == ("uint16", 1)


def test_rate_overrides():
    assert rate_for_bits(48) == (6, 203)
    assert VQCodec().M * math.log2(VQCodec().K) == pytest.approx(46, abs=0.01)
    c = VQCodec(codes=4, codebook_size=256)
    assert (c.M, c.K) == (4, 256) and c.nominal_bits == 34
    c = VQCodec(bits=34, codebook_size=256)
    assert (c.M, c.K) == (4, 256)
    c = VQCodec(bits=34, codes=2)
    assert (c.M, c.K) == (2, 65536)
    assert nominal_bits(4, 256) == 34


def test_fit_restores_threads():
    before = torch.get_num_threads()
    VQCodec(**TINY, fit_threads=1).fit(_synthetic(100, 20), Context(classes=20))
    assert torch.get_num_threads() == before


def test_bad_config():
    for bad in (dict(bits=1), dict(temperature=[]), dict(temperature=[0.0]), dict(codebook_size=1),
                dict(fit_threads=-1), dict(encoder_hidden=0),
                dict(warmup=0.8, finetune=0.5), dict(nope=1)):
        with pytest.raises(ConfigError):
            VQCodec(**bad)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_argmax_guaranteed(data):
    n = data.draw(st.integers(1, 24), label="n")
    C = data.draw(st.integers(2, 12), label="C")
    vals = data.draw(st.lists(st.sampled_from([-30.0, -5.0, -1.0, 0.0, 0.05, 0.1, 1.0, 7.5, 30.0])
                              | st.floats(-40, 40, allow_nan=False, width=32),
                              min_size=n * C, max_size=n * C), label="values")
    kind = data.draw(st.sampled_from(["logits", "probs"]), label="kind")
    x = torch.tensor(vals, dtype=torch.float32).view(n, C)
    if kind == "probs":
        x = torch.softmax(x, 1)
    ctx = Context(source_kind=kind, classes=C, seed=data.draw(st.integers(0, 3), label="seed"))
    codec = VQCodec(codes=1, codebook_size=4, code_dim=2, hidden=8, steps=4, train_batch=8)
    codec.fit(x, ctx)
    streams, z = _roundtrip(codec, x, ctx)
    assert z.dtype == torch.float32 and z.shape == (n, C)
    assert torch.equal(z.argmax(1), x.argmax(1))
    top = z.topk(2, 1).values if C > 1 else None
    assert bool((top[:, 0] > top[:, 1]).all())      # strictly first, no tie


def test_top1_symbols_and_apply():
    z = torch.tensor([[1.0, 1.0, 1.0], [5.0, -1.0, 0.0], [1e8, 1e8, 0.0], [0.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    c = torch.tensor([2, 0, 1, 2, 1])
    v = top1_symbols(z, c)
    assert v.tolist() == [TOP1_RANKS + 2, 0, TOP1_RANKS + 1, 1, 1]
    out = z.clone()
    got = apply_top1(out, v, 0.01, "lift")            # how format-1.0 vq files decode
    assert torch.equal(got, c) and torch.equal(out.argmax(1), c)
    assert torch.equal(out[1], z[1])                  # already first: unchanged
    assert out[0, 2] == pytest.approx(1.01) and out[3, 2] == pytest.approx(2.01)
    assert out[2, 1] > out[2, 0]                      # margin below float resolution: next float up
    out = z.clone()
    got = apply_top1(out, v, 0.01, "swap")            # c takes the decoder's maximum
    assert torch.equal(got, c) and torch.equal(out.argmax(1), c)
    assert torch.equal(out[1], z[1])
    assert out[3].tolist() == [0.0, 1.0, 2.0] and out[4].tolist() == [2.0, 3.0, 1.0]
    assert out[0, 2] == pytest.approx(1.01)           # a tie: lifted by the margin
    assert out[2, 1] > out[2, 0]


def test_old_files_without_top1_rule_decode_with_lift():
    assert VQCodec.from_config({"codes": 2, "codebook_size": 16}).config["top1_rule"] == "lift"
    assert VQCodec(codes=2, codebook_size=16, top1_rule="swap").config["top1_rule"] == "swap"


def test_code_usage_on_real_labels():
    x = _fixture()
    ctx = Context(classes=x.shape[1], seed=0)
    codec = VQCodec(codes=2, codebook_size=32, code_dim=4, hidden=64, steps=150, train_batch=128)
    codec.fit(x, ctx)
    info = codec.fit_info
    msgpack.packb(info, use_bin_type=True)
    assert len(info["code_usage"]) == 2
    assert min(info["code_usage"]) > 0.5, info["code_usage"]
    assert info["index_entropy_total"] > 0.5 * 2 * math.log2(32)
    streams, z = _roundtrip(codec, x, ctx)
    assert torch.equal(z.argmax(1), x.argmax(1))
    assert streams["codes"].dtype == np.uint8 and streams["codes"].shape == (x.shape[0], 2)
    assert streams["top1"].dtype == np.uint16 and streams["top1"].shape == (x.shape[0], 1)


def test_config_and_params_roundtrip():
    x = _synthetic(200, 40)
    ctx = Context(classes=40, seed=1)
    codec = VQCodec(**TINY, temperature=[1.0, 2.0, 4.0], decoder_layers=2)
    codec.fit(x, ctx)
    cfg = codec.get_config()
    cfg2 = msgpack.unpackb(msgpack.packb(cfg, use_bin_type=True), raw=False)
    other = VQCodec.from_config(cfg2)
    assert other.get_config() == cfg
    other.set_params({k: np.array(v) for k, v in codec.get_params().items()}, Context(classes=40))
    streams = codec.encode(x, ctx)
    assert torch.equal(codec.decode(_tensors(streams), ctx), other.decode(_tensors(streams), ctx))
    with pytest.raises(ConfigError):
        other.encode(x, ctx)     # the encoder is not stored


def test_set_params_rejects_bad_arrays():
    x = _synthetic(100, 20)
    codec = VQCodec(**TINY)
    codec.fit(x, Context(classes=20))
    good = codec.get_params()
    fresh = lambda: VQCodec(**TINY)  # noqa: E731
    cases = []
    p = dict(good); p["w_out"] = p["w_out"][:, :-1]; cases.append(p)                       # noqa: E702
    p = dict(good); p["codebooks"] = p["codebooks"].astype(np.float32); cases.append(p)   # noqa: E702
    p = dict(good); del p["b_in"]; cases.append(p)                                         # noqa: E702
    p = dict(good); p["extra"] = np.zeros(3, np.float16); cases.append(p)                  # noqa: E702
    p = dict(good); p["w_in"] = np.full_like(p["w_in"], np.nan); cases.append(p)          # noqa: E702
    for p in cases:
        with pytest.raises(FormatError) as ei:
            fresh().set_params(p, Context(classes=20))
        assert ei.value.rule == "codec-params"
    with pytest.raises(FormatError):
        fresh().set_params(good, Context(classes=21))
    c = fresh()
    c.set_params(good, Context(classes=20))
    bad = {"top1": torch.zeros((2, 1), dtype=torch.int64),
           "codes": torch.full((2, 2), 16, dtype=torch.int64)}
    with pytest.raises(FormatError):
        c.decode(bad, Context(classes=20))


def test_fit_sample_and_topk_encoder():
    x = _synthetic(400, 300, seed=3)
    ctx = Context(classes=300, seed=0)
    codec = VQCodec(**TINY, fit_sample=150, encoder_input="topk", topk_input=8)
    codec.fit(x, ctx)
    assert codec.fit_info["fit_rows"] == 150 and codec.fit_info["encoder_input"] == "topk"
    streams, z = _roundtrip(codec, x, ctx)
    assert torch.equal(z.argmax(1), x.argmax(1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_matches_cpu():
    x = _synthetic(300, 50)
    cpu = Context(classes=50, seed=0)
    codec = VQCodec(**TINY)
    codec.fit(x, cpu)
    streams = codec.encode(x, cpu)
    zc = codec.decode(_tensors(streams), cpu)
    gpu = Context(classes=50, device="cuda")
    zg = codec.decode({k: v.cuda() for k, v in _tensors(streams).items()}, gpu).cpu()
    assert torch.equal(zg.argmax(1), zc.argmax(1))
    torch.testing.assert_close(zg, zc, rtol=1e-4, atol=1e-4)


def test_hidden_width_defaults_by_class_count():
    """hidden is resolved at fit time (64 below 256 classes, else 256) and stored in the config."""
    x = torch.randn(64, 10)
    codec = VQCodec(codes=1, codebook_size=4, code_dim=2, steps=4, train_batch=16)
    assert codec.config["hidden"] is None
    codec.fit(x, Context(classes=10, seed=0))
    assert codec.get_config()["hidden"] == 64
    assert codec.get_params()["w_in"].shape == (2, 64)
    again = VQCodec.from_config(codec.get_config())
    again.set_params(codec.get_params(), Context(classes=10))
    streams = codec.encode(x, Context(classes=10))
    t = {k: torch.from_numpy(v.astype(np.int64)) for k, v in streams.items()}
    assert torch.equal(again.decode(t, Context(classes=10)), codec.decode(t, Context(classes=10)))


def test_class_at_rank_matches_a_full_sort():
    from slcodec.codecs.vq import _class_at_rank
    g = torch.Generator().manual_seed(7)
    z = torch.randn(500, 40, generator=g)
    v = torch.randint(1, TOP1_RANKS, (500,), generator=g)
    want = torch.sort(z, dim=1, descending=True).indices.gather(1, v.view(-1, 1)).view(-1)
    assert torch.equal(_class_at_rank(z, v), want)
    # ties among the larger logits do not change the answer (the encoder only writes robust ranks)
    z2 = z.clone()
    top2 = torch.topk(z2, 2, dim=1).indices
    z2.scatter_(1, top2[:, 1:], z2.gather(1, top2[:, :1]))          # the two largest now tie
    v2 = torch.full((500,), 2)
    want2 = torch.sort(z2, dim=1, descending=True, stable=True).indices[:, 2]
    assert torch.equal(_class_at_rank(z2, v2), want2)


def test_rank_weight_ranks_the_top_class_first_more_often():
    """The fitting-only rank hinge leaves fewer labels whose decoded argmax needs the top1 fix."""
    x = _synthetic(600, 24)
    ctx = Context(classes=24, seed=3)
    fixes = {}
    for w in (0.0, 1.0):
        codec = VQCodec(**TINY, rank_weight=w)
        codec.fit(x, ctx)
        fixes[w] = int((torch.as_tensor(codec.encode(x, ctx)["top1"].astype(np.int64)) != 0).sum())
        assert "rank_weight" not in codec.get_config()      # fitting-only: not in the stored config
        assert codec.fit_info["rank_weight"] == w
    assert fixes[1.0] < fixes[0.0]
    with pytest.raises(ConfigError):
        VQCodec(rank_weight="x")


@pytest.mark.parametrize("opts", [{"steps": "x"}, {"hidden": 2.5}, {"bits": "x"}, {"code_dim": None},
                                  {"decoder_layers": True}, {"rank_weight": -1.0}, {"fit_threads": float("inf")}])
def test_bad_option_values_are_config_errors(opts):
    with pytest.raises(ConfigError):
        VQCodec(**opts)


@pytest.mark.parametrize("margin", [0.01, 0.0])
def test_cpu_lift_path_equals_the_torch_one(margin):
    from slcodec.codecs.vq import _apply_top1_lift_cpu
    g = torch.Generator().manual_seed(11)
    z = torch.randn(2000, 60, generator=g) * 4
    c = torch.randint(0, 60, (2000,), generator=g)
    v = top1_symbols(z, c)
    v[::7] = 0                                    # rows the decoder already ranks right
    assert bool(((v > 1) & (v < TOP1_RANKS)).any()) and bool((v == 1).any()) and bool((v >= TOP1_RANKS).any())
    a, b = z.clone(), z.clone()
    apply_top1(a, v, margin, "lift", return_classes=False)
    _apply_top1_lift_cpu(b, v, margin)
    assert torch.equal(a, b)


def _fitted_tiny(**opts):
    x = _fixture()
    ctx = Context(classes=x.shape[1], seed=3)
    codec = VQCodec(**dict(TINY, **opts))
    codec.fit(x, ctx)
    return codec, x, ctx


@pytest.mark.parametrize("margin", [0.01, 0.0])
def test_table_decode_equals_the_network(margin):
    """K ** M = 256 code combinations: decoding gathers rows of a logits table built once; it
    must give the network's logits (same float32 values up to GEMM summation order) and the
    teacher's class first on every label."""
    from slcodec.codecs.vq import _FastDecoder
    codec, x, ctx = _fitted_tiny(margin=margin)
    streams = codec.encode(x, ctx)
    assert codec._fast_for(torch.device("cpu")).table is not None
    got = codec.decode(_tensors(streams), ctx)
    codec._fast["cpu"] = _FastDecoder(codec._dec, torch.device("cpu"), table_max_bytes=0)
    assert codec._fast["cpu"].table is None
    want = codec.decode(_tensors(streams), ctx)
    assert torch.equal(got.argmax(1), x.argmax(1)) and torch.equal(want.argmax(1), x.argmax(1))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("margin,classes", [(0.01, None), (0.0, None), (0.01, 10)])
def test_table_lookup_lift_equals_the_searching_one(margin, classes):
    """The table's precomputed ranks resolve every kind of symbol (0, 1, deeper ranks, escapes)
    to the same class, and lift it to the same value, as the search over each row (real labels,
    C = 1000, and C = 10 < TOP1_RANKS, where a row's ranking has C entries)."""
    from slcodec.codecs.vq import _apply_top1_lift_cpu
    if classes is None:
        codec, x, ctx = _fitted_tiny()
    else:
        x = _synthetic(n=400, C=classes)
        ctx = Context(classes=classes, seed=3)
        codec = VQCodec(**TINY)
        codec.fit(x, ctx)
    fast = codec._fast_for(torch.device("cpu"))
    assert fast.ranked_np.shape == (codec.K ** codec.M, min(TOP1_RANKS, codec._classes))
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, codec.K, (3000, codec.M), generator=g)
    z = fast(idx)
    rank = torch.randint(0, min(24, codec._classes), (idx.shape[0],), generator=g)
    c = torch.argsort(z, dim=1, descending=True, stable=True).gather(1, rank.view(-1, 1)).view(-1)
    v = top1_symbols(z, c)
    kinds = (v == 0, v == 1, (v > 1) & (v < TOP1_RANKS)) + ((v >= TOP1_RANKS,) if classes is None else ())
    assert all(bool(m.any()) for m in kinds)
    a, b = z.clone(), z.clone()
    _apply_top1_lift_cpu(a, v, margin)
    fast.lift_top1(b, fast.table_rows(idx), v, margin)
    assert torch.equal(a, b)


def test_table_only_when_small(monkeypatch):
    import slcodec.codecs.vq as vq
    import slcodec.codecs.vq.table as vq_table
    codec, _, _ = _fitted_tiny()
    C, H = codec._classes, TINY["hidden"]
    cpu = torch.device("cpu")
    assert vq._FastDecoder(codec._dec, cpu, table_max_bytes=16 * 16 * C * 4).table is not None
    assert vq._FastDecoder(codec._dec, cpu, table_max_bytes=16 * 16 * C * 4 - 1).table is None
    # nor when building it would cost too much (a legal config with a huge code space and decoder)
    macs = 16 * 16 * (2 * H + H * H + H * C)      # 1 residual layer
    monkeypatch.setattr(vq_table, "DECODE_TABLE_MAX_MACS", macs)
    assert vq._FastDecoder(codec._dec, cpu).table is not None
    monkeypatch.setattr(vq_table, "DECODE_TABLE_MAX_MACS", macs - 1)
    assert vq._FastDecoder(codec._dec, cpu).table is None


@pytest.mark.parametrize("margin,classes", [(0.01, None), (0.0, None), (0.01, 10)])
def test_every_lift_backend_equals_the_reference_rule(margin, classes):
    """The lift rule is written once (``lift_reference``, a plain per-row numpy loop); the torch
    (``apply_top1``), numpy (``_apply_top1_lift_cpu``) and table (``_FastDecoder.lift_top1``)
    backends give exactly its values on every kind of top-1 symbol: 0, 1, 2-3, 4-15, escapes."""
    from slcodec.codecs.vq import _apply_top1_lift_cpu, lift_reference
    if classes is None:
        codec, x, ctx = _fitted_tiny(margin=margin)
    else:
        x = _synthetic(n=400, C=classes)
        codec = VQCodec(**dict(TINY, margin=margin))
        codec.fit(x, Context(classes=classes, seed=3))
    fast = codec._fast_for(torch.device("cpu"))
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, codec.K, (4000, codec.M), generator=g)
    z = fast(idx)
    rank = torch.randint(0, min(24, codec._classes), (idx.shape[0],), generator=g)
    c = torch.argsort(z, dim=1, descending=True, stable=True).gather(1, rank.view(-1, 1)).view(-1)
    v = top1_symbols(z, c)
    kinds = [v == 0, v == 1, (v >= 2) & (v <= 3), (v >= 4) & (v < TOP1_RANKS)]
    if classes is None:
        kinds.append(v >= TOP1_RANKS)
    assert all(bool(k.any()) for k in kinds), [int(k.sum()) for k in kinds]
    want = lift_reference(z.numpy(), v.numpy(), margin)
    assert (want.argmax(1) == c.numpy()).all()          # the reference makes the stored class the argmax
    backends = {"torch": lambda a: apply_top1(a, v, margin, "lift", return_classes=False),
                "numpy": lambda a: _apply_top1_lift_cpu(a, v, margin),
                "table": lambda a: fast.lift_top1(a, fast.table_rows(idx), v, margin)}
    for name, run in backends.items():
        a = z.clone()
        run(a)
        assert np.array_equal(a.numpy(), want), name
