"""Seeded augmentation parameters: the same view gives the same numbers on every machine.

A ``.vqsl`` file whose ``augment`` section is ``{"mode": "seeded", "seed": s, "policy": {...}}``
stores no per-view records: the crop box, flip and mix parameters of view ``a`` of image ``i``
are regenerated from ``(s, i, a)`` by the functions here.  Every view is addressable on its
own (a counter-based generator: no state is carried from one view to the next), so any worker
can compute any view in any order.

The algorithm is specified exactly in FORMAT.md, section "Seeded augmentation".  It uses
only 64-bit integer arithmetic and correctly rounded IEEE-754 float64 operations (``+ - * /
sqrt``, ``floor``/``rint``, ``frexp``/``ldexp``); the logarithm and exponential are computed
here with fixed polynomials rather than by the platform's math library, whose last bits
differ between systems.  This module needs only numpy.

>>> p = Policy(size=224, mixup_alpha=0.2)
>>> v = view_params(seed=7, images=[0, 0, 5], augs=[0, 1, 3], policy=p, image_size=(256, 320),
...                 num_images=10)
>>> sorted(v)[:4]
['cut_height', 'cut_left', 'cut_top', 'cut_width']
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..errors import ConfigError

ALGORITHM_VERSION = 1

# Philox4x64-10 (Salmon, Moraes, Dror, Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3").
_M0 = np.uint64(0xD2E7470EE14C6C93)
_M1 = np.uint64(0xCA5A826395121157)
_W0 = np.uint64(0x9E3779B97F4A7C15)
_W1 = np.uint64(0xBB67AE8584CAA73B)
_MASK32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
#: the second key word: ASCII "SLCODEC1" read as a big-endian integer (domain separation)
KEY_TAG = 0x534C434F44454331

# Block numbers inside one view's counter space (counter = [block, aug, image, 0]).
BLOCK_CROP = 0          # blocks 0..9: RandomResizedCrop attempts
CROP_ATTEMPTS = 10
BLOCK_MISC = 10         # flip, mix?, mixup-or-cutmix, partner
BLOCK_CUT = 11          # cutmix box centre
BLOCK_BETA = 12         # blocks 12..75: Beta attempts
BETA_ATTEMPTS = 64

MIX_NONE, MIX_MIXUP, MIX_CUTMIX = 0, 1, 2
MIX_NAMES = ("none", "mixup", "cutmix")


# --------------------------------------------------------------------------- Philox
def _mulhilo(a: np.ndarray, b: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) 64-bit halves of the 128-bit product a * b, in uint64 arithmetic."""
    a_lo, a_hi = a & _MASK32, a >> _S32
    b_lo, b_hi = b & _MASK32, b >> _S32
    lo_lo = a_lo * b_lo
    t = a_hi * b_lo + (lo_lo >> _S32)
    w1 = (t & _MASK32) + a_lo * b_hi
    hi = a_hi * b_hi + (t >> _S32) + (w1 >> _S32)
    return hi, a * b


_SMALL = 8  # up to this many blocks, Python integers are faster than numpy's per-call overhead
_M64 = (1 << 64) - 1


def _philox_int(c: list[int], k: list[int]) -> list[int]:
    """Philox4x64-10 of one block with Python integers (the same function as the numpy path)."""
    c0, c1, c2, c3 = c
    k0, k1 = k
    m0, m1, w0, w1 = int(_M0), int(_M1), int(_W0), int(_W1)
    for r in range(10):
        if r:
            k0, k1 = (k0 + w0) & _M64, (k1 + w1) & _M64
        p0, p1 = m0 * c0, m1 * c2
        c0, c1, c2, c3 = (p1 >> 64) ^ c1 ^ k0, p1 & _M64, (p0 >> 64) ^ c3 ^ k1, p0 & _M64
    return [c0, c1, c2, c3]


