"""Seeded augmentation parameters: pinned values, cross-process identity, order independence, sanity."""
import hashlib
import json
import os
import subprocess
import sys

import msgpack
import numpy as np
import pytest

from slcodec.augment import record as A
from slcodec.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PINNED_POLICY = A.Policy(size=224, mixup_alpha=0.2, cutmix_alpha=1.0, mix_prob=0.75)
PINNED_IMAGES = 1001
KEYS = ("top", "left", "height", "width", "flip", "mix", "partner", "lam", "cut_top", "cut_left", "cut_height",
        "cut_width", "partner_top", "partner_left", "partner_height", "partner_width", "partner_flip")
# (seed, image, aug, (H, W)) -> the values of KEYS; lam as float.hex (exact).  Computed once by this
# implementation and checked by hand: boxes inside the image, fallback row (1000x20) is the
# ratio-clamped central crop, unmixed views have lam 1 and partner == image, cutmix lam is
# 1 - box area / 224^2 (e.g. row 1: 1 - 158*154/50176 = 0x1.07b6db6db6db7p-1).
PINNED = [
    ((0, 0, 0, (224, 224)), (85, 52, 124, 131, False, 2, 978, "0x1.07b6db6db6db7p-1", 66, 70, 158, 154, 18, 41, 201, 166, False)),
    ((0, 0, 1, (224, 224)), (36, 15, 176, 174, False, 0, 0, "0x1.0000000000000p+0", 0, 0, 0, 0, 36, 15, 176, 174, False)),
    ((0, 1, 0, (224, 224)), (110, 42, 68, 76, False, 0, 1, "0x1.0000000000000p+0", 0, 0, 0, 0, 110, 42, 68, 76, False)),
    ((1, 0, 0, (224, 224)), (6, 0, 150, 149, True, 2, 721, "0x1.538d0fac687d6p-1", 71, 90, 130, 130, 10, 13, 204, 209, True)),
    ((7, 3, 299, (375, 500)), (86, 166, 228, 294, True, 1, 347, "0x1.b62d8801d4c10p-1", 0, 0, 0, 0, 35, 85, 328, 358, True)),
    ((7, 999, 12, (500, 375)), (28, 5, 410, 361, True, 2, 842, "0x1.beb1a1f58d0fbp-1", 110, 144, 80, 80, 41, 4, 298, 359, False)),
    ((2**64 - 1, 5, 5, (32, 32)), (7, 4, 19, 23, True, 2, 524, "0x1.1600000000000p-1", 77, 26, 147, 156, 7, 5, 22, 27, True)),
    ((123456789, 42, 63, (256, 320)), (4, 43, 217, 250, True, 1, 892, "0x1.af23d35ec7f94p-1", 0, 0, 0, 0, 14, 92, 240, 209, False)),
    ((2024, 1000, 7, (1000, 20)), (486, 0, 27, 20, False, 2, 754, "0x1.9e4924924924ap-2", 0, 26, 154, 194, 486, 0, 27, 20, False)),
    ((2024, 1, 1, (1, 1)), (0, 0, 1, 1, False, 1, 414, "0x1.3b45f1107e95ep-1", 0, 0, 0, 0, 0, 0, 1, 1, True)),
    ((31337, 77, 150, (480, 640)), (23, 2, 414, 429, False, 2, 728, "0x1.1e1cbc14e5e0ap-1", 67, 83, 157, 141, 25, 101, 414, 393, False)),
    ((5, 0, 3, (224, 224)), (14, 0, 186, 154, True, 2, 45, "0x1.3f7829cbc14e6p-1", 0, 118, 178, 106, 5, 5, 203, 219, True)),
]


def _row(v: dict) -> tuple:
    return tuple(float.hex(v[k]) if k == "lam" else v[k] for k in KEYS)


@pytest.mark.parametrize("key,expected", PINNED, ids=[str(k[:3]) for k, _ in PINNED])
def test_pinned_table(key, expected):
    seed, image, aug, size = key
    assert _row(A.view(seed, image, aug, PINNED_POLICY, size, PINNED_IMAGES)) == expected


def test_pinned_rows_are_sane():
    for (seed, image, aug, (h, w)), exp in PINNED:
        v = dict(zip(KEYS, exp))
        assert 0 <= v["top"] and v["top"] + v["height"] <= h and 0 <= v["left"] and v["left"] + v["width"] <= w
        if v["mix"] == 0:
            assert v["partner"] == image and float.fromhex(v["lam"]) == 1.0
        else:
            assert v["partner"] != image and 0 <= v["partner"] < PINNED_IMAGES
        if v["mix"] == 2:
            assert float.fromhex(v["lam"]) == 1 - v["cut_height"] * v["cut_width"] / 224 ** 2


