"""Codec configs read from a file are type- and range-checked before anything is built, and a
valid file never decodes to NaN or infinity (issue 12 points 2, 3, 6 and the codec side of 7).

The hostile files are crafted from the golden files with every checksum recomputed
(craft.rewrite_file) or written from scratch with the container writer, so that only a codec's
own rules can reject them.
"""
import math
import os

import numpy as np
import pytest

import slcodec
from slcodec.format import limits
from slcodec.cli import main as cli_main
from slcodec.codecs import get_codec_class
from slcodec.codecs.base import Context, all_finite
from slcodec.codecs.rules import Choice, Float, FloatList, Int, bounds_table
from slcodec.format.container import Container, ContainerWriter, StreamBuilder
from slcodec.errors import ConfigError, FormatError

from craft import assert_rejected, parse, rebuild, rewrite_file

ROOT = os.path.join(os.path.dirname(__file__), "..")
GOLDEN = os.path.join(ROOT, "spec", "golden")
ATTACKS = os.path.join(os.path.dirname(__file__), "attacks")
VQ = os.path.join(GOLDEN, "v1.0-vq-tiny-logits.vqsl")
VQ_BIAS = os.path.join(GOLDEN, "v1.2-vq-image-bias-logits.vqsl")
SPARSE = os.path.join(GOLDEN, "v1.2-sparse-k5-logits.vqsl")
TOPK = os.path.join(GOLDEN, "v1.0-topk5-logits.vqsl")
#: the codecs this file covers (each option of each carries a rule)
CODECS = ("fp32", "fp16", "topk", "sparse", "vq")


def stored_config(path):
    with Container.open(path) as c:
        return dict(c.header["codec"]["config"])


def golden_files():
    return sorted(os.path.join(GOLDEN, f) for f in os.listdir(GOLDEN)
                  if f.endswith(".vqsl") and "-0000" not in f)   # shards open through their manifest


def write_file(path, codec_id, config, shape, streams, params=None, source_kind="logits"):
    """A file written from scratch (every CRC right): streams and params as given."""
    with ContainerWriter(path, verify=False) as w:
        for name, a in (params or {}).items():
            w.add_array("params/" + name, a)
        for name, a in streams.items():
            b = StreamBuilder(a.dtype.name, a.shape[1])
            b.append(a)
            w.add_stream("streams/" + name, b)
        count = int(np.prod(shape[:-1]))
        w.commit({"labels": {"count": count, "shape": list(shape), "classes": shape[-1],
                             "source_kind": source_kind},
                  "codec": {"id": codec_id, "config": config}})
    return path


def rewritten(src, out, **kw):
    rewrite_file(src, out, minor=0, **kw)
    return out


