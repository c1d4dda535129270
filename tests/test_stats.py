"""`stats` accounts for every byte of the file."""
import os

import numpy as np
import pytest

import slcodec
from slcodec.format.container import Container
from slcodec.format.stats import file_stats, topk_bits_per_label


@pytest.mark.parametrize("codec,opts", [("fp16", {}), ("fp32", {}), ("topk", {"k": 7})])
def test_sections_add_up_to_the_file(real_labels, tmp_path, codec, opts):
    p = tmp_path / "x.vqsl"
    slcodec.encode(real_labels[:3, :10], p, codec=codec, **opts)
    with Container.open(p) as c:
        s = file_stats(c)
    size = os.path.getsize(p)
    assert s["file_bytes"] == size
    assert sum(e["bytes"] for e in s["sections"]) == size
    assert sum(g["bytes"] for g in s["groups"].values()) == size
    assert s["labels"] == 30 and s["images"] == 3 and s["augmentations_per_image"] == 10
    assert s["bits_per_label"] == size * 8 / 30
    assert s["bits_per_image"] == size * 8 / 3
    assert s["baselines"]["fp16"]["ratio"] == pytest.approx(16 * 1000 * 30 / (size * 8))
    streams = sum(e["bytes"] for e in s["sections"] if e["name"].startswith("streams/"))
    assert s["marginal_bits_per_label"] == streams * 8 / 30
    assert s["fixed_bytes"] == size - streams


def test_topk_baseline_bits():
    # 1000 classes: ids take 10 bits, values 16 (SOFT_LABELS.md: 26 k bits)
    assert topk_bits_per_label(1000, 5) == 130
    assert topk_bits_per_label(10, 1) == 20


def test_flat_label_set_has_no_images(tmp_path):
    p = tmp_path / "x.vqsl"
    slcodec.encode(np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32), p, codec="fp32")
    with Container.open(p) as c:
        s = file_stats(c)
    assert s["images"] is None and s["bits_per_image"] is None


def test_seeded_views_cost_no_bits_per_view(real_labels, tmp_path):
    from slcodec.augment import Policy, augment_record
    p = tmp_path / "x.vqsl"
    slcodec.encode(real_labels[:2, :8], p, codec="fp16", augment=augment_record(7, Policy()))
    with Container.open(p) as c:
        a = file_stats(c)["augmentation"]
    assert a["mode"] == "seeded" and a["bits_per_view"] == 0 and 0 < a["record_bytes"] <= 512


def test_explicit_records_are_counted_per_view(tmp_path):
    from test_importers import make_sre2l
    from slcodec.frameworks.importers import import_folder
    folder = tmp_path / "relabel"
    make_sre2l(folder)
    out = tmp_path / "x.vqsl"
    import_folder(folder, out, "sre2l", codec="fp16")
    with Container.open(out) as c:
        s = file_stats(c)
    per_view = sum(e["bytes"] for e in s["sections"] if e["name"].startswith("augment/"))
    assert per_view > 0
    assert s["augmentation"]["mode"] == "explicit"
    assert s["augmentation"]["bits_per_view"] == per_view * 8 / s["labels"]