def philox4x64(counter, key) -> np.ndarray:
    """Philox4x64-10 of counters ``[..., 4]`` under keys ``[..., 2]`` (uint64): ``[..., 4]`` words.

    Bit-identical to Random123's ``philox4x64_10`` and to numpy's ``Philox`` (which applies it
    to its counter after incrementing it).
    """
    ctr = np.asarray(counter, dtype=np.uint64)
    key = np.asarray(key, dtype=np.uint64)
    if ctr.shape[-1:] != (4,) or key.shape[-1:] != (2,):
        raise ValueError("philox4x64 needs counters [..., 4] and keys [..., 2]")
    shape = np.broadcast_shapes(ctr.shape[:-1], key.shape[:-1])
    if math.prod(shape) <= _SMALL:
        ctr, key = np.broadcast_to(ctr, shape + (4,)), np.broadcast_to(key, shape + (2,))
        out = [_philox_int([int(v) for v in c], [int(v) for v in k])
               for c, k in zip(ctr.reshape(-1, 4), key.reshape(-1, 2))]
        return np.array(out, dtype=np.uint64).reshape(shape + (4,))
    c0, c1, c2, c3 = (np.broadcast_to(ctr[..., j], shape).copy() for j in range(4))
    k0, k1 = (np.broadcast_to(key[..., j], shape).copy() for j in range(2))
    with np.errstate(over="ignore"):
        for r in range(10):
            if r:
                k0 += _W0
                k1 += _W1
            hi0, lo0 = _mulhilo(c0, _M0)
            hi1, lo1 = _mulhilo(c2, _M1)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return np.stack([c0, c1, c2, c3], axis=-1)


def view_words(seed: int, images, augs, block: int) -> np.ndarray:
    """The 4 uint64 words of ``block`` for views ``(images[j], augs[j])``: ``[n, 4]``."""
    images = np.asarray(images, dtype=np.int64).reshape(-1)
    augs = np.asarray(augs, dtype=np.int64).reshape(-1)
    n = images.size
    ctr = np.zeros((n, 4), dtype=np.uint64)
    ctr[:, 0] = block
    ctr[:, 1] = augs.astype(np.uint64)
    ctr[:, 2] = images.astype(np.uint64)
    key = np.array([seed, KEY_TAG], dtype=np.uint64)
    return philox4x64(ctr, key)


