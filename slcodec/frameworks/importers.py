"""Import the soft-label folders of existing frameworks into one ``.vqsl`` file, and export them back.

Layouts (see ../shared/context/SOFT_LABELS.md and FORMAT.md, "Explicit augmentation records"):

* ``sre2l`` (SRe2L, CDA, LPLD): ``epoch_{e}/batch_{b}.tar``, each a ``torch.save`` list
  ``[coords float [B, 4], flip bool [B], mix_index int [B], mix_lam float, mix_bbox (4 ints)
  or None, logits [B, C] (FP16 or FP32)]``.  Labels are stored in (epoch, batch, position)
  order as logits, shape ``[N, C]``.
* ``lpqld``: the same files with FP16 coords, a uint8 mix index and bbox, and top-k logits:
  ``[coords, flip, mix_index, mix_lam, mix_bbox, values fp16 [B, k], indices int16 [B, k]]``
  (or the last two as one ``[values, indices]`` pair).  The dense label is ``values`` at
  ``indices`` and the row minimum of ``values`` everywhere else (LPQLD's own refill).  The
  number of classes is not in the files: pass ``classes``.
* ``fkd``: one file per training image anywhere below the folder (``.tar``, ``.pt``,
  ``.pth``), in sorted order of their relative paths, each ``[coords [n, 4], flip [n],
  label [n, 2, k]]`` (numpy arrays or tensors; a dict with keys ``coords``, ``flip`` and
  ``label`` is accepted too); ``label[:, 0]`` holds class ids, ``label[:, 1]`` their
  probabilities.  The dense label spreads ``max(0, 1 - sum)`` evenly over the other
  ``C - k`` classes (FKD's decoding).  Labels are ordered by (image, view); the shape is
  ``[images, n, C]`` when every image has ``n`` views, else ``[N, C]``.  Pass ``classes``.

Files are loaded with ``torch.load(weights_only=True)``; the numpy globals that plain
numpy arrays and scalars need are allowed explicitly, and only when the file references
them.  A file that references anything else is refused before anything is unpickled.

The per-view augmentation parameters go into ``augment/...`` stream sections, coded
losslessly and compactly (crop boxes as integers on the batch's own grid when they are
exactly ``integer / S``, else raw floats).  :func:`read_augment` reads them back and
:func:`export_folder` writes the framework's layout from a ``.vqsl`` file.
"""
from __future__ import annotations

import math
import os
import pickle
import re

import numpy as np

from .._checks import check_int
from ..errors import ConfigError, InputError, one_line
from ..format import rules

LAYOUTS = ("sre2l", "lpqld", "fkd")
EXPORT_LAYOUTS = ("sre2l", "fkd")
FKD_SUFFIXES = (".tar", ".pt", ".pth")
_EPOCH_RE = re.compile(r"^epoch_(\d+)$")
_BATCH_RE = re.compile(r"^batch_(\d+)\.(tar|pt|pth)$")
#: largest crop-box grid (coords stored as uint16 multiples of 1/S)
MAX_GRID = 65535
#: a block with more distinct crop-box values than this is not searched for a grid
MAX_GRID_VALUES = 8192
#: columns of augment/batch (sre2l, lpqld) and augment/image (fkd)
BATCH_COLUMNS = ["epoch", "batch", "rows", "flags", "coords_scale"]
IMAGE_COLUMNS = ["views", "coords_scale"]
FLAG_MIX_INDEX, FLAG_MIX_LAM, FLAG_MIX_BBOX = 1, 2, 4