def rejected_by_cli(path, tmp_path, capsys):
    """`slcodec decode` exits 2 with one line naming the file, no traceback; verify exits 1."""
    capsys.readouterr()
    out = tmp_path / "decoded.npy"
    assert cli_main(["decode", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slcodec: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err
    assert not out.exists()
    assert cli_main(["verify", str(path)]) == 1
    assert "INVALID" in capsys.readouterr().out


# --------------------------------------------------------------------------- point 2: vq bits = inf
@pytest.mark.parametrize("bits", [math.inf, -math.inf, math.nan, 1e308, 65539.0])
def test_vq_bits_out_of_range_is_a_format_error(bits, tmp_path, capsys):
    p = str(tmp_path / "bits.vqsl")
    rewrite_file(VQ, p, config={"bits": bits, "codes": None, "codebook_size": None}, minor=0)
    assert_rejected(p, "codec")
    rejected_by_cli(p, tmp_path, capsys)


def test_rate_for_bits_never_overflows():
    from slcodec.codecs.vq import rate_for_bits
    # the bits per code beyond the largest codebook were raised to a power before: OverflowError
    assert rate_for_bits(65538.0, codes=1) == (1, 65536)
    assert rate_for_bits(3000.0, codes=2) == (2, 65536)
    with pytest.raises(ConfigError):
        rate_for_bits(math.inf)


def test_vq_bits_whose_code_count_is_out_of_range(tmp_path):
    # within the bits bound, but M = round((B - 2) / 8) = 5000 codes is beyond 4096
    with pytest.raises(ConfigError, match="codes"):
        get_codec_class("vq").from_config({"bits": 40002.0})


# --------------------------------------------------------------------------- point 3: decoder size
def test_vq_decoder_layers_huge_is_rejected_from_the_config(tmp_path, capsys):
    """10**9 layers made `open` list 2e9 parameter shapes (56 s, 3.3 GB, MemoryError)."""
    p = str(tmp_path / "layers.vqsl")
    rewrite_file(VQ, p, config={"decoder_layers": 10**9}, minor=0)
    with pytest.raises(FormatError) as e:
        slcodec.open(p)
    assert e.value.rule == "codec" and "decoder_layers" in str(e.value) and p in str(e.value)
    rejected_by_cli(p, tmp_path, capsys)


@pytest.mark.parametrize("layers", [2, 8])
def test_vq_decoder_shapes_checked_against_the_stored_params(layers, tmp_path):
    """Within the bound, a config naming more layers than the file stores is a params mismatch,
    found before any decoder tensor is built."""
    p = str(tmp_path / "layers.vqsl")
    rewrite_file(VQ, p, config={"decoder_layers": layers}, minor=0)
    assert_rejected(p, "codec-params")


def test_vq_hidden_mismatch_rejected_before_building(tmp_path):
    p = str(tmp_path / "hidden.vqsl")
    rewrite_file(VQ, p, config={"hidden": 16384}, minor=0)
    assert_rejected(p, "codec-params")


def _vq_code_table_bomb(path):
    """A consistent 0.3 MB vq file whose decoder's first-layer table (M * K * hidden float32)
    would be 4 GiB: one code of K = 65536 one-dimensional entries, hidden 16384."""
    cfg = dict(stored_config(VQ), codes=1, codebook_size=65536, code_dim=1, hidden=16384, decoder_layers=0)
    H, C = 16384, 10
    f16 = np.float16
    params = {"codebooks": np.zeros((1, 65536, 1), f16), "w_in": np.zeros((1, H), f16), "b_in": np.zeros(H, f16),
              "w_out": np.zeros((H, C), f16), "b_out": np.zeros(C, f16)}
    streams = {"codes": np.zeros((1, 1), np.uint16), "top1": np.zeros((1, 1), np.uint16)}
    return write_file(path, "vq", cfg, [1, C], streams, params)


def test_vq_code_table_cap(tmp_path, capsys):
    p = _vq_code_table_bomb(str(tmp_path / "table.vqsl"))
    with pytest.raises(FormatError) as e:
        slcodec.open(p)
    assert e.value.rule == "codec" and "code table" in str(e.value)
    rejected_by_cli(p, tmp_path, capsys)


# --------------------------------------------------------------------------- point 6: non-finite
@pytest.mark.parametrize("margin", [math.inf, math.nan, -0.5, 1e39, 101.0])
def test_vq_margin_must_be_finite_and_bounded(margin, tmp_path, capsys):
    """margin = inf passed verify and decoded 98% of the values to NaN."""
    p = str(tmp_path / "margin.vqsl")
    rewrite_file(VQ, p, config={"margin": margin}, minor=0)
    assert_rejected(p, "codec")
    rejected_by_cli(p, tmp_path, capsys)


def _overflowing_vq(path, scale):
    """The tiny golden vq with float32 parameters scaled by ``scale``: finite weights whose float32
    decode overflows to infinity (and NaN after the softmax) when scale is large."""
    with Container.open(VQ) as c:
        params = {n[7:]: np.abs(c.read_array(n).astype(np.float32)) * np.float32(scale)
                  for n in c.sections if n.startswith("params/")}
    rewrite_file(VQ, path, params=params, config={"param_dtype": "float32"}, minor=0)
    return path


def test_vq_weights_that_overflow_float32_are_rejected(tmp_path, capsys):
    p = _overflowing_vq(str(tmp_path / "overflow.vqsl"), 1e12)
    assert_rejected(p, "codec-params")
    rejected_by_cli(p, tmp_path, capsys)


def test_vq_logit_bound_holds_on_a_decodable_file(tmp_path):
    """The bound is a bound: on the same weights at a scale that decodes, every decoded logit
    lies within it (and the golden files are far inside the reader's limit)."""
    from slcodec.codecs.vq import logit_bound
    p = _overflowing_vq(str(tmp_path / "scaled.vqsl"), 3.0)
    with Container.open(p) as c:
        params = {n[7:]: c.read_array(n) for n in c.sections if n.startswith("params/")}
        cfg = c.header["codec"]["config"]
    bound = logit_bound(params, cfg["decoder_layers"], cfg["margin"])
    with slcodec.open(p) as r:
        z = r.decode(None, as_="logits").numpy()
    assert np.isfinite(z).all() and np.abs(z).max() <= bound
    for g in (VQ, VQ_BIAS):
        with Container.open(g) as c:
            params = {n[7:]: c.read_array(n) for n in c.sections if n.startswith("params/")}
            cfg = c.header["codec"]["config"]
        assert logit_bound(params, cfg["decoder_layers"], cfg["margin"]) < 1e4


def test_fp32_value_nan_is_rejected(tmp_path, capsys):
    values = np.zeros((3, 10), np.float32)
    values[1, 4] = np.nan
    p = write_file(str(tmp_path / "nan.vqsl"), "fp32", {}, [3, 10], {"values": values})
    assert_rejected(p, "codec-streams")
    rejected_by_cli(p, tmp_path, capsys)


def test_fp16_value_inf_is_rejected(tmp_path):
    values = np.zeros((3, 10), np.float16)
    values[2, 9] = -np.inf
    p = write_file(str(tmp_path / "inf.vqsl"), "fp16", {}, [3, 10], {"values": values})
    assert_rejected(p, "codec-streams")


def test_topk_value_inf_is_rejected(tmp_path):
    ids = np.tile(np.arange(3, dtype=np.uint16), (4, 1))
    values = np.full((4, 3), 0.25, np.float16)
    values[3, 0] = np.inf
    p = write_file(str(tmp_path / "inf.vqsl"), "topk", {"k": 3}, [4, 10], {"ids": ids, "values": values})
    assert_rejected(p, "codec-streams")


def test_topk_encode_refuses_what_the_reader_would_reject():
    import torch
    codec = get_codec_class("topk")(k=2)
    with pytest.raises(ConfigError):
        codec.encode(torch.tensor([[1e6, 0.5, 0.1]]), Context(source_kind="probs", classes=3))


@pytest.mark.parametrize("bits", [(np.float16, 0x7C00), (np.float16, 0xFC01), (np.float32, 0x7F800000),
                                  (np.float32, 0xFFC00000), (np.float64, 0x7FF0000000000000)])
def test_all_finite_finds_one_bad_value_anywhere(bits):
    dtype, pattern = bits
    a = np.ones((3, 1 << 19), dtype)        # two blocks of the check's chunking, and a tail
    assert all_finite(a)
    a.reshape(-1).view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])[-1] = pattern
    assert not all_finite(a)
    assert all_finite(np.finfo(dtype).max * np.ones(5, dtype)) and all_finite(np.zeros(0, dtype))


