#!/usr/bin/env python3
"""Fashion-MNIST teacher, distilled sets and per-view teacher soft labels for slcodec benchmarks.

Produces the 10-class data set of the downstream check (``benchmarks/downstream.py``): a
teacher CNN trained here, distilled sets of real training images (IPC 10 and IPC 50) and the
teacher's logits for every seeded augmentation view of every image, laid out as in dataset
distillation: ``labels[image, view, 10]``.

Data
    ``apt-get install -y dataset-fashion-mnist``: gzipped IDX files under
    ``/usr/share/datasets/fashion-mnist/`` (``train-images-idx3-ubyte.gz`` etc.), read with
    numpy (16-byte header for images, 8 bytes for labels).

Teacher
    conv3x3(1->32, pad 1)-ReLU-maxpool2 - conv3x3(32->64, pad 1)-ReLU-maxpool2 -
    fc(64*7*7 -> 128)-ReLU - fc(128 -> 10). Inputs ``x / 255`` standardised with the
    Fashion-MNIST mean/std (0.2860, 0.3530). Adam, lr 1e-3, batch 128, ``--epochs`` epochs
    (default 3) over the 60,000 training images, each batch augmented with the same policy
    as the views (pad 4 with zeros, random 28x28 crop, horizontal flip with p 0.5; draws
    from ``torch.Generator`` seeded with ``--seed``), so the teacher is confident on them.
    ``torch.manual_seed(seed)`` fixes the initialisation; ``torch.set_num_threads(threads)``.
    Saved as a plain ``state_dict`` (``torch.load(..., weights_only=True)`` loads it).

Distilled sets
    For each class c, ``np.random.default_rng([seed, 1, c]).permutation`` of that class's
    training indices; the IPC-n set takes the first n of them for every class (so the IPC 10
    set is a subset of the IPC 50 set). Image order: class-major, image ``i = c * ipc + j``.

Views
    View ``a`` of distilled image ``i`` is :func:`fmnist_view` ``(images, seed, i, a)``:
    ``rng = np.random.default_rng([seed, i, a])``; ``dy, dx = rng.integers(0, 9, size=2)``
    (offsets into the image zero-padded by 4 on each side); ``flip = rng.random() < 0.5``;
    the 28x28 crop at (dy, dx), mirrored left-right when ``flip``. The student at epoch e sees
    view ``e % views`` of every image. ``benchmarks/downstream.py`` imports this function.

Output (``--out-dir``, default ``benchmarks/.cache/``)
    ``fmnist_teacher.pt`` (state_dict), ``fmnist_teacher.json`` (accuracy, timing, versions),
    ``fmnist_ipc{N}.npz`` for every ``--ipc`` N with ``images`` uint8 [I, 28, 28],
    ``classes`` int64 [I], ``train_index`` int64 [I] (indices into the training file),
    ``logits`` float32 [I, V, 10] (teacher logits of every view), ``seed``, ``views``,
    ``test_images_path`` / ``test_labels_path`` (the IDX files of the test set), and
    ``fmnist_ipc{N}.json`` with the provenance and label statistics.

Example:
    python benchmarks/data/fashion_mnist.py --epochs 3 --ipc 10 50 --views 300 --seed 0
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import sha256_file  # noqa: E402

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
         "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / ".cache"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = 0.2860, 0.3530
PAD = 4
SIZE = 28
NUM_CLASSES = 10


# --------------------------------------------------------------------------- data
def read_idx(path: Path, kind: str) -> np.ndarray:
    """Images as uint8 [N, 28, 28] or labels as int64 [N] from a gzipped IDX file."""
    raw = gzip.open(path).read()
    if kind == "images":
        arr = np.frombuffer(raw, np.uint8, offset=16)
        return arr.reshape(-1, SIZE, SIZE).copy()
    return np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)


def load_split(split: str, data_dir: Path = DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(data_dir / FILES[f"{split}_images"], "images")
    y = read_idx(data_dir / FILES[f"{split}_labels"], "labels")
    if len(x) != len(y):
        raise SystemExit(f"{split}: {len(x)} images but {len(y)} labels")
    return x, y


def to_input(images_u8) -> torch.Tensor:
    """uint8 [N, 28, 28] (numpy or torch) -> standardised float32 [N, 1, 28, 28]."""
    x = torch.as_tensor(np.asarray(images_u8)).float().div_(255.0)
    return ((x - MEAN) / STD).unsqueeze(1)


# --------------------------------------------------------------------------- views
def view_params(seed: int, image_idx: int, view_idx: int) -> tuple[int, int, bool]:
    """(dy, dx, flip) of view ``view_idx`` of image ``image_idx``: offsets into the 4-padded image."""
    rng = np.random.default_rng([int(seed), int(image_idx), int(view_idx)])
    dy, dx = rng.integers(0, 2 * PAD + 1, size=2)
    flip = bool(rng.random() < 0.5)
    return int(dy), int(dx), flip


def fmnist_view(images: np.ndarray, seed: int, image_idx, view_idx) -> np.ndarray:
    """The augmented view(s) ``view_idx`` of ``images[image_idx]``, regenerated from (seed, i, a).

    ``images``: uint8 [N, 28, 28]. ``image_idx`` and ``view_idx``: ints, or broadcastable
    integer arrays. Returns uint8 [28, 28] for scalar indices, else [..., 28, 28] with the
    broadcast shape of the indices. Zero padding by 4, a 28x28 crop at offsets (dy, dx) drawn
    by ``np.random.default_rng([seed, i, a]).integers(0, 9, size=2)``, then a horizontal flip
    when the next draw ``rng.random() < 0.5``.
    """
    ii, aa = np.broadcast_arrays(np.asarray(image_idx), np.asarray(view_idx))
    out = np.empty(ii.shape + (SIZE, SIZE), np.uint8)
    for pos in np.ndindex(ii.shape):
        i, a = int(ii[pos]), int(aa[pos])
        dy, dx, flip = view_params(seed, i, a)
        padded = np.zeros((SIZE + 2 * PAD, SIZE + 2 * PAD), np.uint8)
        padded[PAD:PAD + SIZE, PAD:PAD + SIZE] = images[i]
        crop = padded[dy:dy + SIZE, dx:dx + SIZE]
        out[pos] = crop[:, ::-1] if flip else crop
    return out


def random_crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Batch augmentation for teacher training (same policy as the views): [B,1,28,28] -> same."""
    b = x.shape[0]
    padded = F.pad(x, (PAD, PAD, PAD, PAD), value=float((0.0 - MEAN) / STD))
    off = torch.randint(0, 2 * PAD + 1, (b, 2), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    ar = torch.arange(SIZE)
    rows = (off[:, 0:1] + ar)[:, :, None].expand(b, SIZE, SIZE)
    cols = (off[:, 1:2] + ar)[:, None, :].expand(b, SIZE, SIZE)
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    bidx = torch.arange(b)[:, None, None].expand(b, SIZE, SIZE)
    return padded[bidx, 0, rows, cols].unsqueeze(1)


# --------------------------------------------------------------------------- model
class TeacherCNN(nn.Module):
    """conv32-pool-conv64-pool-fc128-fc10."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def load_teacher(path) -> TeacherCNN:
    model = TeacherCNN()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


@torch.inference_mode()
def predict_logits(model: nn.Module, images_u8: np.ndarray, batch: int = 1000) -> np.ndarray:
    model.eval()
    out = np.empty((len(images_u8), NUM_CLASSES), np.float32)
    for s in range(0, len(images_u8), batch):
        out[s:s + batch] = model(to_input(images_u8[s:s + batch])).numpy()
    return out


def accuracy(model: nn.Module, images_u8: np.ndarray, labels: np.ndarray) -> float:
    return float((predict_logits(model, images_u8).argmax(1) == labels).mean())


def train_teacher(x_train, y_train, x_test, y_test, epochs: int, seed: int, batch: int = 128,
                  lr: float = 1e-3) -> tuple[TeacherCNN, list[dict]]:
    torch.manual_seed(seed)
    model = TeacherCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x_all = to_input(x_train)
    y_all = torch.from_numpy(y_train)
    n = len(x_all)
    history = []
    for ep in range(epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        tot_loss = tot_correct = 0.0
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            xb = random_crop_flip(x_all[idx], gen)
            yb = y_all[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += loss.item() * len(idx)
            tot_correct += float((logits.argmax(1) == yb).sum())
        acc = accuracy(model, x_test, y_test)
        rec = {"epoch": ep + 1, "train_loss": tot_loss / n, "train_acc_augmented": tot_correct / n,
               "test_acc": acc, "seconds": round(time.perf_counter() - t0, 2)}
        history.append(rec)
        print(f"  epoch {ep + 1}/{epochs}: loss {rec['train_loss']:.4f}, train acc (aug) "
              f"{rec['train_acc_augmented']:.4f}, test acc {acc:.4f}, {rec['seconds']}s", flush=True)
    return model.eval(), history


# --------------------------------------------------------------------------- distilled sets
def select_ipc(y_train: np.ndarray, ipc: int, seed: int) -> np.ndarray:
    """Training indices of the IPC set: class-major, the first ``ipc`` of a seeded permutation."""
    picks = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(y_train == c)
        perm = np.random.default_rng([seed, 1, c]).permutation(len(idx))
        picks.append(idx[perm[:ipc]])
    return np.concatenate(picks).astype(np.int64)


def view_logits(model: nn.Module, images: np.ndarray, seed: int, views: int, batch: int = 2000) -> np.ndarray:
    """Teacher logits [I, V, 10] of every view of every image."""
    n = len(images)
    out = np.empty((n, views, NUM_CLASSES), np.float32)
    ii, aa = np.meshgrid(np.arange(n), np.arange(views), indexing="ij")
    ii, aa = ii.reshape(-1), aa.reshape(-1)
    flat = out.reshape(-1, NUM_CLASSES)
    for s in range(0, len(ii), batch):
        x = fmnist_view(images, seed, ii[s:s + batch], aa[s:s + batch])
        flat[s:s + batch] = predict_logits(model, x, batch)
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def label_stats(logits: np.ndarray, classes: np.ndarray) -> dict:
    p = softmax(logits)
    top1 = p.max(-1)
    ent = -(p * np.log(np.clip(p, 1e-300, None))).sum(-1)
    p4 = softmax(logits / 4.0)
    ent4 = -(p4 * np.log(np.clip(p4, 1e-300, None))).sum(-1)
    return {"n_labels": int(top1.size),
            "top1_prob_median": float(np.median(top1)),
            "entropy_nats_median": float(np.median(ent)),
            "entropy_T4_nats_median": float(np.median(ent4)),
            "view_argmax_equals_class": float((p.argmax(-1) == classes[:, None]).mean())}


# --------------------------------------------------------------------------- main
def versions() -> dict:
    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3, help="teacher training epochs")
    ap.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--views", type=int, default=300, help="augmentation views per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--retrain", action="store_true", help="train the teacher even if the file exists")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))

    t_start = time.perf_counter()
    x_train, y_train = load_split("train")
    x_test, y_test = load_split("test")
    print(f"Fashion-MNIST: train {x_train.shape}, test {x_test.shape}")

    teacher_path = out_dir / "fmnist_teacher.pt"
    teacher_json = out_dir / "fmnist_teacher.json"
    if teacher_path.exists() and not args.retrain:
        model = load_teacher(teacher_path)
        info = json.loads(teacher_json.read_text()) if teacher_json.exists() else {}
        print(f"loaded teacher {teacher_path} (use --retrain to train again)")
    else:
        print(f"training teacher: {args.epochs} epochs, seed {args.seed}, {args.threads} threads")
        t0 = time.perf_counter()
        model, history = train_teacher(x_train, y_train, x_test, y_test, args.epochs, args.seed)
        train_s = time.perf_counter() - t0
        tmp = teacher_path.with_suffix(".pt.tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, teacher_path)
        model = load_teacher(teacher_path)  # round trip: weights_only loading works
        info = {"file": teacher_path.name, "sha256": sha256_file(teacher_path),
                "architecture": "conv3x3(1->32,p1)-relu-maxpool2-conv3x3(32->64,p1)-relu-maxpool2-"
                                "fc(3136->128)-relu-fc(128->10)",
                "input": f"x/255 standardised with mean {MEAN}, std {STD}",
                "training": {"optimizer": "Adam", "lr": 1e-3, "batch": 128, "epochs": args.epochs,
                             "augmentation": "zero-pad 4, random 28x28 crop, hflip p=0.5 (torch.Generator)",
                             "seed": args.seed, "threads": args.threads, "seconds": round(train_s, 2)},
                "history": history,
                "test_accuracy": accuracy(model, x_test, y_test),
                "train_accuracy_unaugmented": accuracy(model, x_train, y_train),
                "versions": versions(), "command": command}
        teacher_json.write_text(json.dumps(info, indent=1) + "\n")
    test_acc = accuracy(model, x_test, y_test)
    print(f"teacher test accuracy {test_acc:.4f}")

    for ipc in args.ipc:
        t0 = time.perf_counter()
        index = select_ipc(y_train, ipc, args.seed)
        images, classes = x_train[index], y_train[index]
        logits = view_logits(model, images, args.seed, args.views)
        dt = time.perf_counter() - t0
        out = out_dir / f"fmnist_ipc{ipc}.npz"
        tmp = out.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, classes=classes, train_index=index, logits=logits,
                 seed=np.int64(args.seed), views=np.int64(args.views),
                 test_images_path=str(DATA_DIR / FILES["test_images"]),
                 test_labels_path=str(DATA_DIR / FILES["test_labels"]))
        os.replace(tmp, out)
        stats = label_stats(logits, classes)
        prov = {"description": "Fashion-MNIST distilled set (real training images) with teacher logits "
                               "for every seeded view; layout logits[image, view, class]",
                "file": out.name, "sha256": sha256_file(out), "ipc": ipc, "images": int(len(images)),
                "views": args.views, "labels": int(logits.shape[0] * logits.shape[1]),
                "seed": args.seed,
                "selection": "class-major; per class c the first ipc of "
                             "np.random.default_rng([seed, 1, c]).permutation(class indices)",
                "view_policy": "np.random.default_rng([seed, image, view]): dy, dx = integers(0, 9, size=2) "
                               "into the zero-padded (4 px) image, then flip = random() < 0.5; "
                               "benchmarks/data/fashion_mnist.py:fmnist_view",
                "teacher": {"file": teacher_path.name, "sha256": sha256_file(teacher_path),
                            "test_accuracy": test_acc},
                "test_set": {"images": str(DATA_DIR / FILES["test_images"]),
                             "labels": str(DATA_DIR / FILES["test_labels"])},
                "statistics": stats, "seconds": round(dt, 2), "versions": versions(), "command": command}
        out.with_suffix(".json").write_text(json.dumps(prov, indent=1) + "\n")
        print(f"wrote {out}: images {images.shape}, logits {logits.shape} ({out.stat().st_size} bytes) in "
              f"{dt:.1f}s; top-1 prob median {stats['top1_prob_median']:.3f}, view argmax == class "
              f"{stats['view_argmax_equals_class']:.3f}")
    print(f"total {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