def to_unit(words: np.ndarray) -> np.ndarray:
    """uint64 words -> float64 in [0, 1): the top 53 bits times 2^-53 (exact)."""
    return (np.asarray(words, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def to_signed_unit(words: np.ndarray) -> np.ndarray:
    """uint64 words -> float64 in (-1, 1), never 0: (2 m + 1 - 2^53) * 2^-53, m the top 53 bits."""
    m = (np.asarray(words, dtype=np.uint64) >> np.uint64(11)).astype(np.int64)
    return (2 * m + 1 - (1 << 53)).astype(np.float64) * (2.0 ** -53)


def draw_index(words: np.ndarray, n) -> np.ndarray:
    """uint64 words -> integers in [0, n) (0 < n < 2^32): ``((word >> 32) * n) >> 32``."""
    n = np.asarray(n, dtype=np.int64)
    if np.any(n < 1) or np.any(n >= (1 << 32)):
        raise ValueError("draw_index needs 0 < n < 2^32")
    hi = np.asarray(words, dtype=np.uint64) >> _S32
    return ((hi * n.astype(np.uint64)) >> _S32).astype(np.int64)


# --------------------------------------------------------------------------- exact-everywhere log / exp
_LN2_HI = float.fromhex("0x1.62e42fee00000p-1")   # fdlibm's ln2_hi: k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")  # ln 2 - _LN2_HI
_INV_LN2 = float.fromhex("0x1.71547652b82fep+0")
_SQRT_HALF = float.fromhex("0x1.6a09e667f3bcdp-1")
_LOG_COEF = [1.0 / (2 * k + 1) for k in range(13)]           # atanh series: 1, 1/3, ..., 1/25
_EXP_COEF = [1.0 / math.factorial(k) for k in range(17)]      # Taylor: 1, 1, 1/2, ..., 1/16!


def det_log(x) -> np.ndarray:
    """Natural logarithm of positive float64 values using only correctly rounded operations."""
    x = np.asarray(x, dtype=np.float64)
    m, e = np.frexp(x)
    small = m < _SQRT_HALF
    m = np.where(small, m * 2.0, m)
    e = (e - small.astype(e.dtype)).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    p = np.full_like(z, _LOG_COEF[-1])
    for c in reversed(_LOG_COEF[:-1]):
        p = p * z + c
    return e * _LN2_HI + (e * _LN2_LO + (s + s) * p)


def det_exp(x) -> np.ndarray:
    """exp of float64 values using only correctly rounded operations (underflows to 0 below ~-745)."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1500.0, 709.0)
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.full_like(r, _EXP_COEF[-1])
    for c in reversed(_EXP_COEF[:-1]):
        p = p * r + c
    return np.ldexp(p, k.astype(np.int32))


def det_pow(x, y) -> np.ndarray:
    """x ** y for positive x, as det_exp(det_log(x) * y)."""
    return det_exp(det_log(x) * np.asarray(y, dtype=np.float64))


# --------------------------------------------------------------------------- policy
def _pair(value, what, cast):
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"policy {what} needs 2 values, got {list(value)}")
        return (cast(value[0]), cast(value[1]))
    return (cast(value), cast(value))


@dataclass(frozen=True)
class Policy:
    """What a seeded view is: RandomResizedCrop to ``size``, horizontal flip, optional mixup/cutmix.

    ``scale``/``ratio`` are torchvision's RandomResizedCrop ranges (area fraction, and aspect
    ratio w/h sampled log-uniformly).  ``hflip`` is the flip probability.  Mixing is off unless
    ``mixup_alpha`` or ``cutmix_alpha`` is positive: then a view is mixed with probability
    ``mix_prob``, with cutmix chosen with probability ``switch_prob`` when both are on; lambda is
    drawn from Beta(alpha, alpha); the partner is another image of the set (or of its group of
    ``partner_group`` consecutive images when that is positive), taken at the same augmentation
    index.  ``interpolation`` and ``antialias`` tell the resize used by the torch helpers.
    """

    size: tuple = (224, 224)
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
    hflip: float = 0.5
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    partner_group: int = 0
    interpolation: str = "bilinear"
    antialias: bool = True
    version: int = field(default=ALGORITHM_VERSION)

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "size", _pair(self.size, "size", int))
        set_(self, "scale", _pair(self.scale, "scale", float))
        set_(self, "ratio", _pair(self.ratio, "ratio", float))
        for name in ("hflip", "mixup_alpha", "cutmix_alpha", "mix_prob", "switch_prob"):
            set_(self, name, float(getattr(self, name)))
        set_(self, "partner_group", int(self.partner_group))
        set_(self, "antialias", bool(self.antialias))
        set_(self, "version", int(self.version))
        if self.version != ALGORITHM_VERSION:
            raise ConfigError(f"seeded augmentation version {self.version} is not supported "
                              f"(this slcodec implements version {ALGORITHM_VERSION})")
        if min(self.size) < 1 or max(self.size) >= (1 << 31):
            raise ConfigError(f"policy size must be positive, got {list(self.size)}")
        s0, s1 = self.scale
        r0, r1 = self.ratio
        if not (0 < s0 <= s1 and math.isfinite(s1)):
            raise ConfigError(f"policy scale must satisfy 0 < min <= max, got {list(self.scale)}")
        if not (0 < r0 <= r1 and math.isfinite(r1)):
            raise ConfigError(f"policy ratio must satisfy 0 < min <= max, got {list(self.ratio)}")
        for name in ("hflip", "mix_prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"policy {name} must be a probability, got {getattr(self, name)}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            a = getattr(self, name)
            if not (a >= 0 and math.isfinite(a)):
                raise ConfigError(f"policy {name} must be >= 0, got {a}")
        if self.partner_group < 0:
            raise ConfigError("policy partner_group must be >= 0 (0: the whole image set)")
        if self.interpolation not in ("bilinear", "bicubic", "nearest", "area"):
            raise ConfigError(f"policy interpolation {self.interpolation!r} is not one of "
                              "bilinear, bicubic, nearest, area")

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("size", "scale", "ratio"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Policy":
        if not isinstance(d, dict):
            raise ConfigError(f"an augmentation policy is a map, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(map(str, d)) - known)
        if unknown:
            raise ConfigError(f"augmentation policy has unknown keys {unknown} (written by a newer slcodec?)")
        return cls(**d)


def augment_record(seed: int, policy: Policy) -> dict:
    """The container's ``augment`` section for seeded views."""
    seed = int(seed)
    if not 0 <= seed < (1 << 64):
        raise ConfigError("the augmentation seed must be in [0, 2^64)")
    return {"mode": "seeded", "seed": seed, "policy": policy.to_dict()}


def parse_record(record) -> tuple[int, Policy] | None:
    """(seed, policy) of a seeded ``augment`` section; None for ``{"mode": "none"}`` (or absent)."""
    if record is None:
        return None
    if not isinstance(record, dict) or "mode" not in record:
        raise ConfigError("the augment section is not a map with a 'mode'")
    mode = record["mode"]
    if mode == "none":
        return None
    if mode != "seeded":
        raise ConfigError(f"augment mode {mode!r} has no seeded parameters")
    seed = record.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < (1 << 64):
        raise ConfigError(f"augment seed must be an integer in [0, 2^64), got {seed!r}")
    return seed, Policy.from_dict(record.get("policy", {}))


# --------------------------------------------------------------------------- parameters
def _as_index(x, what):
    arr = np.asarray(x)
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what} must be non-negative")
    return arr


