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
    assert files == {e["file"] for e in MANIFEST.values()}


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
    """Flip each byte of the smallest golden file in turn: `slcodec verify` must exit 1 every time."""
    entry = min(MANIFEST.values(), key=lambda e: os.path.getsize(os.path.join(GOLDEN, e["file"])))
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