# --------------------------------------------------------------------------- Philox and arithmetic
def test_philox_known_answer_and_numpy():
    # Random123's kat_vectors: philox4x64_10, counter 0, key 0
    assert [hex(x) for x in A.philox4x64([0, 0, 0, 0], [0, 0])] == [
        "0x16554d9eca36314c", "0xdb20fe9d672d0fdc", "0xd7e772cee186176b", "0x7e68b68aec7ba23b"]
    rng = np.random.default_rng(1)
    ctr = rng.integers(0, 2**64 - 1, (50, 4), dtype=np.uint64, endpoint=True)
    key = rng.integers(0, 2**64 - 1, (50, 2), dtype=np.uint64, endpoint=True)
    ours = A.philox4x64(ctr, key)             # the vectorised numpy path
    for j in range(50):                       # numpy's Philox increments its counter before each block
        c = sum(int(v) << (64 * w) for w, v in enumerate(ctr[j]))
        k = int(key[j, 0]) | (int(key[j, 1]) << 64)
        ref = np.random.Philox(key=k, counter=(c - 1) % (1 << 256)).random_raw(4)
        assert (ours[j] == ref).all()
        assert (A.philox4x64(ctr[j:j + 1], key[j:j + 1]) == ref).all()   # the Python-integer path


def test_word_conversions():
    w = np.array([0, 1 << 11, (1 << 64) - 1, 1 << 63], dtype=np.uint64)
    assert A.to_unit(w).tolist() == [0.0, 2.0 ** -53, 1 - 2.0 ** -53, 0.5]
    s = A.to_signed_unit(w)
    assert s.tolist() == [2.0 ** -53 - 1, 3 * 2.0 ** -53 - 1, 1 - 2.0 ** -53, 2.0 ** -53]
    assert A.draw_index(w, 10).tolist() == [0, 0, 9, 5]
    with pytest.raises(ValueError):
        A.draw_index(w, 0)


def test_det_log_exp_accurate_and_pinned():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.exp(rng.uniform(-700, 700, 20000)), rng.uniform(1e-300, 1, 20000)])
    assert np.max(np.abs(A.det_log(x) - np.log(x)) / np.maximum(1, np.abs(np.log(x)))) < 1e-15
    y = rng.uniform(-700, 700, 20000)
    assert np.max(np.abs(A.det_exp(y) / np.exp(y) - 1)) < 1e-15
    assert A.det_exp(-1e6) == 0.0 and A.det_log(1.0) == 0.0
    # pinned bits of the values the crop sampler uses
    assert [float.hex(float(v)) for v in A.det_log(np.array([0.75, 4 / 3]))] == \
        ["-0x1.269621134db92p-2", "0x1.269621134db92p-2"]
    assert float.hex(float(A.det_exp(0.1))) == "0x1.1aec7b35a00d4p+0"


# --------------------------------------------------------------------------- identity across processes
_CHILD = r"""
import hashlib, json, sys
import numpy as np
from slcodec.augment import record as A
p = A.Policy(size=224, mixup_alpha=0.2, cutmix_alpha=1.0, mix_prob=0.75)
n = 6000
img, aug = np.arange(n) % 997, np.arange(n) // 997
v = A.view_params(9, img, aug, p, (375, 500), 997)
h = hashlib.sha256()
for k in sorted(v):
    h.update(k.encode()); h.update(np.ascontiguousarray(v[k]).tobytes())
one = A.view(2**64 - 1, 5, 5, p, (32, 32), 1001)
print(json.dumps({"sha": h.hexdigest(), "one": {k: (float.hex(x) if isinstance(x, float) else x) for k, x in one.items()}}))
"""


def _run_child(env_extra):
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_two_processes_identical():
    # The second process runs numpy without its optional SIMD kernels: on x86 this changes the last
    # bits of numpy's own exp/log, not ours.
    try:
        from numpy._core import _multiarray_umath as mu
        optional = [f for f in mu.__cpu_dispatch__ if mu.__cpu_features__.get(f)]
    except (ImportError, AttributeError):
        optional = []
    a = _run_child({})
    b = _run_child({"NPY_DISABLE_CPU_FEATURES": " ".join(optional)} if optional else {"PYTHONHASHSEED": "1"})
    assert a == b
    p = PINNED_POLICY
    n = 6000
    v = A.view_params(9, np.arange(n) % 997, np.arange(n) // 997, p, (375, 500), 997)
    h = hashlib.sha256()
    for k in sorted(v):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v[k]).tobytes())
    assert a["sha"] == h.hexdigest()
    assert tuple(a["one"][k] for k in KEYS) == PINNED[6][1]