def _check_seed(seed):
    seed = int(seed)
    if not 0 <= seed < (1 << 64):
        raise ValueError("seed must be in [0, 2^64)")
    return seed


def crop_params(seed: int, images, augs, policy: Policy, heights, widths) -> dict:
    """RandomResizedCrop box and flip of the base views ``(images[j], augs[j])``.

    ``heights``/``widths``: the source image sizes (scalars or one per view).  Returns int64
    arrays ``top``, ``left``, ``height``, ``width`` (the box in source pixels) and bool ``flip``.
    """
    seed = _check_seed(seed)
    images, augs = np.broadcast_arrays(_as_index(images, "images"), _as_index(augs, "augs"))
    n = images.size
    H = np.broadcast_to(np.asarray(heights, dtype=np.int64), (n,))
    W = np.broadcast_to(np.asarray(widths, dtype=np.int64), (n,))
    if n and (H.min() < 1 or W.min() < 1 or H.max() >= (1 << 31) or W.max() >= (1 << 31)):
        raise ValueError("image heights and widths must be in [1, 2^31)")
    s0, s1 = policy.scale
    lr0, lr1 = (float(v) for v in det_log(np.array(policy.ratio)))
    area = H.astype(np.float64) * W.astype(np.float64)
    Hf, Wf = H.astype(np.float64), W.astype(np.float64)

    top = np.zeros(n, dtype=np.int64)
    left = np.zeros(n, dtype=np.int64)
    hh = np.zeros(n, dtype=np.int64)
    ww = np.zeros(n, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    for attempt in range(CROP_ATTEMPTS):
        todo = np.flatnonzero(~done)
        if todo.size == 0:
            break
        wd = view_words(seed, images[todo], augs[todo], BLOCK_CROP + attempt)
        target = area[todo] * (s0 + to_unit(wd[:, 0]) * (s1 - s0))
        aspect = det_exp(lr0 + to_unit(wd[:, 1]) * (lr1 - lr0))
        w = np.rint(np.sqrt(target * aspect))
        h = np.rint(np.sqrt(target / aspect))
        ok = (w > 0) & (w <= Wf[todo]) & (h > 0) & (h <= Hf[todo])
        sel = todo[ok]
        hi, wi = h[ok].astype(np.int64), w[ok].astype(np.int64)
        hh[sel], ww[sel] = hi, wi
        top[sel] = draw_index(wd[ok, 2], H[sel] - hi + 1)
        left[sel] = draw_index(wd[ok, 3], W[sel] - wi + 1)
        done[sel] = True
    rest = np.flatnonzero(~done)
    if rest.size:  # torchvision's fallback: the central crop clamped to the ratio range
        r0, r1 = policy.ratio
        Hr, Wr = Hf[rest], Wf[rest]
        in_ratio = Wr / Hr
        fw = np.where(in_ratio < r0, Wr, np.where(in_ratio > r1, np.rint(Hr * r1), Wr))
        fh = np.where(in_ratio < r0, np.rint(Wr / r0), Hr)
        fh, fw = np.maximum(fh, 1).astype(np.int64), np.maximum(fw, 1).astype(np.int64)
        hh[rest], ww[rest] = fh, fw
        top[rest] = (H[rest] - fh) // 2
        left[rest] = (W[rest] - fw) // 2
    misc = view_words(seed, images, augs, BLOCK_MISC)
    flip = to_unit(misc[:, 0]) < policy.hflip
    return {"top": top, "left": left, "height": hh, "width": ww, "flip": flip}


def sample_beta_symmetric(seed: int, images, augs, alpha) -> np.ndarray:
    """Beta(alpha, alpha) per view (Bailey's polar t method; FORMAT.md gives the steps)."""
    images, augs = np.broadcast_arrays(_as_index(images, "images"), _as_index(augs, "augs"))
    n = images.size
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (n,))
    out = np.full(n, 0.5)
    done = np.zeros(n, dtype=bool)
    for attempt in range(BETA_ATTEMPTS):
        todo = np.flatnonzero(~done)
        if todo.size == 0:
            break
        wd = view_words(seed, images[todo], augs[todo], BLOCK_BETA + attempt)
        u, v = to_signed_unit(wd[:, 0]), to_signed_unit(wd[:, 1])
        w = u * u + v * v
        ok = w <= 1.0
        sel = todo[ok]
        u, w = u[ok], w[ok]
        r = det_exp(det_log(w) / alpha[sel])        # W^(1/alpha)
        q = 1.0 - r
        x = 0.5 + (u * np.sqrt(q)) / (2.0 * np.sqrt(r * w + q * (u * u)))
        out[sel] = np.clip(x, 0.0, 1.0)
        done[sel] = True
    return out