def _accepted(path):
    try:
        with slcodec.open(path) as r:
            r.verify_streams()
        return True
    except FormatError:
        return False


def test_every_accepted_file_decodes_to_finite_values(tmp_path):
    """Every golden file and every committed attack file that the reader accepts - and the
    crafted files of this module at values the rules accept - decode to finite numbers, in
    every form a reader returns."""
    near_limits = [
        _overflowing_vq(str(tmp_path / "scaled.vqsl"), 1e3),
        rewritten(VQ, str(tmp_path / "margin100.vqsl"), config={"margin": 100.0}),
        write_file(str(tmp_path / "fp32max.vqsl"), "fp32", {}, [2, 3],
                   {"values": np.array([[3.4e38, -3.4e38, 0], [1, 2, 3]], np.float32)}),
        write_file(str(tmp_path / "fp16max.vqsl"), "fp16", {}, [2, 3],
                   {"values": np.array([[65504, -65504, 0], [1, 2, 3]], np.float16)}),
    ]
    files = golden_files() + sorted(os.path.join(ATTACKS, f) for f in os.listdir(ATTACKS)
                                    if f.endswith(".vqsl")) + near_limits
    decoded = 0
    for path in files:
        if not _accepted(path):
            continue
        with slcodec.open(path) as r:
            for as_ in ("probs", "log_probs", "logits"):
                for t in [None] + [x for x in r.temperatures if x != 1.0]:
                    if as_ == "logits" and t is not None:
                        continue
                    got = r.decode(None, as_=as_, temperature=t).numpy()
                    assert np.isfinite(got).all(), (path, as_, t)
        decoded += 1
    assert decoded >= len(golden_files()) + len(near_limits)


