"""Every registered codec through the same checks, as numcodecs' test suite does for its codecs.

Parametrised over ``codec_ids()``: a codec joins this suite by registering, and must then have
golden files (the tiny configs fitted here are the ones its golden files store):

* config: ``from_config(get_config())`` rebuilds an equal codec with the same repr; the config is
  msgpack-able (the header stores it); the repr is the constructor call; changing one option
  makes a codec unequal;
* encode/decode on tiny real labels (the committed EfficientNet-Lite0 fixture, as logits and as
  probabilities): the streams are exactly the declared ``stream_specs`` (names, dtypes, widths,
  one row per label), the params are storable arrays, the codec's own stream check accepts them;
  a codec rebuilt from config and params alone (as a reader has it) decodes float32 ``[n, C]``,
  finite, the same as the fitted one, and any subset of rows decodes to the same rows;
* determinism: two fits and encodes give the same bytes, and so do two whole files (but for the
  times the writer records in ``codec.info``);
* golden files exist for the codec and decode to their committed output;
* hostile config values, derived from each option's rule (just outside its bounds, NaN and
  infinities, another type, ...): ConfigError from ``from_config``, FormatError (rule ``codec``)
  from a file whose header holds them.
"""
import json
import math
import os

import msgpack
import numpy as np
import pytest
import torch

import slcodec
from slcodec.codecs import Context, codec_ids, get_codec_class
from slcodec.codecs.rules import Choice, Float, FloatList, Int
from slcodec.errors import ConfigError, FormatError
from slcodec.format import rules, schema
from slcodec.format.container import Container
from slcodec.pipeline.rows import RowReader
from slcodec.pipeline.statistics import compute_fit_statistics

from craft import parse, rebuild

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "spec", "golden")
MANIFEST = json.load(open(os.path.join(GOLDEN, "MANIFEST.json")))
FIXTURE = os.path.join(ROOT, "slcodec", "data", "lite0_8x64_fp16.npy")
#: tiny real labels: 2 images x 8 augmentations of 1000 classes (EfficientNet-Lite0 logits)
SHAPE = (2, 8)
CODECS = codec_ids()


def golden_entries(codec_id):
    return [e for _, e in sorted(MANIFEST.items()) if e["codec"] == codec_id]


def stored_config(entry):
    with Container.open(os.path.join(GOLDEN, entry["file"])) as c:
        return dict(c.header["codec"]["config"])


def tiny_configs(codec_id):
    """The distinct configs the codec's golden files store (the golden files are tiny by design)."""
    out = []
    for entry in golden_entries(codec_id):
        cfg = stored_config(entry)
        if cfg not in out:
            out.append(cfg)
    return out


def cases():
    """(codec id, config) for every codec and every config its golden files store."""
    return [pytest.param(cid, cfg, id=f"{cid}-{i}") for cid in CODECS for i, cfg in enumerate(tiny_configs(cid))]


@pytest.fixture(scope="module")
def labels():
    x = np.load(FIXTURE)[:SHAPE[0], :SHAPE[1]].astype(np.float32)
    return x.reshape(-1, x.shape[-1])


def fitted(codec_id, config, x, seed=0, kind="logits"):
    """The codec built from ``config`` and fitted on ``x`` as the writer does it (whole-input
    statistics first when the codec asks for them), and its context."""
    codec = get_codec_class(codec_id).from_config(config)
    classes = x.shape[1]
    ctx = Context(source_kind=kind, classes=classes, seed=seed, label_shape=SHAPE)
    wanted = codec.fit_statistics(SHAPE, classes)
    with RowReader(x) as reader:
        for name, value in compute_fit_statistics(wanted, reader, SHAPE, kind, 64, 0, x.shape[0]).items():
            codec.set_fit_statistic(name, value)
    ctx.rows = np.arange(x.shape[0], dtype=np.int64)
    codec.fit(torch.from_numpy(x), ctx)
    return codec, ctx


def encoded(codec, ctx, x):
    ctx.rows = np.arange(x.shape[0], dtype=np.int64)
    return codec.encode(torch.from_numpy(x), ctx)


def decoded(codec, ctx, streams, rows):
    ctx.rows = np.asarray(rows, dtype=np.int64)
    return codec.decode({k: torch.from_numpy(np.ascontiguousarray(v[rows])) for k, v in streams.items()}, ctx)


# --------------------------------------------------------------------------- registration
def test_the_suite_covers_every_registered_codec():
    assert {"fp16", "fp32", "topk", "sparse", "vq", "sq", "imgprior"} <= set(CODECS)
    assert {c.values[0] for c in cases()} == set(CODECS)


