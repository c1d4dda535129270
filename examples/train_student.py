#!/usr/bin/env python
"""Train a small student on labels decoded from a ``.vqsl`` file, next to the original labels.

The committed fixture holds real EfficientNet-Lite0 logits for 8 images x 64 augmented views
(slcodec/data/lite0_8x64_fp16.npy).  Its photos are not in the repository, so the images here
are synthetic (seeded random 3x40x40 tensors): the point is the label plumbing, which is the
same as with real images.  The script

1. writes the labels to a temporary ``.vqsl`` (codec ``fp16`` by default: lossless for this FP16
   source) with a seeded augmentation policy recorded in the file;
2. trains the same student twice - once on the original array, once on labels decoded from the
   file - with ``num_workers=2``, shuffling, and a batch size (3) unrelated to the one the
   file was written with (64);
3. prints both loss curves; with a lossless codec they are identical up to float noise.

``--labels relabel`` instead makes the labels the documented way: a (random, seeded) teacher
is run on the seeded views with :func:`slcodec.augment.views.relabel`, so every stored label
belongs to the exact pixels the student sees.

    python examples/train_student.py --quick
    python examples/train_student.py --codec topk --k 10 --epochs 64
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import slcodec
from slcodec.augment import Policy, augment_record
from slcodec.augment.views import relabel
from slcodec.torch import LabelDataset, LabelDecoder, kl_div_loss

FIXTURE = os.path.join(os.path.dirname(slcodec.__file__), "data", "lite0_8x64_fp16.npy")
ENCODE_BATCH = 64      # the batch size labels are written with
#: --quick with --codec vq: a short fit (the default 3000 steps take minutes on a laptop's CPU)
QUICK_VQ = {"steps": 300, "hidden": 64}
TRAIN_BATCH = 3        # the student's batch size: deliberately different


def synthetic_images(n: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, size, size), generator=g)


def make_policy(mix: str, size: int = 32) -> Policy:
    return Policy(size=size, mixup_alpha=0.2 if mix in ("mixup", "both") else 0.0,
                  cutmix_alpha=1.0 if mix in ("cutmix", "both") else 0.0)


def tiny_teacher(classes: int, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(256, classes)).eval()


def student_net(classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes))


class ArrayLabels:
    """The original labels, indexed like a LabelDecoder (flat label index -> probs at T)."""

    def __init__(self, logits: np.ndarray, temperature: float):
        self.rows = logits.reshape(-1, logits.shape[-1])
        self.t = temperature

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        rows = torch.from_numpy(np.asarray(self.rows[idx.numpy()], dtype=np.float32))
        return torch.softmax(rows / self.t, dim=1)


def train(dataset: LabelDataset, labels, *, epochs: int, temperature: float, batch_size: int = TRAIN_BATCH,
          workers: int = 2, seed: int = 0, lr: float = 0.05) -> list[float]:
    """Train a fresh student; ``labels(label_idx) -> probs at T``. Returns the mean loss of each epoch."""
    student = student_net(dataset_classes(labels), seed)
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, generator=order)
    curve = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)                       # selects view e % A of every image
        total, count = 0.0, 0
        for views, label_idx in loader:
            probs = labels(label_idx)                  # decode the whole batch at once
            loss = kl_div_loss(student(views), probs, temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(views)
            count += len(views)
        curve.append(total / count)
    return curve


def dataset_classes(labels) -> int:
    return labels.reader.classes if isinstance(labels, LabelDecoder) else labels.rows.shape[1]


def run(*, epochs: int, codec: str = "fp16", mix: str = "cutmix", label_source: str = "fixture",
        workers: int = 2, temperature: float = 4.0, seed: int = 2024, out_dir: str | None = None,
        codec_options: dict | None = None, log=print) -> dict:
    """Encode, then train on the original and on the decoded labels. Returns both curves and the file."""
    policy = make_policy(mix)
    if label_source == "fixture":
        logits = np.load(FIXTURE)                                   # [8, 64, 1000] FP16 logits
        images = synthetic_images(logits.shape[0])
    else:
        images = synthetic_images(8)
        teacher = tiny_teacher(1000)
        batches = relabel(teacher, images, policy, seed, augs_per_image=64, batch_size=ENCODE_BATCH)
        logits = torch.cat(list(batches)).view(8, 64, -1).numpy().astype(np.float16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)           # a tiny model: more threads only add synchronisation
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory()
        out_dir = tmp.name
    try:
        path = os.path.join(out_dir, "labels.vqsl")
        slcodec.encode(logits, path, codec=codec, batch_size=ENCODE_BATCH, input_kind="logits",
                       augment=augment_record(seed, policy), **(codec_options or {}))
        log(f"wrote {path}: {os.path.getsize(path)} bytes, codec {codec}, "
            f"{logits.shape[0]} images x {logits.shape[1]} views, seed {seed}, policy {policy.to_dict()}")
        dataset = LabelDataset(images, path)                        # seed and policy come from the file
        t0 = time.perf_counter()
        original = train(dataset, ArrayLabels(logits, temperature), epochs=epochs, temperature=temperature,
                         workers=workers)
        decoder = LabelDecoder(path, device="cpu", as_="probs", temperature=temperature)
        decoded = train(dataset, decoder, epochs=epochs, temperature=temperature, workers=workers)
        decoder.close()
        log(f"trained 2 x {epochs} epochs in {time.perf_counter() - t0:.1f} s "
            f"(batch {TRAIN_BATCH}, labels written in batches of {ENCODE_BATCH}, {workers} workers)")
        return {"original": original, "decoded": decoded, "path": path, "logits": logits, "images": images,
                "policy": policy, "seed": seed}
    finally:
        torch.set_num_threads(threads)
        if tmp is not None:
            tmp.cleanup()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="6 epochs (about 15 s on 2 CPU cores); with --codec vq also a short fit (300 steps, "
                         "hidden 64: about 10 s more) instead of the default fit (3000 steps: minutes)")
    ap.add_argument("--epochs", type=int, default=None, help="default 64 (one pass over the views); 6 with --quick")
    ap.add_argument("--codec", default="fp16", help="fp16 (lossless here), fp32, topk, vq")
    ap.add_argument("--k", type=int, default=None, help="k for --codec topk")
    ap.add_argument("--mix", default="cutmix", choices=["none", "mixup", "cutmix", "both"])
    ap.add_argument("--labels", default="fixture", choices=["fixture", "relabel"],
                    help="the committed teacher logits, or relabel the synthetic views with a toy teacher")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=4.0)
    args = ap.parse_args(argv)
    epochs = args.epochs or (6 if args.quick else 64)
    opts = {"k": args.k} if args.k is not None else {}
    if args.quick and args.codec == "vq":
        opts.update(QUICK_VQ)
    res = run(epochs=epochs, codec=args.codec, mix=args.mix, label_source=args.labels, workers=args.workers,
              temperature=args.temperature, codec_options=opts)
    print(f"\nmean training loss of each epoch (T^2 * KL(teacher || student) at T={args.temperature:g}, "
          f"averaged over the epoch's batches) of two identical students:\n"
          f"  original: trained on the labels as the teacher gave them (the array)\n"
          f"  decoded:  trained on the labels decoded from the {args.codec} file")
    print(f"{'epoch':>5} {'original':>12} {'decoded':>12}")
    for e, (a, b) in enumerate(zip(res["original"], res["decoded"])):
        print(f"{e:>5} {a:12.6f} {b:12.6f}")
    diff = max(abs(a - b) for a, b in zip(res["original"], res["decoded"]))
    scale = sum(res["original"]) / len(res["original"])
    steps = [abs(b - a) for a, b in zip(res["original"], res["original"][1:])]
    print(f"largest difference between the curves: {diff:.3g} ({100 * diff / scale:.2g}% of the mean loss "
          f"{scale:.3g}; 0: the file's labels train the student exactly as the originals do, as a lossless "
          f"codec must; a lossy codec's labels differ a little, so its curve does"
          + (f" - compare with the original curve's own change between epochs, up to {max(steps):.3g})"
             if steps else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