# --------------------------------------------------------------------------- point 7: C and call size
@pytest.mark.parametrize("codec_id,config", [("topk", {"k": 1}), ("sparse", {"k": 1, "step": 1.0, "tail": "uniform",
                                                                              "prior_step": 1.0, "fit_sample": 1})])
def test_huge_class_count_is_rejected_before_decoding(codec_id, config, tmp_path, capsys):
    """A 1-label file with C = 2**28 decoded in 12 s at 3.56 GB (topk, sparse with a uniform tail).
    The header rule (header-schema) or, past it, the codec's own check (codec) rejects it."""
    streams = {"ids": np.zeros((1, 1), np.uint32),
               **({"values": np.ones((1, 1), np.float16)} if codec_id == "topk" else {"gaps": np.ones((1, 1), np.uint8)})}
    p = write_file(str(tmp_path / "narrow.vqsl"), codec_id, config, [1, 1000], streams)
    pre, header = parse(open(p, "rb").read())
    header["labels"].update(classes=2**28, shape=[1, 2**28])   # the writer refuses to write it
    p = str(tmp_path / "wide.vqsl")
    open(p, "wb").write(rebuild(open(str(tmp_path / "narrow.vqsl"), "rb").read(), header=header))
    with pytest.raises(FormatError) as e:
        with slcodec.open(p) as r:
            r.decode(None)
    assert e.value.rule in ("header-schema", "codec")
    rejected_by_cli(p, tmp_path, capsys)


@pytest.mark.parametrize("codec_id", CODECS)
def test_codecs_refuse_a_class_count_over_the_cap(codec_id):
    cfg = stored_config(VQ) if codec_id == "vq" else {"k": 1} if codec_id in ("topk", "sparse") else {}
    codec = get_codec_class(codec_id).from_config(cfg)
    codec.stream_specs(limits.MAX_CLASSES)
    with pytest.raises(ConfigError, match="classes"):
        codec.stream_specs(limits.MAX_CLASSES + 1)


@pytest.mark.parametrize("path", golden_files())
def test_decode_calls_stay_under_the_byte_cap_and_give_the_same_labels(path, monkeypatch):
    """With the per-call cap set to two labels, each codec refuses a larger call (before
    allocating) and the reader splits a request into calls under it: same labels."""
    with slcodec.open(path) as r:
        want = r.decode(None, as_="logits" if r.decoded_kind == "logits" else "probs")
        C = r.classes
    monkeypatch.setattr(limits, "MAX_DECODE_BYTES", 2 * C * 4)
    with slcodec.open(path) as r:
        got = r.decode(None, as_="logits" if r.decoded_kind == "logits" else "probs")
        assert np.array_equal(got.numpy(), want.numpy())
        rows = np.arange(min(3, r.count))
        raw = r.read_streams(rows)
        from slcodec.pipeline.reader import _to_torch
        ctx = r._ctx("cpu")
        ctx.rows = rows
        with pytest.raises(ConfigError, match="limit of one call"):
            r.codec.decode({k: _to_torch(v, "cpu") for k, v in raw.items()}, ctx)


def test_sparse_decodes_in_bounded_blocks_with_the_same_result(monkeypatch):
    """The prior tail's [rows, C] temporaries are built a block of rows at a time."""
    with slcodec.open(SPARSE) as r:
        want = r.decode(None, as_="logits").numpy()
    monkeypatch.setattr(limits, "DECODE_BLOCK_BYTES", 4 * 1000)   # one row of C = 1000 per block
    with slcodec.open(SPARSE) as r:
        assert np.array_equal(r.decode(None, as_="logits").numpy(), want)


# --------------------------------------------------------------------------- the rule tables
def test_every_option_has_a_rule():
    from slcodec.codecs import codec_ids
    assert set(CODECS) <= set(codec_ids())
    for codec_id in codec_ids():
        for opt in get_codec_class(codec_id).options:
            assert opt.rule is not None, (codec_id, opt.name)


