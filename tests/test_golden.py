"""Released golden files keep decoding, byte for byte, to what they decoded to when released."""
import io
import json
import os
from contextlib import redirect_stdout

import numpy as np
import pytest

import slcodec
from slcodec import cli

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "spec", "golden")
MANIFEST = json.load(open(os.path.join(GOLDEN, "MANIFEST.json")))


def test_every_codec_has_a_golden_file():
    from slcodec.codecs import codec_ids
    assert set(codec_ids()) <= {entry["codec"] for entry in MANIFEST.values()}


def test_manifest_lists_every_file():
    files = {f for f in os.listdir(GOLDEN) if f.endswith(".vqsl")}
    # a sharded set (format 1.1) is its manifest ("file") and the shards beside it ("shards")
    assert files == {e["file"] for e in MANIFEST.values()} | {s for e in MANIFEST.values() for s in e.get("shards", [])}


def test_sharded_golden_sets_list_their_shards():
    for name, entry in MANIFEST.items():
        if "shards" in entry:
            with slcodec.open(os.path.join(GOLDEN, entry["file"])) as r:
                assert [e["file"] for e in r.entries] == entry["shards"]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_decodes(name):
    entry = MANIFEST[name]
    expected = np.load(os.path.join(GOLDEN, entry["expected"]))
    with slcodec.open(os.path.join(GOLDEN, entry["file"])) as r:
        assert r.codec_id == entry["codec"]
        got = r.decode(None, as_=entry["as"]).numpy()
    assert got.shape == expected.shape
    if entry["atol"] == 0:
        assert np.array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=entry["atol"])


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_verifies(name):
    assert cli.main(["verify", os.path.join(GOLDEN, MANIFEST[name]["file"])]) == 0


def test_verify_detects_every_single_byte_change(tmp_path):
    """Flip each byte of the smallest golden file in turn: `slcodec verify` must exit 1 every time.
    (Single files only: a manifest copied alone would fail for its missing shards; sharded sets
    are tested below with their shards beside them.)"""
    entry = min((e for e in MANIFEST.values() if "shards" not in e),
                key=lambda e: os.path.getsize(os.path.join(GOLDEN, e["file"])))
    data = open(os.path.join(GOLDEN, entry["file"]), "rb").read()
    p = str(tmp_path / "flipped.vqsl")
    missed = []
    sink = io.StringIO()
    for pos in range(len(data)):
        b = bytearray(data)
        b[pos] ^= 0xFF
        with open(p, "wb") as f:
            f.write(b)
        with redirect_stdout(sink):
            if cli.main(["verify", p]) != 1:
                missed.append(pos)
    assert len(data) > 1000
    assert missed == []


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if "shards" in e))
def test_verify_detects_every_single_byte_change_in_a_sharded_set(name, tmp_path):
    """Every byte of the manifest, and every byte of its first shard, flipped in turn (the other
    files of the set beside it, intact): `slcodec verify MANIFEST` must exit 1 every time."""
    import shutil
    entry = MANIFEST[name]
    for f in [entry["file"], *entry["shards"]]:
        shutil.copy(os.path.join(GOLDEN, f), tmp_path / f)
    manifest = str(tmp_path / entry["file"])
    sink = io.StringIO()
    with redirect_stdout(sink):
        assert cli.main(["verify", manifest]) == 0
    for target in (entry["file"], entry["shards"][0]):
        p = tmp_path / target
        data = p.read_bytes()
        missed = []
        for pos in range(len(data)):
            b = bytearray(data)
            b[pos] ^= 0xFF
            p.write_bytes(bytes(b))
            with redirect_stdout(sink):
                if cli.main(["verify", manifest]) != 1:
                    missed.append(pos)
        p.write_bytes(data)
        assert missed == [], target
