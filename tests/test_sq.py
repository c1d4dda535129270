"""The ``sq`` codec: companded scalar quantisation of log-probabilities (format 1.4)."""
import numpy as np
import pytest
import torch

import slcodec
from slcodec import cli
from slcodec.codecs.base import Context
from slcodec.codecs.sq import ScalarQuantCodec, bin_centroids, fit_edges
from slcodec.format.container import Container, ContainerWriter, StreamBuilder
from slcodec.errors import ConfigError, FormatError

from craft import assert_rejected, rewrite_file

FIXTURE = slcodec.__path__[0] + "/data/lite0_8x64_fp16.npy"
GOLDEN = slcodec.__path__[0] + "/../spec/golden/v1.4-sq-b3-logits.vqsl"


def _labels(classes=None):
    x = np.load(FIXTURE).astype(np.float32)                     # [8, 64, 1000] real teacher logits
    if classes is not None:     # a small label space: the classes holding most of the fixture's mass
        top = np.argsort(-torch.softmax(torch.from_numpy(x), -1).sum((0, 1)).numpy(), kind="stable")[:classes]
        x = x[..., np.sort(top)]
    return x


def _kl(x, q, t=1.0):
    p = torch.log_softmax(torch.from_numpy(x.reshape(-1, x.shape[-1])) / t, 1)
    q = torch.log_softmax(q.reshape(p.shape) / t, 1)
    return float((p.exp() * (p - q)).sum(1).mean())


def rewrite_streams(src, out, streams, config=None):
    """``src`` rewritten to ``out`` with the named streams replaced (valid checksums)."""
    with Container.open(src) as c:
        header = {k: v for k, v in c.header.items() if k != "sections"}
        header["codec"] = dict(header["codec"], config=dict(header["codec"]["config"], **(config or {})))
        with ContainerWriter(str(out), verify=False) as cw:
            for sec in c.header["sections"]:
                name = sec["name"]
                if sec["kind"] == "array":
                    cw.add_array(name, c.read_array(name))
                elif sec["kind"] == "msgpack":
                    cw.add_msgpack(name, c.read_msgpack(name))
                else:
                    rows = streams.get(name[len("streams/"):], None)
                    if rows is None:
                        rows = c.stream(name).read_rows(0, sec["rows"])
                    b = StreamBuilder(rows.dtype, rows.shape[1])
                    b.append(rows)
                    cw.add_stream(name, b)
            cw.commit(header, minor=c.preamble.minor)


# ---------------------------------------------------------------------------------- fitting
def test_lloyd_edges_lower_the_companded_error_of_the_quantiles():
    lp = torch.log_softmax(torch.from_numpy(_labels(10).reshape(-1, 10)), 1).double().numpy().reshape(-1)
    s = np.sqrt(-np.minimum(lp, 0))
    L = 8
    errs = {}
    for method in ("quantile", "lloyd"):
        edges = fit_edges(s, L, method)
        assert edges.shape == (L - 1,) and bool((np.diff(edges) >= 0).all())
        idx = np.searchsorted(edges, s, side="right")
        means = np.array([s[idx == j].mean() for j in range(L)])
        errs[method] = float(((s - means[idx]) ** 2).mean())
        cent = bin_centroids(s, lp, edges)
        assert cent.dtype == np.float32 and bool((np.diff(cent) <= 0).all()) and float(cent.max()) <= 0
    assert errs["lloyd"] < 0.9 * errs["quantile"]


# ---------------------------------------------------------------------------------- codec
@pytest.mark.parametrize("source", ["logits", "probs"])
def test_argmax_kept_and_fidelity_grows_with_bits(source, tmp_path):
    x = _labels(10)
    inp = x if source == "logits" else torch.softmax(torch.from_numpy(x), -1).numpy()
    kls = {}
    for bits in (2, 3, 4, 6):
        p = tmp_path / f"b{bits}.vqsl"
        slcodec.encode(inp, p, codec="sq", bits_per_class=bits)
        with slcodec.open(p) as r:
            assert r.codec_id == "sq" and r.container.preamble.minor == 4
            q = r.decode(None, as_="logits")
            assert bool(torch.isfinite(q).all())
            assert torch.equal(q.argmax(-1), torch.from_numpy(x).argmax(-1))   # first maximum on ties
        kls[bits] = (_kl(x, q), _kl(x, q, 4.0))
    for lo, hi in ((2, 3), (3, 4), (4, 6)):
        assert kls[hi][0] < kls[lo][0] and kls[hi][1] < kls[lo][1]
    assert kls[6][0] < 0.01


