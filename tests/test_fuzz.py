"""Mutation fuzzing of valid files: the reader raises only FormatError, and never lets a change through.

The number of cases follows the hypothesis profile (SLCODEC_HYPOTHESIS_PROFILE); the long run
is `python benchmarks/fuzz.py --cases 100000`.
"""
import os

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slcodec.errors import FormatError

from craft import parse, rebuild
from test_attacks import full_read

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "spec", "golden")
SEEDS = {name: open(os.path.join(GOLDEN, name), "rb").read()
         for name in ("v1.0-topk5-logits.vqsl", "v1.0-fp16-logits.vqsl")}


@st.composite
def mutations(draw, size):
    kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "splice"]))
    pos = draw(st.integers(0, size - 1))
    if kind == "flip":
        return (kind, pos, draw(st.integers(1, 255)))
    if kind == "set":
        return (kind, pos, draw(st.binary(min_size=1, max_size=16)))
    if kind == "truncate":
        return (kind, pos, None)
    if kind == "insert":
        return (kind, pos, draw(st.binary(min_size=1, max_size=64)))
    if kind == "delete":
        return (kind, pos, draw(st.integers(1, 64)))
    return (kind, pos, draw(st.integers(0, size - 1)))  # splice: copy a run of the file elsewhere


def apply(data: bytes, muts) -> bytes:
    b = bytearray(data)
    for kind, pos, arg in muts:
        pos = min(pos, max(len(b) - 1, 0))
        if kind == "flip" and b:
            b[pos] ^= arg
        elif kind == "set":
            b[pos:pos + len(arg)] = arg
        elif kind == "truncate":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = arg
        elif kind == "delete":
            del b[pos:pos + arg]
        elif kind == "splice" and b:
            src = min(arg, len(b) - 1)
            b[pos:pos + 32] = b[src:src + 32]
    return bytes(b)


def check(path, data, original):
    with open(path, "wb") as f:
        f.write(data)
    try:
        full_read(path)
    except FormatError:
        return "rejected"
    # Accepted: only the untouched file may be.
    assert data == original, "a changed file was accepted"
    return "accepted"


@pytest.mark.parametrize("seed_name", sorted(SEEDS))
@given(data=st.data())
def test_mutated_files_raise_only_format_errors(tmp_path_factory, seed_name, data):
    original = SEEDS[seed_name]
    muts = data.draw(st.lists(mutations(len(original)), min_size=1, max_size=4))
    path = str(tmp_path_factory.mktemp("fuzz") / "m.vqsl")
    check(path, apply(original, muts), original)


hostile_ints = st.one_of(st.integers(-2**63, -1), st.integers(0, 2**64 - 1),
                         st.sampled_from([0, 1, 63, 64, 65, 2**31, 2**32, 2**62, 2**64 - 1]))


@given(data=st.data())
def test_hostile_header_values_with_valid_checksums(tmp_path_factory, data):
    """Header fields replaced by hostile numbers, checksums recomputed so only the rules can catch them."""
    original = SEEDS["v1.0-topk5-logits.vqsl"]
    _, h = parse(original)
    targets = [("labels", None, k) for k in ("count", "classes")] + \
              [("sections", i, k) for i in range(len(h["sections"]))
               for k in ("offset", "length", "rows", "width", "chunk_rows", "crc32") if k in h["sections"][i]]
    for _ in range(data.draw(st.integers(1, 3))):
        where, idx, key = data.draw(st.sampled_from(targets))
        value = data.draw(hostile_ints)
        (h[where] if idx is None else h[where][idx])[key] = value
    try:
        header_bytes = msgpack.packb(h, use_bin_type=True)
    except OverflowError:
        return  # msgpack cannot carry the number at all
    path = str(tmp_path_factory.mktemp("fuzz") / "h.vqsl")
    data_out = rebuild(original, header_bytes=header_bytes)
    with open(path, "wb") as f:
        f.write(data_out)
    try:
        full_read(path)
    except FormatError:
        return
    # Accepted: a header change can be harmless (say, a larger chunk_rows on a one-chunk stream);
    # then every label must decode exactly as from the original.
    import numpy as np
    import slcodec
    ref = str(tmp_path_factory.mktemp("fuzz") / "ref.vqsl")
    with open(ref, "wb") as f:
        f.write(original)
    with slcodec.open(ref) as a, slcodec.open(path) as b:
        assert a.shape == b.shape
        assert np.array_equal(a.decode(None).numpy(), b.decode(None).numpy())