def test_format_md_documents_every_bound():
    """FORMAT.md's per-codec bounds tables are exactly the rules the code checks."""
    from slcodec.codecs import codec_ids
    text = open(os.path.join(ROOT, "FORMAT.md")).read()
    for codec_id in codec_ids():
        rows = bounds_table(get_codec_class(codec_id))
        marker = f"<!-- bounds: {codec_id} -->"
        if codec_id in CODECS:   # exactly the rows after the marker
            assert marker in text, marker
            table = text.split(marker, 1)[1].split("\n\n", 1)[0]
            documented = [line for line in table.splitlines() if line.startswith("| `")]
            assert documented == rows, codec_id
        else:                    # codecs documented without a marker: the rows, in order, as one block
            assert "\n".join(rows) in text, codec_id
    from slcodec.format import schema
    assert getattr(schema, "MAX_CLASSES", limits.MAX_CLASSES) == limits.MAX_CLASSES
    assert f"{limits.MAX_CLASSES:,}" in text


HOSTILE = [math.nan, math.inf, -math.inf, True, "1", b"1", [], {}, 2**70, -2**70, 1e300, -1.0, 0.5]


def _acceptable(rule, value):
    try:
        rule.check(value)
        return True
    except (ValueError, TypeError, OverflowError):
        return False


def _all_codecs():
    from slcodec.codecs import codec_ids
    return codec_ids()


@pytest.mark.parametrize("codec_id", _all_codecs())
def test_hostile_values_of_every_option_are_config_errors(codec_id):
    """Every option, every hostile value its rule refuses: from_config raises ConfigError (never
    another exception) naming the option."""
    base = {"topk": {"k": 5}, "sparse": stored_config(SPARSE), "vq": stored_config(VQ)}.get(codec_id, {})
    cls = get_codec_class(codec_id)
    tried = 0
    for opt in cls.options:
        for value in HOSTILE:
            if _acceptable(opt.rule, value):
                continue
            with pytest.raises(ConfigError, match=opt.name):
                cls.from_config(dict(base, **{opt.name: value}))
            tried += 1
    assert tried >= 8 * len(cls.options)


@pytest.mark.parametrize("rule,inside,outside", [
    (Int(1, 10), [1, 10, np.int64(5)], [0, 11, 1.0, True, None, "3"]),
    (Int(0, 4, optional=True), [None, 0, 4], [-1, 5, 2.5]),
    (Float(0.0, 4.0, lo_open=True), [4.0, 1e-300, 2, np.float32(0.5)], [0.0, 4.0000001, math.nan, math.inf, False, "1"]),
    (Float(0.0, 1.0, hi_open=True), [0.0, 0.999], [1.0, -1e-9]),
    (FloatList(Float(1e-6, 1e6), 1, 2), [[1.0], [1, 4], 2.0], [[], [1, 2, 3], [0.0], [math.nan], "ab", None]),
    (Choice(("a", "b")), ["a", "b"], ["c", b"a", 1, None]),
])
def test_rules_accept_their_range_and_nothing_else(rule, inside, outside):
    for v in inside:
        rule.check(v)
    for v in outside:
        with pytest.raises((ValueError, TypeError)):
            rule.check(v)


def test_checked_values_are_plain_python():
    cfg = get_codec_class("sparse")(k=np.int64(3), step=np.float32(0.5)).get_config()
    assert type(cfg["k"]) is int and type(cfg["step"]) is float
    cfg = get_codec_class("vq")(temperature=np.float64(2.0), codes=np.int32(2)).config
    assert cfg["temperature"] == [2.0] and type(cfg["codes"]) is int


def test_vq_encoder_refuses_a_decoder_the_reader_would_reject(tmp_path, monkeypatch):
    """The writer checks the fitted decoder's logit bound too: it never writes a file its
    reader rejects (here with the reader's limit lowered below any trained decoder's bound)."""
    monkeypatch.setattr(limits, "VQ_MAX_LOGIT_BOUND", 1.0)
    x = np.random.default_rng(0).standard_normal((64, 12)).astype(np.float32)
    out = tmp_path / "out.vqsl"
    with pytest.raises(ConfigError, match="decoder_layers"):
        slcodec.encode(x, str(out), codec="vq", bits=6, steps=20, hidden=8, train_batch=32)
    assert not out.exists()