def test_decoded_values_are_the_centroids_of_the_levels(tmp_path):
    x = _labels(10).reshape(-1, 10)
    slcodec.encode(x, tmp_path / "s.vqsl", codec="sq", bits_per_class=3)
    with slcodec.open(tmp_path / "s.vqsl") as r:
        z = r.decode(None, as_="logits")
        cent = r.container.read_array("params/centroids")
        levels = torch.from_numpy(r.streams["levels"].read_rows(0, len(x)).astype(np.int64))
        top1 = r.streams["top1"].read_rows(0, len(x)).reshape(-1).astype(np.int64)
    want = torch.from_numpy(cent.copy())[levels]
    fixed = top1 > 0
    assert torch.equal(z[~torch.from_numpy(fixed)], want[~torch.from_numpy(fixed)])
    # the fixed rows differ from the centroids at the stored class only, lifted by the margin
    rows = np.flatnonzero(fixed)
    assert rows.size > 0                             # 8 levels for 10 classes: ties on the top level happen
    c = top1[rows] - 1
    np.testing.assert_allclose(z[rows, c].numpy(), want[rows].max(1).values.numpy() + 0.1, rtol=0, atol=1e-6)
    # the true top class is on the row's lowest level, so a fix is needed only on a shared level
    lev = levels.numpy()
    assert (lev[np.arange(len(x)), x.argmax(1)] == lev.min(1)).all()
    assert ((lev == lev.min(1, keepdims=True)).sum(1)[rows] > 1).all()


def test_extreme_inputs_decode_finite(tmp_path):
    x = _labels(10).reshape(-1, 10)[:64].copy()
    x[0] = -1e9
    x[0, 3] = 0                        # masked logits: one class holds everything
    x[1] = 5.0                         # all equal: the first class is the top
    x[2, :5] = 1e4
    slcodec.encode(x, tmp_path / "e.vqsl", codec="sq", bits_per_class=2)
    with slcodec.open(tmp_path / "e.vqsl") as r:
        q = r.decode(None, as_="probs")
    assert bool(torch.isfinite(q).all())
    assert torch.equal(q.argmax(1), torch.from_numpy(x).argmax(1))


def test_encode_is_deterministic(tmp_path):
    x = _labels(10)
    out = []
    for i in range(2):
        slcodec.encode(x, tmp_path / f"d{i}.vqsl", codec="sq", bits_per_class=4, quantiser="quantile")
        with Container.open(tmp_path / f"d{i}.vqsl") as c:
            out.append((c.read_array("params/centroids"), c.stream("streams/levels").read_rows(0, 512),
                        c.stream("streams/top1").read_rows(0, 512)))
    for a, b in zip(*out):
        assert np.array_equal(a, b)


def test_random_access_and_sharded(tmp_path):
    x = _labels(10)
    slcodec.encode(x, tmp_path / "one.vqsl", codec="sq", bits_per_class=3)
    slcodec.encode(x, tmp_path / "set.vqsl", codec="sq", bits_per_class=3, shard_rows=100)
    with slcodec.open(tmp_path / "one.vqsl") as a, slcodec.open(tmp_path / "set.vqsl") as b:
        full = a.decode(None)
        assert torch.equal(full, b.decode(None))
        idx = np.array([511, 3, 200, 3])
        assert torch.equal(a.decode(idx), full.reshape(-1, 10)[idx])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_on_cuda_matches_cpu(tmp_path):
    x = _labels(10)
    slcodec.encode(x, tmp_path / "c.vqsl", codec="sq", bits_per_class=4, device="cuda")
    with slcodec.open(tmp_path / "c.vqsl") as r:
        a = r.decode(None, as_="logits")
        b = r.decode(None, as_="logits", device="cuda").cpu()
    assert torch.equal(a, b)
    assert torch.equal(a.argmax(-1), torch.from_numpy(x).argmax(-1))


def test_cli_encodes_with_the_codec_options(tmp_path, capsys):
    src = tmp_path / "x.npy"
    np.save(src, _labels(10))
    out = tmp_path / "x.vqsl"
    assert cli.main(["encode", str(src), "-o", str(out), "--codec", "sq", "--bits-per-class", "5"]) == 0
    with slcodec.open(out) as r:
        assert r.header["codec"]["config"]["bits_per_class"] == 5
    assert cli.main(["verify", str(out)]) == 0


# ---------------------------------------------------------------------------------- checks
@pytest.mark.parametrize("opts", [
    {"bits_per_class": 1}, {"bits_per_class": 7}, {"bits_per_class": True}, {"bits_per_class": 3.0},
    {"bits_per_class": "3"}, {"top1_margin": 0}, {"top1_margin": -1.0}, {"top1_margin": 17.0},
    {"top1_margin": float("nan")}, {"top1_margin": float("inf")}, {"quantiser": "kmeans"},
    {"fit_sample": 0}, {"fit_sample": 1.5}, {"nope": 1}])