@pytest.mark.parametrize("codec_id", CODECS)
def test_golden_files_exist_and_decode_to_their_committed_output(codec_id):
    entries = golden_entries(codec_id)
    assert entries, f"codec {codec_id!r} has no golden file in spec/golden/MANIFEST.json"
    for entry in entries:
        expected = np.load(os.path.join(GOLDEN, entry["expected"]))
        with slcodec.open(os.path.join(GOLDEN, entry["file"])) as r:
            assert r.codec_id == codec_id
            got = r.decode(None, as_=entry["as"]).numpy()
        assert got.shape == expected.shape and got.dtype == expected.dtype, entry["file"]
        np.testing.assert_allclose(got, expected, rtol=0, atol=entry["atol"], err_msg=entry["file"])


# --------------------------------------------------------------------------- config
def other_values(rule):
    """Values the rule accepts, to find one that changes a codec's config."""
    if isinstance(rule, Int):
        return ([None] if rule.optional else []) + [rule.lo, rule.hi, min(rule.hi, rule.lo + 1)]
    if isinstance(rule, Float):
        mid = rule.lo + (rule.hi - rule.lo) / 2 if math.isfinite(rule.hi - rule.lo) else rule.lo + 1.0
        return [mid, rule.hi if not rule.hi_open else mid]
    if isinstance(rule, FloatList):
        return [[v] for v in other_values(rule.item)]
    if isinstance(rule, Choice):
        return list(rule.values)
    raise AssertionError(f"no values known for rule {rule!r}: teach this suite the new rule type")


@pytest.mark.parametrize("codec_id", CODECS)
def test_config_round_trip_equality_and_repr(codec_id):
    cls = get_codec_class(codec_id)
    for config in [{}] + tiny_configs(codec_id):
        codec = cls.from_config(config)
        cfg = codec.get_config()
        assert msgpack.unpackb(msgpack.packb(cfg), strict_map_key=True) == cfg   # the header can store it
        again = cls.from_config(cfg)
        assert again.get_config() == cfg
        assert again == codec and not again != codec
        assert repr(again) == repr(codec)
        assert eval(repr(codec), {type(codec).__name__: type(codec)}) == codec   # the repr is the constructor
        assert codec != object() and codec != cfg
        with pytest.raises(TypeError):
            hash(codec)
    # one option changed: a different codec
    base = cls.from_config(tiny_configs(codec_id)[0])
    differing = 0
    for opt in cls.options:
        for value in other_values(opt.rule):
            try:
                other = cls.from_config(dict(base.get_config(), **{opt.name: value}))
            except ConfigError:     # a combination the codec refuses: try the next value
                continue
            if other.get_config() != base.get_config():
                assert other != base and repr(other) != repr(base), (opt.name, value)
                differing += 1
                break
    assert differing >= min(1, len(cls.options)), codec_id


# --------------------------------------------------------------------------- encode / decode
def kind_cases():
    """Every case with logits in; each codec's first config with probabilities in too."""
    return [pytest.param(*c.values, "logits", id=c.id + "-logits") for c in cases()] + \
        [pytest.param(cid, tiny_configs(cid)[0], "probs", id=f"{cid}-0-probs") for cid in CODECS]


@pytest.mark.parametrize("codec_id, config, kind", kind_cases())
def test_encode_decode_shapes_and_dtypes(codec_id, config, kind, labels):
    x = labels if kind == "logits" else torch.softmax(torch.from_numpy(labels), 1).numpy()
    n, classes = x.shape
    codec, ctx = fitted(codec_id, config, x, kind=kind)
    specs = codec.stream_specs(classes)
    streams = encoded(codec, ctx, x)
    assert set(streams) == set(specs)
    for name, (dtype, width) in specs.items():
        s = streams[name]
        assert isinstance(s, np.ndarray) and s.dtype == np.dtype(dtype) and s.shape == (n, width), (name, s.shape)
        assert dtype in schema.DTYPES
    params = codec.get_params()
    for name, arr in params.items():
        assert isinstance(name, str) and isinstance(arr, np.ndarray) and arr.dtype.name in schema.DTYPES, name
    codec.validate_streams(streams, classes)

    # what a reader has: the stored config and params, nothing fitted
    reader_codec = get_codec_class(codec_id).from_config(codec.get_config())
    reader_ctx = Context(source_kind=kind, classes=classes, label_shape=SHAPE)
    reader_codec.set_params(params, reader_ctx)
    assert reader_codec == codec
    rows = np.arange(n)
    out = decoded(reader_codec, reader_ctx, streams, rows)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and tuple(out.shape) == (n, classes)
    assert out.device.type == "cpu" and bool(torch.isfinite(out).all())
    assert codec.decoded_kind(kind) in ("logits", "probs")
    if codec.decoded_kind(kind) == "probs":
        torch.testing.assert_close(out.sum(1), torch.ones(n), rtol=0, atol=1e-3)
    assert torch.equal(out, decoded(codec, ctx, streams, rows))
    some = np.array([n - 1, 3, 0, 9])               # random access, any order
    assert torch.equal(decoded(reader_codec, reader_ctx, streams, some), out[some])


