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