# --------------------------------------------------------------------------- safe loading
def _numpy_globals() -> dict:
    """Qualified name in a pickle -> the numpy object it may resolve to (plain arrays, dtypes,
    scalars of bool, integer and floating types; numpy 1.x and 2.x module paths)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    out = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{mod}._reconstruct"] = multiarray._reconstruct
        out[f"{mod}.scalar"] = multiarray.scalar
    out["numpy.ndarray"] = np.ndarray
    out["numpy.dtype"] = np.dtype
    for t in (np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
              np.float16, np.float32, np.float64):
        cls = type(np.dtype(t))
        out[f"numpy.dtypes.{cls.__name__}"] = cls
    return out


def load_file(path: str):
    """``torch.load`` a label file safely: tensors, numpy arrays and plain Python values only."""
    import torch

    allowed = _numpy_globals()
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # a zip checkpoint, or a legacy pickle
        raise InputError(f"{path}: not a readable torch file (neither torch.save's zip format nor a pickle)")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, OSError, EOFError):
        names = None  # not a zip checkpoint (legacy torch.save format): weights_only still guards it
    if names is not None:
        bad = [n for n in names if n not in allowed]
        if bad:
            raise InputError(f"{path}: refused: the file references {bad[0]!r}, which is neither a tensor, "
                             "a numpy array nor a plain value (nothing was unpickled)")
        needed = [(allowed[n], n) for n in names]
        if "numpy.dtype" in names:  # a dtype is rebuilt as an instance of its class (numpy.dtypes.*DType)
            needed += [(obj, n) for n, obj in allowed.items() if n.startswith("numpy.dtypes.")]
    else:
        needed = [(obj, name) for name, obj in allowed.items()]
    try:
        with torch.serialization.safe_globals(needed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).partition("WeightsUnpickler error:")[2].strip() or str(exc)
        raise InputError(f"{path}: refused: the file holds objects other than tensors, numpy arrays and plain "
                         f"values (loaded with weights_only=True: {one_line(detail, 160)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError,
            AttributeError) as exc:
        raise InputError(f"{path}: not a readable torch file ({one_line(exc, 160)})") from None
    _check_plain(obj, path)
    return obj


def _check_plain(obj, path, depth=0):
    import torch
    if depth > 8:
        raise InputError(f"{path}: nesting too deep")
    if isinstance(obj, (list, tuple)):
        for x in obj:
            _check_plain(x, path, depth + 1)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(v, path, depth + 1)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise InputError(f"{path}: holds a numpy array of {obj.dtype}, expected numbers")
    elif obj is None or isinstance(obj, (bool, int, float, str, np.generic, torch.Tensor)):
        pass
    else:
        raise InputError(f"{path}: holds a {type(obj).__name__}, expected tensors, arrays and numbers")


# --------------------------------------------------------------------------- field conversion
def _kind_of(x) -> str:
    import torch
    return "torch" if isinstance(x, torch.Tensor) else "numpy"


def _array(x, what: str, path: str) -> np.ndarray:
    import torch
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise InputError(f"{path}: {what} is a {type(x).__name__}, expected a tensor or numpy array")


def _typed(x, kind: str):
    """Back to the container type of the original file."""
    if kind == "torch":
        import torch
        return torch.from_numpy(np.ascontiguousarray(x))
    return np.ascontiguousarray(x)


def _scalar_float(x, what, path):
    import torch
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise InputError(f"{path}: {what} has {x.numel()} values, expected one number")
        return float(x.item()), "tensor:" + str(x.dtype).replace("torch.", "")
    if isinstance(x, (float, int, np.floating, np.integer)) and not isinstance(x, bool):
        return float(x), ("float" if isinstance(x, (float, int)) else "numpy:" + np.dtype(type(x)).name)
    raise InputError(f"{path}: {what} is a {type(x).__name__}, expected a number")


def _bbox(x, path):
    """mix_bbox -> (int array [4], type tag) ; None -> (None, 'none')."""
    import torch
    if x is None:
        return None, "none"
    if isinstance(x, (torch.Tensor, np.ndarray)):
        arr = _array(x, "mix_bbox", path)
        tag = f"{_kind_of(x)}:{arr.dtype.name}"
    elif isinstance(x, (list, tuple)) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                              for v in x):
        arr = np.array([int(v) for v in x], dtype=np.int64)
        tag = "list"
    else:
        raise InputError(f"{path}: mix_bbox is {type(x).__name__}, expected 4 integers or None")
    if arr.shape != (4,) or arr.dtype.kind not in "iu":
        raise InputError(f"{path}: mix_bbox has shape {list(arr.shape)} of {arr.dtype}, expected 4 integers")
    if arr.size and (arr.min() < -2**31 or arr.max() >= 2**31):
        raise InputError(f"{path}: mix_bbox values out of the int32 range")
    return arr.astype(np.int32), tag


# --------------------------------------------------------------------------- crop boxes
def decode_coords(q: np.ndarray, scale, dtype) -> np.ndarray:
    """Grid-coded crop boxes back to floats: ``float32(q / scale)`` (float64 division), then
    the source dtype (float16 sources: float32 -> float16).  ``scale``: an int or an array
    that broadcasts against ``q``."""
    out = (q.astype(np.float64) / np.asarray(scale, dtype=np.float64)).astype(np.float32)
    return out.astype(np.dtype(dtype))


def grid_scale(coords: np.ndarray, hint: int | None = None) -> int | None:
    """The grid of a block of crop boxes: the smallest ``S <= 65535`` such that every value is
    exactly ``decode_coords(round(c * S), S)`` (``hint``, e.g. the previous block's grid, is
    tried first); None when there is none."""
    flat = np.ascontiguousarray(coords).reshape(-1)
    if flat.size == 0:
        return hint or 1
    if not np.isfinite(flat).all() or flat.min() < 0 or flat.max() > 1:
        return None
    values = np.unique(flat)
    if values.size > MAX_GRID_VALUES:
        return None
    if hint and _reproduces(values, hint):
        return int(hint)
    alive = np.arange(1, MAX_GRID + 1, dtype=np.float64)
    for start in range(0, values.size, 64):  # most grids fail on the first values: few survive to the rest
        v = values[start:start + 64]
        q = np.rint(alive[:, None] * v[None, :].astype(np.float64))
        back = (q / alive[:, None]).astype(np.float32).astype(v.dtype)
        ok = (back.view(_uint(v.dtype)) == v.view(_uint(v.dtype))[None, :]).all(axis=1)
        alive = alive[ok]
        if not alive.size:
            return None
    return int(alive[0])


def _uint(dtype):
    return np.dtype(f"u{np.dtype(dtype).itemsize}")


def _reproduces(values: np.ndarray, scale: int) -> bool:
    q = np.rint(values.astype(np.float64) * scale)
    back = decode_coords(q, scale, values.dtype)
    return bool(np.array_equal(back.view(_uint(values.dtype)), np.ascontiguousarray(values).view(_uint(values.dtype))))


class _Replan(Exception):
    """Raised when a later batch does not fit the coding chosen from the first one."""


class _Coords:
    """Crop boxes: the first block decides grid (uint16 + a scale per block) or raw floats."""

    def __init__(self, writer, mode: str):
        self.writer, self.mode = writer, mode   # mode: "auto", "raw"
        self.builder = None
        self.dtype = None
        self._last = None

    def add(self, coords: np.ndarray, path: str) -> int:
        """Append one block of boxes; returns its scale (0 when raw)."""
        if coords.ndim != 2 or coords.shape[1] != 4 or coords.dtype.name not in ("float16", "float32", "float64"):
            raise InputError(f"{path}: crop coords have shape {list(coords.shape)} of {coords.dtype}, "
                             "expected [n, 4] floats")
        if self.dtype is not None and coords.dtype != self.dtype:
            raise InputError(f"{path}: crop coords are {coords.dtype}, earlier files held {self.dtype}")
        scale = grid_scale(coords, self._last) if self.mode != "raw" else None
        self._last = scale or self._last
        if self.builder is None:
            self.dtype = coords.dtype
            self.mode = "grid" if scale is not None else "raw"
            self.builder = self.writer.add_stream("augment/coords", "uint16" if self.mode == "grid" else
                                                  coords.dtype.newbyteorder("<").name, 4)
        if self.mode == "raw":
            self.builder.append(coords)
            return 0
        if scale is None:
            raise _Replan()
        self.builder.append(np.rint(coords.astype(np.float64) * scale).astype(np.uint16))
        return scale

    def record(self):
        return {"coding": self.mode, "dtype": self.dtype.name if self.dtype is not None else None}


# --------------------------------------------------------------------------- import
def _sre2l_files(folder: str) -> list[tuple[int, int, str]]:
    out = []
    for name in os.listdir(folder):
        m = _EPOCH_RE.match(name)
        sub = os.path.join(folder, name)
        if not m or not os.path.isdir(sub):
            continue
        for fname in os.listdir(sub):
            mb = _BATCH_RE.match(fname)
            if mb:
                out.append((int(m.group(1)), int(mb.group(1)), os.path.join(sub, fname)))
    out.sort()
    if not out:
        raise InputError(f"{folder}: no epoch_*/batch_*.tar files found")
    for (e0, b0, p0), (e1, b1, p1) in zip(out, out[1:]):
        if (e0, b0) == (e1, b1):
            raise InputError(f"{folder}: {p0} and {p1} are the same batch")
    return out


def _fkd_files(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in files:
            if f.lower().endswith(FKD_SUFFIXES):
                rel = os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
                if "\n" in rel:
                    raise InputError(f"{folder}: file name with a line break: {rel!r}")
                out.append(rel)
    out.sort()
    if not out:
        raise InputError(f"{folder}: no label files ({', '.join(FKD_SUFFIXES)}) found")
    return out


def _check_classes(classes, layout):
    if classes is None:
        if layout in ("lpqld", "fkd"):
            raise ConfigError(f"{layout} files keep only the top-k classes; give the number of classes "
                              "(classes=..., --classes)")
        return None
    return check_int(classes, "classes", lo=2)


def import_folder(folder, path, layout: str, *, codec: str | None = None, classes: int | None = None,
                  device: str = "cpu", seed: int = 0, fit_sample: int | None = None, provenance: dict | None = None,
                  progress=None, log=None, **codec_config) -> str:
    """Import a framework's label folder into ``path`` (written atomically); returns ``path``.

    ``layout``: ``sre2l`` (also CDA, LPLD), ``lpqld`` or ``fkd``.  ``classes``: C (needed for
    ``lpqld`` and ``fkd``; checked against the files for ``sre2l``).  The other arguments
    are those of :class:`slcodec.Writer`.
    """
    folder = os.fspath(folder)
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: not a folder")
    classes = _check_classes(classes, layout)
    files = _fkd_files(folder) if layout == "fkd" else _sre2l_files(folder)
    for coords_mode in ("auto", "raw"):
        try:
            return _import(folder, files, path, layout, coords_mode, codec=codec, classes=classes, device=device,
                           seed=seed, fit_sample=fit_sample, provenance=provenance, progress=progress, log=log,
                           codec_config=codec_config)
        except _Replan:
            if log:
                log("crop boxes of a later file are not on a grid: importing again with raw boxes")
    raise AssertionError("unreachable")


def _first_classes(layout, files, classes):
    if classes is not None:
        return classes
    # sre2l: C from the first file's logits
    obj = load_file(files[0][2])
    if not isinstance(obj, (list, tuple)) or len(obj) != 6:
        raise InputError(f"{files[0][2]}: expected the SRe2L list of 6 entries "
                         "[coords, flip, mix_index, mix_lam, mix_bbox, logits]")
    logits = _array(obj[5], "logits", files[0][2])
    if logits.ndim != 2:
        raise InputError(f"{files[0][2]}: logits have shape {list(logits.shape)}, expected [B, C]")
    return int(logits.shape[1])


def _import(folder, files, path, layout, coords_mode, *, codec, classes, device, seed, fit_sample, provenance,
            progress, log, codec_config):
    from ..pipeline.writer import Writer

    classes = _first_classes(layout, files, classes)
    prov = {"imported_from": os.path.basename(os.path.abspath(folder)), "layout": layout, "files": len(files)}
    prov.update(provenance or {})
    kind = "probs" if layout == "fkd" else "logits"
    writer = Writer(path, codec, classes=classes, source_kind=kind, device=device, seed=seed,
                    fit_sample=fit_sample, provenance=prov, progress=None, log=log, **codec_config)
    with writer:
        coords = _Coords(writer, coords_mode)
        if layout == "fkd":
            record = _import_fkd(folder, files, writer, coords, classes, progress)
        else:
            record = _import_batches(files, writer, coords, classes, layout, progress)
        record["coords"] = coords.record()
        writer.augment = record
    return path


def _import_batches(files, writer, coords, classes, layout, progress):
    per_batch = writer.add_stream("augment/batch", "uint32", len(BATCH_COLUMNS))
    flip_s = writer.add_stream("augment/flip", "uint8", 1)
    index_s = writer.add_stream("augment/mix_index", "uint32", 1)
    lam_s = writer.add_stream("augment/mix_lam", "float64", 1)
    bbox_s = writer.add_stream("augment/mix_bbox", "int32", 4)
    types: dict = {}

    def same(key, value, path):
        if types.setdefault(key, value) != value and value is not None:
            raise InputError(f"{path}: {key} is {value}, earlier files held {types[key]}")

    for done, (epoch, batch, path) in enumerate(files):
        obj = load_file(path)
        fields, labels = _parse_batch(obj, path, layout, classes, same)
        c, flip, mix_index, lam, bbox = fields
        b = labels.shape[0]
        flags = 0
        scale = coords.add(c, path)
        flip_s.append(flip.astype(np.uint8)[:, None])
        if mix_index is not None:
            flags |= FLAG_MIX_INDEX
            index_s.append(mix_index.astype(np.uint32)[:, None])
        else:
            index_s.append(np.zeros((b, 1), np.uint32))
        if lam is not None:
            flags |= FLAG_MIX_LAM
        lam_s.append(np.array([[lam if lam is not None else 0.0]], dtype=np.float64))
        if bbox is not None:
            flags |= FLAG_MIX_BBOX
        bbox_s.append((bbox if bbox is not None else np.zeros(4, np.int32))[None, :])
        per_batch.append(np.array([[epoch, batch, b, flags, scale]], dtype=np.uint32))
        writer.append(labels)
        if progress is not None:
            progress(done + 1, len(files), "import")
    suffixes = sorted({os.path.splitext(p)[1] for _, _, p in files})
    return {"mode": "explicit", "layout": layout,
            "fields": ["batch", "coords", "flip", "mix_index", "mix_lam", "mix_bbox"],
            "batch_columns": BATCH_COLUMNS,
            "flags": {"mix_index": FLAG_MIX_INDEX, "mix_lam": FLAG_MIX_LAM, "mix_bbox": FLAG_MIX_BBOX},
            "suffix": suffixes[0] if len(suffixes) == 1 else ".tar",
            "source": {k: v for k, v in types.items() if v is not None}}


def _parse_batch(obj, path, layout, classes, same):
    if not isinstance(obj, (list, tuple)):
        raise InputError(f"{path}: holds a {type(obj).__name__}, expected the {layout} list")
    if layout == "sre2l":
        if len(obj) != 6:
            raise InputError(f"{path}: holds {len(obj)} entries, expected 6 "
                             "[coords, flip, mix_index, mix_lam, mix_bbox, logits]")
        raw_logits = obj[5]
        logits = _array(raw_logits, "logits", path)
        if logits.ndim != 2 or logits.dtype.kind != "f":
            raise InputError(f"{path}: logits have shape {list(logits.shape)} of {logits.dtype}, expected [B, C]")
        if logits.shape[1] != classes:
            raise InputError(f"{path}: logits have {logits.shape[1]} classes, expected {classes}")
        same("logits", f"{_kind_of(raw_logits)}:{logits.dtype.name}", path)
    else:
        if len(obj) == 7:
            values_raw, ids_raw = obj[5], obj[6]
            same("topk_form", "7", path)
        elif len(obj) == 6 and isinstance(obj[5], (list, tuple)) and len(obj[5]) == 2:
            values_raw, ids_raw = obj[5]
            same("topk_form", "pair", path)
        else:
            raise InputError(f"{path}: expected the LPQLD list [coords, flip, mix_index, mix_lam, mix_bbox, "
                             "topk_logits, topk_indices]")
        values, ids = _array(values_raw, "top-k logits", path), _array(ids_raw, "top-k indices", path)
        if values.ndim != 2 or values.shape != ids.shape or values.dtype.kind != "f" or ids.dtype.kind not in "iu":
            raise InputError(f"{path}: top-k logits {list(values.shape)} {values.dtype} and indices "
                             f"{list(ids.shape)} {ids.dtype} do not match")
        if ids.size and (ids.min() < 0 or ids.max() >= classes):
            raise InputError(f"{path}: a top-k class index is outside 0..{classes - 1}")
        if values.shape[1] < 1 or values.shape[1] > classes:
            raise InputError(f"{path}: {values.shape[1]} top-k values for {classes} classes")
        same("topk_values", f"{_kind_of(values_raw)}:{values.dtype.name}", path)
        same("topk_indices", f"{_kind_of(ids_raw)}:{ids.dtype.name}", path)
        same("k", values.shape[1], path)
        if not np.isfinite(values).all():
            raise InputError(f"{path}: top-k logits hold NaN or Inf")
        logits = np.repeat(values.min(axis=1, keepdims=True), classes, axis=1)
        np.put_along_axis(logits, ids.astype(np.int64), values, axis=1)
    b = logits.shape[0]
    raw_c = obj[0]
    c = _array(raw_c, "coords", path)
    same("coords", f"{_kind_of(raw_c)}:{c.dtype.name}", path)
    flip = _array(obj[1], "flip", path)
    same("flip", f"{_kind_of(obj[1])}:{flip.dtype.name}", path)
    if flip.shape != (b,) or flip.dtype.kind not in "biu" or (flip.size and flip.max() > 1) or \
            (flip.size and flip.min() < 0):
        raise InputError(f"{path}: flip has shape {list(flip.shape)} of {flip.dtype}, expected [{b}] booleans")
    if c.shape[0] != b:
        raise InputError(f"{path}: {c.shape[0]} crop boxes for {b} labels")
    mix_index = None
    if obj[2] is not None:
        mix_index = _array(obj[2], "mix_index", path)
        same("mix_index", f"{_kind_of(obj[2])}:{mix_index.dtype.name}", path)
        if mix_index.shape != (b,) or mix_index.dtype.kind not in "iu":
            raise InputError(f"{path}: mix_index has shape {list(mix_index.shape)} of {mix_index.dtype}, "
                             f"expected [{b}] integers")
        if mix_index.size and (mix_index.min() < 0 or mix_index.max() >= 2**32):
            raise InputError(f"{path}: mix_index values outside 0..2^32-1")
    lam = None
    if obj[3] is not None:
        lam, tag = _scalar_float(obj[3], "mix_lam", path)
        same("mix_lam", tag, path)
    bbox, tag = _bbox(obj[4], path)
    if bbox is not None:
        same("mix_bbox", tag, path)
    return (c, flip, mix_index, lam, bbox), logits


def _fkd_entries(obj, path):
    if isinstance(obj, dict):
        missing = [k for k in ("coords", "flip", "label") if k not in obj]
        if missing:
            raise InputError(f"{path}: dict lacks {missing[0]!r} (expected coords, flip, label)")
        return (obj["coords"], obj["flip"], obj["label"]), "dict"
    if isinstance(obj, (list, tuple)) and len(obj) == 3:
        return tuple(obj), "list"
    raise InputError(f"{path}: expected the FKD list [coords, flip, label]")


def _import_fkd(folder, files, writer, coords, classes, progress):
    per_image = writer.add_stream("augment/image", "uint32", len(IMAGE_COLUMNS))
    flip_s = writer.add_stream("augment/flip", "uint8", 1)
    names_s = writer.add_stream("augment/files", "uint8", 1)
    types: dict = {}
    views_seen = set()
    k_seen = None
    for done, rel in enumerate(files):
        path = os.path.join(folder, rel)
        (raw_c, raw_f, raw_l), form = _fkd_entries(load_file(path), path)
        c, flip, label = _array(raw_c, "coords", path), _array(raw_f, "flip", path), _array(raw_l, "label", path)
        for key, value in (("form", form), ("coords", f"{_kind_of(raw_c)}:{c.dtype.name}"),
                           ("flip", f"{_kind_of(raw_f)}:{flip.dtype.name}"),
                           ("label", f"{_kind_of(raw_l)}:{label.dtype.name}")):
            if types.setdefault(key, value) != value:
                raise InputError(f"{path}: {key} is {value}, earlier files held {types[key]}")
        if label.ndim != 3 or label.shape[1] != 2 or label.dtype.kind != "f":
            raise InputError(f"{path}: label has shape {list(label.shape)} of {label.dtype}, expected [n, 2, k]")
        n, _, k = label.shape
        if k_seen is None:
            k_seen = k
        if k != k_seen or k > classes:
            raise InputError(f"{path}: label keeps {k} classes, expected {k_seen} (of {classes})")
        if flip.shape != (n,) or flip.dtype.kind not in "biu" or (n and (flip.max() > 1 or flip.min() < 0)):
            raise InputError(f"{path}: flip has shape {list(flip.shape)} of {flip.dtype}, expected [{n}] booleans")
        if c.shape[:1] != (n,):
            raise InputError(f"{path}: {c.shape[0] if c.ndim else 0} crop boxes for {n} labels")
        ids_f, probs = label[:, 0, :], label[:, 1, :].astype(np.float32)
        ids = ids_f.astype(np.int64)
        if not np.isfinite(ids_f).all() or not np.array_equal(ids, ids_f) or (ids.size and (ids.min() < 0 or
                                                                                         ids.max() >= classes)):
            raise InputError(f"{path}: label class ids are not integers in 0..{classes - 1}")
        if not np.isfinite(probs).all() or (probs.size and probs.min() < 0):
            raise InputError(f"{path}: label probabilities are negative, NaN or Inf")
        rest = np.maximum(0.0, 1.0 - probs.sum(axis=1, keepdims=True, dtype=np.float32)) / max(classes - k, 1)
        dense = np.repeat(rest.astype(np.float32), classes, axis=1)
        np.put_along_axis(dense, ids, probs, axis=1)
        scale = coords.add(c, path)
        flip_s.append(flip.astype(np.uint8)[:, None])
        per_image.append(np.array([[n, scale]], dtype=np.uint32))
        names_s.append(np.frombuffer((rel + "\n").encode("utf-8"), dtype=np.uint8)[:, None])
        if n:
            writer.append(dense)
        views_seen.add(n)
        if progress is not None:
            progress(done + 1, len(files), "import")
    if len(views_seen) == 1 and min(views_seen) > 0:
        writer.shape = [len(files), views_seen.pop()]
    return {"mode": "explicit", "layout": "fkd", "fields": ["image", "coords", "flip", "files"],
            "image_columns": IMAGE_COLUMNS, "k": int(k_seen), "source": types}


# --------------------------------------------------------------------------- reading records back
#: per layout family: (field, width, rows: "view" | "block" | None); the first is the block table
_FIELDS = {
    "sre2l": [("batch", len(BATCH_COLUMNS), "block"), ("coords", 4, "view"), ("flip", 1, "view"),
              ("mix_index", 1, "view"), ("mix_lam", 1, "block"), ("mix_bbox", 4, "block")],
    "fkd": [("image", len(IMAGE_COLUMNS), "block"), ("coords", 4, "view"), ("flip", 1, "view"), ("files", 1, None)],
}

def read_augment(source) -> tuple[dict, dict[str, np.ndarray]]:
    """The explicit augmentation record of a ``.vqsl`` file: ``(record, fields)``, where
    ``fields`` maps each field to its decoded numpy array (``coords`` as floats of the source
    dtype, ``flip`` as bool, ``files`` as a list of names).  ``source``: a path, a Reader or a
    Container."""
    from ..format.container import Container
    from ..errors import FormatError

    own = None
    if isinstance(source, (str, os.PathLike)):
        c = own = Container.open(source)
    else:
        c = getattr(source, "container", source)
    try:
        record = c.read_msgpack("augment") if "augment" in c.sections else {"mode": "none"}
        if not isinstance(record, dict) or record.get("mode") != "explicit":
            raise InputError(f"{c.path}: has no explicit augmentation record "
                             f"(augment mode {record.get('mode') if isinstance(record, dict) else record!r})")
        layout = record.get("layout")
        if layout not in LAYOUTS:
            raise FormatError(f"{c.path}: unknown augmentation layout {layout!r}", rule=rules.SECTION_CONTENT)
        def bad(msg):
            raise FormatError(f"{c.path}: explicit augmentation record: {msg}", rule=rules.SECTION_CONTENT)

        expected = _FIELDS["fkd" if layout == "fkd" else "sre2l"]
        names_expected = sorted(f[0] for f in expected)
        if not isinstance(record.get("fields"), list) or sorted(map(str, record["fields"])) != names_expected:
            bad(f"fields {record.get('fields')!r}, expected {names_expected}")
        cr = record.get("coords")
        if not isinstance(cr, dict) or cr.get("coding") not in ("grid", "raw") or \
                cr.get("dtype") not in ("float16", "float32", "float64"):
            bad(f"coords {cr!r}")
        fields = {}
        for name, _, _ in expected:
            s = c.stream("augment/" + name)
            fields[name] = s.read_rows(0, s.rows)
        per = fields["image"] if layout == "fkd" else fields["batch"]
        counts = per[:, 0 if layout == "fkd" else 2].astype(np.int64) if per.ndim == 2 and per.shape[1] else None
        if counts is None or per.shape[1] != expected[0][1]:
            bad(f"augment/{expected[0][0]} is not {expected[0][1]} columns wide")
        n, blocks = int(counts.sum()), per.shape[0]
        for name, width, rows_of in expected[1:]:
            want = {"view": n, "block": blocks}.get(rows_of)
            arr = fields[name]
            if arr.shape[1] != width or (want is not None and arr.shape[0] != want):
                bad(f"augment/{name} is {list(arr.shape)}, expected [{want if want is not None else '*'}, {width}]")
        if n != c.header["labels"]["count"]:
            bad(f"{n} views for {c.header['labels']['count']} labels")
        if cr["coding"] == "grid":
            if fields["coords"].dtype != np.uint16:
                bad("grid-coded coords are not uint16")
            if ((per[:, -1] == 0) & (counts > 0)).any():
                bad("a grid-coded block has coords_scale 0")
            scale = np.repeat(per[:, -1].astype(np.int64), counts)
            fields["coords"] = decode_coords(fields["coords"], scale[:, None], cr["dtype"])
        elif fields["coords"].dtype != np.dtype(cr["dtype"]):
            bad(f"raw coords are {fields['coords'].dtype}, the record says {cr['dtype']}")
        fields["flip"] = fields["flip"][:, 0].astype(bool)
        if layout == "fkd":
            try:
                names = bytes(fields["files"][:, 0]).decode("utf-8").split("\n")
            except UnicodeDecodeError:
                bad("augment/files is not UTF-8")
            if names[-1] != "" or len(names) - 1 != blocks:
                bad("augment/files does not name exactly one file per image")
            fields["files"] = names[:-1]
        else:
            fields["mix_index"] = fields["mix_index"][:, 0]
            fields["mix_lam"] = fields["mix_lam"][:, 0]
        return record, fields
    finally:
        if own is not None:
            own.close()


# --------------------------------------------------------------------------- export
def export_folder(vqsl_path, folder, layout: str | None = None, *, device: str = "cpu", progress=None) -> str:
    """Write the framework layout of ``vqsl_path``'s labels into ``folder`` (which must not
    exist, or be empty); the folder appears complete or not at all.  ``layout``: ``sre2l``
    (also for files imported from ``lpqld``: dense logits) or ``fkd``; default: the one
    recorded.  Labels are the decoded ones: logits for ``sre2l`` (log-probabilities when the
    codec decodes probabilities, e.g. ``topk``), top-k probabilities for ``fkd``."""
    from ..pipeline import reader as api

    folder = os.fspath(folder)
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise ConfigError(f"{folder}: exists and is not an empty folder")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{folder}: folder {parent} does not exist")
    with api.open(vqsl_path) as reader:
        record, fields = read_augment(reader)
        layout = layout or ("fkd" if record["layout"] == "fkd" else "sre2l")
        if layout not in EXPORT_LAYOUTS:
            raise ConfigError(f"export layout must be one of {', '.join(EXPORT_LAYOUTS)}, got {layout!r}")
        if (layout == "fkd") != (record["layout"] == "fkd"):
            raise ConfigError(f"{vqsl_path}: holds a {record['layout']} record, which cannot be written as {layout}")
        from ..format.atomic import atomic_folder
        with atomic_folder(folder) as tmp:  # complete or absent; the mode a plain mkdir gives
            if layout == "fkd":
                _export_fkd(reader, record, fields, tmp, device, progress)
            else:
                _export_batches(reader, record, fields, tmp, device, progress)
    return folder


def _tag(record, key, default):
    tag = record.get("source", {}).get(key, default)
    kind, _, dtype = tag.partition(":")
    return kind, dtype


def _save(obj, path):
    import torch
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(obj, path)


def _export_batches(reader, record, fields, out, device, progress):
    import torch
    batches = fields["batch"]
    flags_of = record["flags"]
    lpqld = record["layout"] == "lpqld"
    c_kind, c_dtype = _tag(record, "coords", "torch:float32")
    f_kind, f_dtype = _tag(record, "flip", "torch:bool")
    i_kind, i_dtype = _tag(record, "mix_index", "torch:int64")
    l_kind, l_dtype = _tag(record, "logits", "torch:float16") if not lpqld else ("torch", "float16")
    lam_tag = record.get("source", {}).get("mix_lam", "float")
    bbox_tag = record.get("source", {}).get("mix_bbox", "list")
    suffix = record.get("suffix", ".tar")
    start = 0
    for j, (epoch, batch, rows, flags, _) in enumerate(batches.tolist()):
        sl = slice(start, start + rows)
        start += rows
        logits = reader.decode(sl, device=device, as_="logits" if reader.decoded_kind == "logits" else "log_probs")
        coords = _typed(fields["coords"][sl].astype(c_dtype), c_kind)
        flip = _typed(fields["flip"][sl].astype(f_dtype), f_kind)
        mix_index = _typed(fields["mix_index"][sl].astype(i_dtype), i_kind) if flags & flags_of["mix_index"] else None
        lam = None
        if flags & flags_of["mix_lam"]:
            lam = _from_lam(float(fields["mix_lam"][j]), lam_tag)
        bbox = None
        if flags & flags_of["mix_bbox"]:
            bbox = _from_bbox(fields["mix_bbox"][j], bbox_tag)
        obj = [coords, flip, mix_index, lam, bbox,
               _typed(logits.cpu().numpy().astype(l_dtype), l_kind) if l_kind == "numpy" else
               logits.cpu().to(getattr(torch, l_dtype))]
        _save(obj, os.path.join(out, f"epoch_{epoch}", f"batch_{batch}{suffix}"))
        if progress is not None:
            progress(j + 1, len(batches), "export")


def _from_lam(value, tag):
    import torch
    kind, _, dtype = tag.partition(":")
    if kind == "tensor":
        return torch.tensor(value, dtype=getattr(torch, dtype))
    if kind == "numpy":
        return np.dtype(dtype).type(value)
    return value


def _from_bbox(arr, tag):
    kind, _, dtype = tag.partition(":")
    if kind == "list":
        return [int(v) for v in arr]
    return _typed(arr.astype(dtype), kind)


def _export_fkd(reader, record, fields, out, device, progress):
    import torch

    from ..errors import FormatError
    k = int(record["k"])
    src = record.get("source", {})
    c_kind, c_dtype = src.get("coords", "numpy:float32").split(":")
    f_kind, f_dtype = src.get("flip", "numpy:bool").split(":")
    l_kind, l_dtype = src.get("label", "numpy:float32").split(":")
    form = src.get("form", "list")
    start = 0
    images = fields["image"]
    for i, (name, (views, _)) in enumerate(zip(fields["files"], images.tolist())):
        sl = slice(start, start + views)
        start += views
        if not name or any(part in ("", ".", "..") for part in name.split("/")) or "\\" in name:
            raise FormatError(f"augment/files names {name!r}, which is not a plain relative path",
                              rule=rules.SECTION_CONTENT)
        if views:
            probs = reader.decode(np.arange(sl.start, sl.stop), device=device, as_="probs").cpu()
            values, ids = torch.sort(probs, dim=1, descending=True, stable=True)
            values, ids = values[:, :k], ids[:, :k]
        else:
            values = ids = torch.zeros((0, k))
        label = np.stack([ids.numpy().astype(np.float64), values.numpy().astype(np.float64)], axis=1)
        label = _typed(label.astype(l_dtype), l_kind)
        coords = _typed(fields["coords"][sl].astype(c_dtype), c_kind)
        flip = _typed(fields["flip"][sl].astype(f_dtype), f_kind)
        obj = {"coords": coords, "flip": flip, "label": label} if form == "dict" else [coords, flip, label]
        _save(obj, os.path.join(out, *name.split("/")))
        if progress is not None:
            progress(i + 1, len(images), "export")


__all__ = ["import_folder", "export_folder", "read_augment", "load_file", "LAYOUTS", "EXPORT_LAYOUTS"]