def test_bad_config_is_refused(opts):
    with pytest.raises(ConfigError):
        ScalarQuantCodec(**opts)


def test_numpy_integers_are_taken_as_ints():
    codec = ScalarQuantCodec(bits_per_class=np.int64(4), fit_sample=np.uint16(50))
    assert type(codec.get_config()["bits_per_class"]) is int and codec.levels == 16


def test_params_are_checked():
    ctx = Context(classes=10)
    good = np.array([-0.1, -1, -2, -3, -5, -8, -12, -20], np.float32)
    ScalarQuantCodec(bits_per_class=3).set_params({"centroids": good}, ctx)
    bad = [good.astype(np.float64), good[:7], np.r_[good, good].astype(np.float32),
           np.where(np.arange(8) == 2, np.nan, good).astype(np.float32),
           np.where(np.arange(8) == 7, -np.inf, good).astype(np.float32),
           np.where(np.arange(8) == 0, 0.5, good).astype(np.float32),       # a positive log-probability
           np.where(np.arange(8) == 7, -2e4, good).astype(np.float32),      # below the floor
           good[::-1].copy()]                                               # increasing
    for a in bad:
        with pytest.raises(FormatError) as ei:
            ScalarQuantCodec(bits_per_class=3).set_params({"centroids": a}, ctx)
        assert ei.value.rule == "codec-params"
    with pytest.raises(FormatError):
        ScalarQuantCodec(bits_per_class=3).set_params({"centroids": good, "extra": good}, ctx)
    with pytest.raises(FormatError):
        ScalarQuantCodec(bits_per_class=3).set_params({}, ctx)


def test_streams_are_checked():
    codec = ScalarQuantCodec(bits_per_class=3)
    levels = np.array([[1, 2, 7]], np.uint8)
    codec.validate_streams({"levels": levels, "top1": np.array([[3]], np.uint16)}, 3)
    for lv, t in ((np.array([[1, 8, 7]], np.uint8), 0), (levels, 4)):
        with pytest.raises(FormatError) as ei:
            codec.validate_streams({"levels": lv, "top1": np.array([[t]], np.uint16)}, 3)
        assert ei.value.rule == "codec-streams"


@pytest.mark.parametrize("case, rule", [
    ("bits_outside", "codec"), ("bits_float", "codec"), ("margin_zero", "codec"), ("unknown_key", "codec"),
    ("centroids_nan", "codec-params"), ("centroids_increasing", "codec-params"),
    ("centroids_missing", "codec-params"), ("top1_above_c", "codec-streams"), ("level_above_l", "codec-streams")])
def test_hostile_files_are_rejected(case, rule, tmp_path):
    with Container.open(GOLDEN) as c:
        cent = c.read_array("params/centroids")
        levels = c.stream("streams/levels").read_rows(0, c.header["labels"]["count"])
        top1 = c.stream("streams/top1").read_rows(0, c.header["labels"]["count"])
    out = tmp_path / f"{case}.vqsl"
    if case == "top1_above_c":
        top1 = top1.copy()
        top1[1, 0] = 1001
        rewrite_streams(GOLDEN, out, {"top1": top1})
    elif case == "level_above_l":
        lv = levels.copy()
        lv[0, 5] = 8                     # 3 bits: levels 0..7
        rewrite_streams(GOLDEN, out, {"levels": lv})
    else:
        kw = {"bits_outside": {"config": {"bits_per_class": 7}},
              "bits_float": {"config": {"bits_per_class": 3.0}},
              "margin_zero": {"config": {"top1_margin": 0.0}},
              "unknown_key": {"config": {"shape": "x"}},
              "centroids_nan": {"params": {"centroids": np.where(np.arange(8) == 3, np.nan, cent).astype(np.float32)}},
              "centroids_increasing": {"params": {"centroids": cent[::-1].copy()}},
              "centroids_missing": {"params": {"centroids": None}}}[case]
        rewrite_file(GOLDEN, str(out), minor=4, **kw)
    assert_rejected(out, rule)


def test_golden_rewrite_without_edits_decodes_alike(tmp_path):
    out = tmp_path / "same.vqsl"
    rewrite_streams(GOLDEN, out, {})
    with slcodec.open(out) as a, slcodec.open(GOLDEN) as b:
        assert torch.equal(a.decode(None), b.decode(None))