# --------------------------------------------------------------------------- order independence
def test_order_and_batching_independent():
    p = PINNED_POLICY
    sizes = np.random.default_rng(3).integers(16, 600, (50, 2))
    img = np.repeat(np.arange(50), 20)
    aug = np.tile(np.arange(20), 50)
    ref = A.view_params(11, img, aug, p, sizes)
    perm = np.random.default_rng(4).permutation(img.size)
    shuffled = A.view_params(11, img[perm], aug[perm], p, sizes)
    for k in ref:
        assert np.array_equal(shuffled[k], ref[k][perm]), k
    pieces = [A.view_params(11, img[perm[s:s + 7]], aug[perm[s:s + 7]], p, sizes) for s in range(0, img.size, 7)]
    for k in ref:
        assert np.array_equal(np.concatenate([q[k] for q in pieces]), ref[k][perm]), k
    for j in perm[:25]:
        one = A.view(11, int(img[j]), int(aug[j]), p, sizes)
        assert one == {k: ref[k][j].item() for k in ref}


def test_views_differ_by_seed_image_and_aug():
    p = A.Policy(size=64)
    base = A.crop_params(0, np.arange(200), 0, p, 100, 100)
    for other in (A.crop_params(1, np.arange(200), 0, p, 100, 100), A.crop_params(0, np.arange(200), 1, p, 100, 100),
                  A.crop_params(0, np.arange(1, 201), 0, p, 100, 100)):
        same = sum(np.array_equal(base[k], other[k]) for k in ("top", "left", "height", "width"))
        assert same == 0


