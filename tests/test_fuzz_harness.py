"""The structural fuzzer's own parts (benchmarks/fuzz_model.py, fuzz_mutate.py, fuzz_check.py):
the model puts every golden file back together byte for byte, the independent checker passes
every golden file and flags every committed hostile file, and a few structural cases run
through the fuzzer's target end in an accepted or a rejected verdict (the long run is
`nice -n 19 python benchmarks/fuzz.py --cases 100000`)."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))

from fuzz_check import violations  # noqa: E402
from fuzz_model import parse, serialize  # noqa: E402
from fuzz_structural import case_plan, classify, golden_seeds  # noqa: E402

SEEDS = golden_seeds()
ATTACKS = os.path.join(HERE, "attacks")


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_model_round_trips_golden_files(name):
    files, _ = SEEDS[name]
    for data in files.values():
        assert serialize(parse(data)) == data


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_checker_passes_golden_files(name):
    files, main = SEEDS[name]
    assert violations(files, main) == []


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(ATTACKS) if f.endswith(".vqsl")))
def test_checker_flags_every_hostile_file(name):
    data = open(os.path.join(ATTACKS, name), "rb").read()
    problems = [p for p in violations({name: data}, name) if not p.startswith("note:")]
    assert problems, f"{name} breaks rule {name.split('--')[0]} but the checker found nothing"


def test_checker_flags_a_non_finite_fp16_value(tmp_path):
    """A consistent file (every checksum right) whose one stored value is NaN."""
    import numpy as np
    v = parse(SEEDS["v1.0-fp16-logits.vqsl"][0]["v1.0-fp16-logits.vqsl"])
    s = v.section("streams/values")
    a = s.rows_array().copy()
    a[2, 7] = np.nan
    s.store_rows(a)
    data = serialize(v)
    assert any("non-finite" in p for p in violations({"f.vqsl": data}, "f.vqsl"))


def test_structural_cases_end_in_a_verdict(tmp_path):
    from fuzz_mutate import build, load_seed, make_case
    seeds = {n: load_seed(files, main) for n, (files, main) in SEEDS.items()}
    donors = [c.files[c.main] for c in seeds.values()]
    names = sorted(seeds)
    seen = set()
    for i in range(3 * len(names)):
        name, steps = case_plan(12, i, names)
        case, descs = make_case(seeds[name], steps, donors)
        files = build(case)
        d = tmp_path / f"c{i}"
        d.mkdir()
        for n, data in files.items():
            (d / n).write_bytes(data)
        cls, detail, _ = classify(files, case.main, str(d / case.main))
        assert cls in ("accepted", "rejected"), f"case {i} {name} {descs}: {cls}: {detail}"
        seen.add(cls)
    assert seen == {"accepted", "rejected"}


# --------------------------------------------------------------------------- formats 1.5 and 1.6
def _edited(seed, edit):
    """The golden file ``seed`` taken apart, edited by ``edit(vfile)`` and put back (checksums right)."""
    v = parse(SEEDS[seed][0][seed])
    edit(v)
    return {"f.vqsl": serialize(v)}


def _slcodec_rule(files, tmp_path):
    """The rule slcodec's reader (open, decode, verify) rejects the file by, or None."""
    import slcodec
    from slcodec.errors import FormatError
    p = tmp_path / "f.vqsl"
    p.write_bytes(files["f.vqsl"])
    try:
        with slcodec.open(str(p)) as r:
            r.decode(None)
            problems = r.container.verify()
    except FormatError as exc:
        return exc.rule
    return "verify" if problems else None


def _set_array(v, name, arr):
    s = v.section(name)
    s.entry.update(dtype=arr.dtype.name, shape=list(arr.shape))
    s.data = arr.tobytes()


def _array(v, name):
    import numpy as np
    s = v.section(name)
    return np.frombuffer(s.data, s.entry["dtype"]).reshape(s.entry["shape"]).copy()


def _int8_cases():
    import numpy as np
    from fuzz_model import Section

    def scale(name, value):
        def edit(v):
            a = _array(v, name)
            a[0] = value
            _set_array(v, name, a)
        return edit

    def drop(name):
        return lambda v: v.sections.remove(v.section(name))

    def retype(name, dtype):
        return lambda v: _set_array(v, name, _array(v, name).astype(dtype))

    def reshape_scale(v):
        _set_array(v, "params/w_out_scale", _array(v, "params/w_out_scale")[:-1])

    def weight_float(v):  # a weight of another dtype than int8
        _set_array(v, "params/w_in", _array(v, "params/w_in").astype(np.float16))

    def extra_scale(v):   # a scale beside float16 weights (the float16 vq golden file)
        v.sections.insert(1, Section({"name": "params/b_in_scale", "kind": "array", "dtype": "float32",
                                      "shape": [32]}, np.ones(32, np.float32).tobytes()))
    return {"scale-zero": scale("params/w_in_scale", 0.0), "scale-negative": scale("params/codebooks_scale", -1.0),
            "scale-nan": scale("params/w_out_scale", np.nan), "scale-inf": scale("params/w_h0_scale", np.inf),
            "scale-overflows-dequantised": scale("params/w_out_scale", 3.0e38),
            "scale-missing": drop("params/w_h0_scale"), "scale-float16": retype("params/w_in_scale", np.float16),
            "scale-shape": reshape_scale, "bias-float32": retype("params/b_out", np.float32),
            "weight-float16": weight_float, "extra-scale": extra_scale}