@pytest.mark.parametrize("codec_id, config", cases())
def test_two_encodes_give_the_same_bytes(codec_id, config, labels, tmp_path):
    a, ctx_a = fitted(codec_id, config, labels)
    b, ctx_b = fitted(codec_id, config, labels)
    pa, pb = a.get_params(), b.get_params()
    assert pa.keys() == pb.keys()
    for name in pa:
        assert pa[name].dtype == pb[name].dtype and pa[name].tobytes() == pb[name].tobytes(), name
    sa, sb = encoded(a, ctx_a, labels), encoded(b, ctx_b, labels)
    for name in sa:
        assert sa[name].tobytes() == sb[name].tobytes(), name
    # and whole files, through the API: every section the same bytes, the header the same but
    # for the measured times the writer records (codec.info.*_seconds)
    x = labels.reshape(*SHAPE, -1)
    files = [slcodec.encode(x, codec=codec_id, **config) for _ in range(2)]
    (_, ha), (_, hb) = parse(files[0]), parse(files[1])
    assert [(s["name"], s["length"]) for s in ha["sections"]] == [(s["name"], s["length"]) for s in hb["sections"]]
    for sa_, sb_ in zip(ha["sections"], hb["sections"]):
        assert files[0][sa_["offset"]:sa_["offset"] + sa_["length"]] == \
            files[1][sb_["offset"]:sb_["offset"] + sb_["length"]], sa_["name"]
    timed = {k for h in (ha, hb) for k in h["codec"].get("info", {}) if k.endswith("_seconds")}
    for h in (ha, hb):
        h["codec"]["info"] = {k: v for k, v in h["codec"].get("info", {}).items() if k not in timed}
    assert ha == hb


# --------------------------------------------------------------------------- hostile configs
def hostile_values(rule):
    """Values just outside the rule and of other types; each one the rule must refuse."""
    if isinstance(rule, Int):
        out = [rule.lo - 1, rule.hi + 1, float(rule.lo), True, str(rule.lo), math.nan, [rule.lo], 2**70]
        return out + ([] if rule.optional else [None])
    if isinstance(rule, Float):
        below = rule.lo if rule.lo_open else np.nextafter(rule.lo, -math.inf)
        above = rule.hi if rule.hi_open else np.nextafter(rule.hi, math.inf)
        return [float(below), float(above), math.nan, math.inf, -math.inf, True, str(rule.hi), None, [rule.lo]]
    if isinstance(rule, FloatList):
        ok = other_values(rule.item)[0]
        out = [[ok] * (rule.max_items + 1), "ab", None, {"a": ok}]
        out += [[] for _ in range(1) if rule.min_items >= 1]
        return out + [[v] for v in hostile_values(rule.item) if not isinstance(v, list) and v is not None]
    if isinstance(rule, Choice):
        return ["not-" + str(rule.values[0]), str(rule.values[0]).upper() + "!", 1, None, [rule.values[0]]]
    raise AssertionError(f"no hostile values known for rule {rule!r}: teach this suite the new rule type")


def _refused(rule, value):
    try:
        rule.check(value)
    except (ValueError, TypeError, OverflowError):
        return True
    return False


def _storable(value):
    try:
        msgpack.packb(value)
        return True
    except (OverflowError, TypeError, ValueError):
        return False


@pytest.mark.parametrize("codec_id", CODECS)
def test_hostile_config_values_are_refused(codec_id, tmp_path):
    cls = get_codec_class(codec_id)
    entry = next(e for e in golden_entries(codec_id) if "shards" not in e)
    base = stored_config(entry)
    data = open(os.path.join(GOLDEN, entry["file"]), "rb").read()
    _, header = parse(data)
    path = str(tmp_path / "hostile.vqsl")

    def through_a_file(config):
        h = dict(header, codec=dict(header["codec"], config=config))
        with open(path, "wb") as f:
            f.write(rebuild(data, header=h))
        with pytest.raises(FormatError) as e:
            with slcodec.open(path) as r:
                r.decode(None)
        return e.value

    tried = 0
    for opt in cls.options:
        for value in hostile_values(opt.rule):
            assert _refused(opt.rule, value), (opt.name, value)       # the generator is right
            with pytest.raises(ConfigError, match=opt.name):
                cls.from_config(dict(base, **{opt.name: value}))
            if _storable(value):
                err = through_a_file(dict(base, **{opt.name: value}))
                assert err.rule == rules.CODEC and opt.name in str(err), (opt.name, value, err)
            tried += 1
    assert tried >= 5 * len(cls.options)
    # a key the codec does not know
    with pytest.raises(ConfigError, match="no_such_option"):
        cls.from_config(dict(base, no_such_option=1))
    assert through_a_file(dict(base, no_such_option=1)).rule == rules.CODEC