# --------------------------------------------------------------------------- distribution sanity
def test_crop_boxes_follow_torchvision_ranges():
    p = A.Policy(size=224)
    n = 40000
    H, W = 375, 500
    c = A.crop_params(5, np.arange(n) // 100, np.arange(n) % 100, p, H, W)
    assert (c["top"] >= 0).all() and (c["left"] >= 0).all()
    assert (c["top"] + c["height"] <= H).all() and (c["left"] + c["width"] <= W).all()
    frac = c["height"] * c["width"] / (H * W)
    ratio = c["width"] / c["height"]
    # rounding each side to a pixel moves area and ratio a little beyond the nominal ranges
    assert frac.min() >= 0.08 * 0.95 and frac.max() <= 1.0
    assert ratio.min() >= 0.75 * 0.97 and ratio.max() <= 4 / 3 * 1.03
    assert abs(frac.mean() - 0.434) < 0.01               # torchvision's RandomResizedCrop gives 0.434 here
    sq = A.crop_params(5, np.arange(n) // 100, np.arange(n) % 100, p, 400, 400)
    assert abs(np.log(sq["width"] / sq["height"]).mean()) < 0.01   # log-uniform ratio, symmetric on a square
    assert abs(c["flip"].mean() - 0.5) < 0.01
    # positions are uniform over the valid range: the mean relative offset is 1/2
    rel = c["top"] / np.maximum(1, H - c["height"])
    assert abs(rel[H - c["height"] > 0].mean() - 0.5) < 0.01


def test_crop_fallback_is_torchvision_central_crop():
    p = A.Policy(size=8)
    c = A.crop_params(1, np.arange(50), 0, p, 1000, 20)      # no box of ratio >= 3/4 fits 10 tries
    assert (c["width"] == 20).all() and (c["height"] == 27).all() and (c["top"] == 486).all()
    c = A.crop_params(1, np.arange(50), 0, p, 20, 1000)
    assert (c["height"] == 20).all() and (c["width"] == 27).all() and (c["left"] == 486).all()


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_beta_matches_numpy_distribution(alpha):
    n = 40000
    ours = np.sort(A.sample_beta_symmetric(3, np.arange(n), 0, alpha))
    ref = np.sort(np.random.default_rng(0).beta(alpha, alpha, 200000))
    grid = np.linspace(0, 1, 1001)
    ks = np.max(np.abs(np.searchsorted(ours, grid) / n - np.searchsorted(ref, grid) / ref.size))
    assert ks < 1.63 * np.sqrt(1 / n + 1 / ref.size)      # two-sample KS at the 1% level
    assert abs(ours.var() - 1 / (4 * (2 * alpha + 1))) < 0.01


def test_mix_parameters():
    p = A.Policy(size=32, mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=0.6, switch_prob=0.25)
    n = 30000
    img, aug = np.arange(n) % 300, np.arange(n) // 300
    m = A.mix_params(8, img, aug, p, 300)
    mixed = m["mix"] > 0
    assert abs(mixed.mean() - 0.6) < 0.02
    assert abs((m["mix"][mixed] == A.MIX_CUTMIX).mean() - 0.25) < 0.02
    assert (m["partner"][mixed] != img[mixed]).all() and (m["partner"][~mixed] == img[~mixed]).all()
    assert m["partner"].min() >= 0 and m["partner"].max() < 300
    assert np.bincount(m["partner"][mixed], minlength=300).min() > 0
    assert (m["lam"][~mixed] == 1).all() and (0 <= m["lam"]).all() and (m["lam"] <= 1).all()
    cut = m["mix"] == A.MIX_CUTMIX
    assert (m["cut_top"][cut] + m["cut_height"][cut] <= 32).all() and (m["cut_left"][cut] + m["cut_width"][cut] <= 32).all()
    assert np.allclose(m["lam"][cut], 1 - m["cut_height"][cut] * m["cut_width"][cut] / 1024)
    assert (m["cut_height"][~cut] == 0).all()
    # partner groups
    g = A.mix_params(8, img, aug, A.Policy(size=32, mixup_alpha=1.0, partner_group=16), 300)
    assert (g["partner"] // 16 == img // 16).all() and (g["partner"] != img).all()
    # mixing never changes the crops, and mixing off means no partner
    assert all(np.array_equal(A.crop_params(8, img, aug, p, 50, 60)[k], A.crop_params(8, img, aug, A.Policy(size=32), 50, 60)[k])
               for k in ("top", "left", "height", "width", "flip"))
    off = A.mix_params(8, img, aug, A.Policy(size=32), None)
    assert (off["mix"] == 0).all() and (off["partner"] == img).all()
    with pytest.raises(ValueError):
        A.mix_params(8, img, aug, p, None)


# --------------------------------------------------------------------------- policy and container record
def test_policy_roundtrip_and_validation():
    p = A.Policy(size=(96, 128), scale=(0.25, 1), ratio=(0.5, 2), hflip=0.0, mixup_alpha=0.8, partner_group=4)
    d = p.to_dict()
    assert A.Policy.from_dict(msgpack.unpackb(msgpack.packb(d))) == p
    assert d["size"] == [96, 128] and d["version"] == A.ALGORITHM_VERSION
    rec = A.augment_record(2**64 - 1, p)
    assert A.parse_record(msgpack.unpackb(msgpack.packb(rec))) == (2**64 - 1, p)
    assert A.parse_record({"mode": "none"}) is None
    for bad in ({"scale": (0.5, 0.1)}, {"ratio": (0, 1)}, {"hflip": 1.5}, {"mixup_alpha": -1}, {"version": 2},
                {"size": 0}, {"interpolation": "lanczos"}, {"partner_group": -1}):
        with pytest.raises(ConfigError):
            A.Policy(**bad)
    with pytest.raises(ConfigError):
        A.Policy.from_dict(dict(d, future_key=1))
    for bad in ({"mode": "explicit"}, {"mode": "seeded", "seed": -1, "policy": d}, {"mode": "seeded", "seed": 1.5}, []):
        with pytest.raises(ConfigError):
            A.parse_record(bad)
    with pytest.raises(ConfigError):
        A.augment_record(2**64, p)


def test_record_in_container_is_constant_size(tmp_path, real_labels):
    import slcodec
    from slcodec.format.container import Container
    from slcodec.format.stats import file_stats

    rec = A.augment_record(42, PINNED_POLICY)
    sizes = []
    for n in (2, 8):
        path = tmp_path / f"l{n}.vqsl"
        slcodec.encode(real_labels[:n], path, codec="fp16", augment=rec)
        with slcodec.open(path) as r:
            assert A.parse_record(r.container.read_msgpack("augment")) == (42, PINNED_POLICY)
        with Container.open(path) as c:
            sizes.append(file_stats(c)["groups"]["augmentation"]["bytes"])
    assert sizes[0] == sizes[1] < 512