@pytest.mark.parametrize("case", sorted(_int8_cases()))
def test_checker_flags_hostile_int8_vq_params(case, tmp_path):
    """FORMAT.md's vq int8 rejections (format 1.5), each a consistent file: the checker and
    slcodec's reader both reject it as codec-params (or, for an overflow, the logit bound)."""
    files = _edited("v1.5-vq-int8-logits.vqsl", _int8_cases()[case])
    problems = violations(files, "f.vqsl")
    assert problems and all(p.startswith("codec-params") for p in problems), problems
    assert _slcodec_rule(files, tmp_path) == "codec-params"


def _rans_cases():
    import numpy as np
    import fuzz_rans
    from fuzz_model import crc

    def codes(v):
        return v.section("streams/codes")

    def words(fn):
        def edit(v):
            codes(v).chunks[0] = fn(codes(v).chunks[0])
        return edit

    def table(fn):
        def edit(v):
            s = codes(v)
            g = fuzz_rans.read_table(s.model, s.entry["width"], s.entry["rans"]["alphabet"]).copy()
            fn(g)
            s.model = fuzz_rans.pack_table(g)
            s.entry["rans"].update(model_bytes=len(s.model), model_crc32=crc(s.model))
        return edit

    def zero_top(g):  # the most frequent symbol's mass moved: it decodes with g = 0
        top = int(np.argmax(g[0]))
        g[0, (top + 1) % g.shape[1]] += g[0, top]
        g[0, top] = 0

    def rans(**kw):
        return lambda v: codes(v).entry["rans"].update(kw)

    def meta(**kw):
        return lambda v: codes(v).entry.update(kw)

    def no_flag(v):
        v.pre["required_flags"] = 0
    return {"no-required-bit-2": no_flag, "trailing-zero-word": words(lambda c: c + bytes(4)),
            "word-dropped": words(lambda c: c[:-4]), "first-word-dropped": words(lambda c: c[4:]),
            "odd-length": words(lambda c: c + b"\x01"), "table-sum": table(lambda g: g.__setitem__((1, 0), g[1, 0] + 1)),
            "table-zero-for-a-decoded-symbol": table(zero_top),
            "table-over-65536": table(lambda g: g.__setitem__((0, slice(None)), [65537, 2**32 - 1] + [0] * (g.shape[1] - 2))),
            "group-phase": rans(group_phase=64), "model-crc": rans(model_crc32=1),
            "counters-over-cap": lambda v: (rans(alphabet=256, group_rows=1)(v), meta(chunk_rows=20000)(v)),
            "chunk-rows-over-cap": meta(chunk_rows=70000), "alphabet-over-dtype": rans(alphabet=300),
            "filters": meta(filters=["transpose"])}


@pytest.mark.parametrize("case", sorted(_rans_cases()))
def test_checker_flags_hostile_rans_streams(case, tmp_path):
    """FORMAT.md's rans rules (format 1.6), each broken in a consistent copy of the golden file: the
    checker's plain decoder and slcodec's reader both reject it."""
    files = _edited("v1.6-vq-rans-logits.vqsl", _rans_cases()[case])
    problems = violations(files, "f.vqsl")
    assert problems and all(p.split(":")[0] in ("section-content", "section-crc") for p in problems), problems
    assert _slcodec_rule(files, tmp_path) in ("section-content", "section-crc")


@pytest.mark.parametrize("group_rows,phase,inc,chunk_rows", [(64, 0, 16384, 4096), (7, 3, 65536, 50), (0, 0, 0, 33),
                                                             (1, 0, 256, 64)])
def test_model_recodes_rans_rows_as_slcodec_reads_them(group_rows, phase, inc, chunk_rows, tmp_path):
    """The model's rows of the golden rans stream are slcodec's; re-coded under other groups,
    increments and chunks they still decode (slcodec and the checker) to the same rows, and a code
    >= K coded rans is flagged by both (codec-streams)."""
    import numpy as np
    from slcodec.format.container import Container
    v = parse(SEEDS["v1.6-vq-rans-logits.vqsl"][0]["v1.6-vq-rans-logits.vqsl"])
    s = v.section("streams/codes")
    rows = s.rows_array()
    with Container.open(os.path.join(HERE, "..", "spec", "golden", "v1.6-vq-rans-logits.vqsl")) as c:
        np.testing.assert_array_equal(rows, c.stream("streams/codes").read_rows(0, 256))
    s.entry["rans"].update(group_rows=group_rows, group_phase=phase, increment=inc)
    s.store_rows(rows, chunk_rows=chunk_rows)
    assert s.entry["coding"] == "rans" and s.entry["rans"]["increment"] == inc
    files = {"f.vqsl": serialize(v)}
    assert violations(files, "f.vqsl") == []
    (tmp_path / "f.vqsl").write_bytes(files["f.vqsl"])
    with Container.open(str(tmp_path / "f.vqsl")) as c:
        np.testing.assert_array_equal(c.stream("streams/codes").read_rows(0, 256), rows)
        assert c.verify() == []
    bad = rows.copy()
    bad[5, 1] = 16   # K = 16
    s.store_rows(bad)
    files = {"f.vqsl": serialize(v)}
    assert s.entry["rans"]["alphabet"] == 17
    assert any(p.startswith("codec-streams") for p in violations(files, "f.vqsl"))
    assert _slcodec_rule(files, tmp_path) == "codec-streams"