def mix_params(seed: int, images, augs, policy: Policy, num_images: int | None) -> dict:
    """Mixup/cutmix parameters of views ``(images[j], augs[j])``.

    Returns ``mix`` (int8: 0 none, 1 mixup, 2 cutmix), ``partner`` (int64; the image itself
    when not mixed), ``lam`` (float64: the weight of the view's own image; for cutmix 1 - the
    pasted area fraction; 1.0 when not mixed) and the cutmix box ``cut_top``, ``cut_left``,
    ``cut_height``, ``cut_width`` (in output pixels; zeros otherwise).
    """
    seed = _check_seed(seed)
    images, augs = np.broadcast_arrays(_as_index(images, "images"), _as_index(augs, "augs"))
    n = images.size
    out = {"mix": np.zeros(n, dtype=np.int8), "partner": images.copy(), "lam": np.ones(n),
           "cut_top": np.zeros(n, dtype=np.int64), "cut_left": np.zeros(n, dtype=np.int64),
           "cut_height": np.zeros(n, dtype=np.int64), "cut_width": np.zeros(n, dtype=np.int64)}
    if not policy.mixing or n == 0:
        return out
    if num_images is None:
        raise ValueError("mixing needs num_images (partners are drawn from the image set)")
    num_images = int(num_images)
    if images.max() >= num_images:
        raise ValueError(f"image index {int(images.max())} out of range for {num_images} images")
    misc = view_words(seed, images, augs, BLOCK_MISC)
    G = policy.partner_group or num_images
    g0 = (images // G) * G
    gsize = np.minimum(G, num_images - g0)
    apply = (to_unit(misc[:, 1]) < policy.mix_prob) & (gsize > 1)
    if policy.mixup_alpha > 0 and policy.cutmix_alpha > 0:
        kind = np.where(to_unit(misc[:, 2]) < policy.switch_prob, MIX_CUTMIX, MIX_MIXUP)
    else:
        kind = np.full(n, MIX_CUTMIX if policy.cutmix_alpha > 0 else MIX_MIXUP)
    kind = np.where(apply, kind, MIX_NONE).astype(np.int8)
    idx = np.flatnonzero(apply)
    if idx.size == 0:
        return out
    gs = gsize[idx]
    partner = g0[idx] + (images[idx] - g0[idx] + 1 + draw_index(misc[idx, 3], gs - 1)) % gs
    alpha = np.where(kind[idx] == MIX_CUTMIX, policy.cutmix_alpha, policy.mixup_alpha)
    lam = sample_beta_symmetric(seed, images[idx], augs[idx], alpha)
    out["mix"] = kind
    out["partner"][idx] = partner
    out["lam"][idx] = lam
    cut = np.flatnonzero(kind[idx] == MIX_CUTMIX)
    if cut.size:
        ci = idx[cut]
        Hs, Ws = policy.size
        cw_words = view_words(seed, images[ci], augs[ci], BLOCK_CUT)
        rat = np.sqrt(1.0 - lam[cut])
        cut_w = np.floor(Ws * rat).astype(np.int64)
        cut_h = np.floor(Hs * rat).astype(np.int64)
        cx = draw_index(cw_words[:, 0], Ws)
        cy = draw_index(cw_words[:, 1], Hs)
        x0 = np.clip(cx - cut_w // 2, 0, Ws)
        x1 = np.clip(cx + cut_w // 2, 0, Ws)
        y0 = np.clip(cy - cut_h // 2, 0, Hs)
        y1 = np.clip(cy + cut_h // 2, 0, Hs)
        out["cut_top"][ci], out["cut_left"][ci] = y0, x0
        out["cut_height"][ci], out["cut_width"][ci] = y1 - y0, x1 - x0
        out["lam"][ci] = 1.0 - ((y1 - y0) * (x1 - x0)).astype(np.float64) / float(Hs * Ws)
    return out


def _sizes_for(image_size, idx: np.ndarray):
    arr = np.asarray(image_size, dtype=np.int64)
    if arr.ndim == 1 and arr.size == 2:
        return arr[0], arr[1]
    if arr.ndim == 2 and arr.shape[1] == 2:
        return arr[idx, 0], arr[idx, 1]
    raise ValueError("image_size must be (height, width) or an array [num_images, 2]")


def view_params(seed: int, images, augs, policy: Policy, image_size, num_images: int | None = None) -> dict:
    """Every parameter of the views ``(images[j], augs[j])``: crop, flip, mix, and the partner's crop.

    ``image_size``: ``(height, width)`` shared by all images, or an int array ``[num_images, 2]``
    (then ``num_images`` defaults to its length).  The result holds the keys of
    :func:`crop_params` and :func:`mix_params`, plus ``partner_top``, ``partner_left``,
    ``partner_height``, ``partner_width`` and ``partner_flip``: the base view of the partner
    image at the same augmentation index (equal to the view's own when it is not mixed).
    """
    images, augs = np.broadcast_arrays(_as_index(images, "images"), _as_index(augs, "augs"))
    sizes = np.asarray(image_size)
    if num_images is None and sizes.ndim == 2:
        num_images = sizes.shape[0]
    h, w = _sizes_for(image_size, images)
    out = crop_params(seed, images, augs, policy, h, w)
    out.update(mix_params(seed, images, augs, policy, num_images))
    ph, pw = _sizes_for(image_size, out["partner"])
    partner = crop_params(seed, out["partner"], augs, policy, ph, pw)
    for k, v in partner.items():
        out["partner_" + k] = v
    return out


def view(seed: int, image: int, aug: int, policy: Policy, image_size, num_images: int | None = None) -> dict:
    """:func:`view_params` of one view, as plain Python numbers."""
    p = view_params(seed, [image], [aug], policy, image_size, num_images)
    return {k: v[0].item() for k, v in p.items()}


__all__ = ["Policy", "augment_record", "parse_record", "crop_params", "mix_params", "view_params", "view",
           "sample_beta_symmetric", "philox4x64", "view_words", "det_log", "det_exp", "det_pow",
           "MIX_NONE", "MIX_MIXUP", "MIX_CUTMIX", "ALGORITHM_VERSION"]
