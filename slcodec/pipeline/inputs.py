"""Reading label files: ``.pt``, ``.npy``, ``.npz``, ``.h5`` (``file.h5:dataset``).

Labels are ``[N, C]`` or ``[images, augmentations, C]`` floating-point arrays of logits
or probabilities.  Nothing here unpickles: torch files are loaded with
``weights_only=True`` and numpy files with ``allow_pickle=False``.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, one_line

INPUT_KINDS = ("auto", "logits", "probs")
#: rows are checked in blocks of this many so a memory-mapped input is never read whole
_BLOCK = 16384


@dataclass
class LabelSource:
    """A label array (possibly memory-mapped) and what it holds."""

    array: np.ndarray          # [N, C] or [I, A, C], floating point
    kind: str                  # "logits" or "probs"
    kind_reason: str           # why kind was chosen (printed by the CLI)
    path: str = "<array>"

    @property
    def shape(self):
        return tuple(self.array.shape)

    @property
    def classes(self):
        return self.array.shape[-1]

    @property
    def count(self):
        return int(np.prod(self.array.shape[:-1]))

    def rows(self) -> np.ndarray:
        return self.array.reshape(-1, self.classes)


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``file.h5:dataset`` -> (file, dataset); a plain path (even with ':' in it) when it exists."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    path, _, key = spec.rpartition(":")
    return path, key or None


def load_array(spec: str, key_hint: str | None = None) -> tuple[np.ndarray, str | None]:
    """Load the label array named by ``spec``; returns (array, kind named by the file's key or None)."""
    path, key = _split_spec(spec)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, expected a label file")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".pt", ".pth", ".tar"):
            return _load_torch(path, key)
        if ext == ".npy":
            return _load_npy(path), None
        if ext == ".npz":
            return _load_npz(path, key)
        if ext in (".h5", ".hdf5"):
            return _load_h5(path, key)
    except InputError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: cannot read ({one_line(exc)})") from None
    raise InputError(f"{path}: unknown label file type {ext or '(none)'!r} (use .pt, .npy, .npz or .h5)")


def _pick(mapping: dict, key: str | None, path: str):
    if key is not None:
        if key not in mapping:
            raise InputError(f"{path}: has no entry {key!r} (entries: {', '.join(map(str, mapping))})")
        return mapping[key], (key if key in ("logits", "probs") else None)
    for name in ("logits", "probs"):
        if name in mapping:
            return mapping[name], name
    if len(mapping) == 1:
        return next(iter(mapping.values())), None
    raise InputError(f"{path}: holds several entries ({', '.join(map(str, mapping))}); "
                     f"name one as {path}:NAME, or store it as 'logits' or 'probs'")


def _load_torch(path: str, key: str | None):
    import pickle

    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Unsupported operand" in msg:  # not a pickle stream at all
            raise InputError(f"{path}: not a readable torch file (corrupt or not a torch.save file)") from None
        if "Weights only load failed" in msg:
            raise InputError(f"{path}: refused: the file holds objects other than tensors "
                             "(torch files are loaded with weights_only=True)") from None
        raise InputError(f"{path}: not a readable torch file ({one_line(exc, 160)})") from None
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable torch file ({one_line(exc, 160)})") from None
    kind = None
    if isinstance(obj, dict):
        obj, kind = _pick(obj, key, path)
    elif key is not None:
        raise InputError(f"{path}: holds a {type(obj).__name__}, not a dict with entry {key!r}")
    if not isinstance(obj, torch.Tensor):
        raise InputError(f"{path}: holds a {type(obj).__name__}, expected a tensor of labels")
    if obj.dtype == torch.bfloat16:
        obj = obj.float()
    if not obj.dtype.is_floating_point:
        raise InputError(f"{path}: labels are {obj.dtype}, expected floating point")
    return obj.detach().contiguous().numpy(), kind


def _load_npy(path: str) -> np.ndarray:
    """Memory-map a ``.npy`` file after checking its header ourselves (:func:`_npy_header`)."""
    with open(path, "rb") as f:
        dims, fortran, dtype, offset = _npy_header(f, os.fstat(f.fileno()).st_size, path)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(dims), order="F" if fortran else "C")


def _npy_header(f, size: int, where: str):
    """Read and check an npy header from ``f`` (``size`` bytes in all): a floating-point dtype,
    2 or 3 non-negative dimensions, and data the file actually holds (sizes in Python integers,
    so a hostile shape cannot overflow; numpy's own loader trusts the header and warns or fails
    on the way).  Returns (dims, fortran_order, dtype, data offset)."""
    from numpy.lib import format as npy_format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a header numpy would warn about is refused, quietly
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):  # 3.0 differs only in allowing UTF-8 field names
                shape, fortran, dtype = npy_format.read_array_header_2_0(f)
            else:
                raise InputError(f"{where}: .npy format version {version[0]}.{version[1]} is not supported")
    except InputError:
        raise
    except (ValueError, SyntaxError, TypeError, EOFError, OverflowError, Warning) as exc:
        raise InputError(f"{where}: not a valid .npy file ({one_line(exc, 160)})") from None
    offset = f.tell()
    if dtype.hasobject:
        raise InputError(f"{where}: holds Python objects (dtype {dtype}); only numeric labels are read (no pickle)")
    if dtype.kind != "f":
        raise InputError(f"{where}: labels are {dtype}, expected floating point")
    dims = list(shape)
    if any(not isinstance(d, int) or d < 0 for d in dims):
        raise InputError(f"{where}: the .npy header declares shape {dims}, with a negative dimension")
    if len(dims) not in (2, 3):
        raise InputError(f"{where}: labels have shape {dims}; expected [N, C] or [images, augmentations, C]")
    count = 1
    for d in dims:
        count *= d
    if count == 0:
        raise InputError(f"{where}: labels are empty (shape {dims})")
    nbytes = count * dtype.itemsize
    if nbytes > size - offset:
        raise InputError(f"{where}: the .npy header declares shape {dims} of {dtype} ({nbytes:,} bytes), but the "
                         f"file holds {max(0, size - offset):,} bytes of data (truncated or damaged)")
    return dims, fortran, dtype, offset


def _load_npz(path: str, key: str | None):
    with np.load(path, allow_pickle=False) as z:
        name, kind = _pick({name: name for name in z.files}, key, path)
        member = name if name in z.zip.namelist() else name + ".npy"
        with z.zip.open(member) as f:  # the member's header, checked as a .npy file's is
            _npy_header(f, z.zip.getinfo(member).file_size, f"{path}:{name}")
        return z[name], kind


def _load_h5(path: str, key: str | None):
    import h5py
    with h5py.File(path, "r") as f:
        return _read_h5(h5py, f, path, key)


def _read_h5(h5py, f, path: str, key: str | None):
    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    if key is None:
        for name in ("logits", "probs"):
            if name in names:
                key = name
                break
        if key is None:
            if len(names) != 1:
                raise InputError(f"{path}: name the dataset as {path}:DATASET (datasets: {', '.join(names) or 'none'})")
            key = names[0]
    if key not in names:
        raise InputError(f"{path}: has no dataset {key!r} (datasets: {', '.join(names) or 'none'})")
    dset = f[key]
    leaf = key.rsplit("/", 1)[-1]
    # Only data stored in this file is read: external raw storage and virtual datasets point
    # at other files (any file the process can read), as external links do (never followed).
    plist = dset.id.get_create_plist()
    if plist.get_external_count() > 0:
        raise InputError(f"{path}: dataset {key!r} keeps its data in external files; refused "
                         "(only data stored in the file itself is read)")
    if plist.get_layout() not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT):
        what = "a virtual dataset (data mapped from other files)" if dset.is_virtual else "of an unknown layout"
        raise InputError(f"{path}: dataset {key!r} is {what}; refused (only data stored in the file itself is read)")
    # Contiguous uncompressed datasets are memory-mapped through numpy; others are read whole.
    offset = dset.id.get_offset()
    if offset is not None and dset.chunks is None and dset.compression is None and dset.dtype.kind == "f":
        arr = np.memmap(path, mode="r", dtype=dset.dtype, shape=dset.shape, offset=offset)
    else:
        arr = dset[()]
    return arr, (leaf if leaf in ("logits", "probs") else None)


def check_labels(arr: np.ndarray, path: str) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
        raise InputError(f"{path}: labels are {getattr(arr, 'dtype', type(arr).__name__)}, expected floating point")
    if arr.ndim not in (2, 3):
        raise InputError(f"{path}: labels have shape {list(arr.shape)}; expected [N, C] or [images, augmentations, C]")
    if arr.shape[-1] < 2:
        raise InputError(f"{path}: labels have {arr.shape[-1]} class(es); at least 2 are needed")
    if arr.size == 0:
        raise InputError(f"{path}: labels are empty (shape {list(arr.shape)})")
    rows = arr.reshape(-1, arr.shape[-1])
    for start in range(0, rows.shape[0], _BLOCK):
        block = np.asarray(rows[start:start + _BLOCK])
        if not np.isfinite(block).all():
            bad = start + int(np.nonzero(~np.isfinite(block).all(axis=1))[0][0])
            raise InputError(f"{path}: label row {bad} holds NaN or Inf")


def detect_kind(arr: np.ndarray) -> tuple[str, str]:
    """Probabilities when every value is >= 0 and every row sums to 1; else logits."""
    rows = arr.reshape(-1, arr.shape[-1])
    tol = 1e-2 if arr.dtype.itemsize <= 2 else 1e-4
    worst = 0.0
    for start in range(0, rows.shape[0], _BLOCK):
        block = np.asarray(rows[start:start + _BLOCK], dtype=np.float64)
        if (block < 0).any():
            return "logits", "negative values present"
        worst = max(worst, float(np.abs(block.sum(axis=1) - 1.0).max()))
        if worst > tol:
            return "logits", f"rows do not sum to 1 (off by up to {worst:.3g})"
    return "probs", f"all values >= 0 and every row sums to 1 (within {tol:g})"


def check_probs(arr: np.ndarray, path: str) -> None:
    rows = arr.reshape(-1, arr.shape[-1])
    tol = 1e-2 if arr.dtype.itemsize <= 2 else 1e-4
    for start in range(0, rows.shape[0], _BLOCK):
        block = np.asarray(rows[start:start + _BLOCK], dtype=np.float64)
        if (block < 0).any():
            raise InputError(f"{path}: --input-kind probs, but labels hold negative values")
        if np.abs(block.sum(axis=1) - 1.0).max() > tol:
            raise InputError(f"{path}: --input-kind probs, but rows do not sum to 1")


def as_source(arr, path: str = "<array>", input_kind: str = "auto", key_kind: str | None = None) -> LabelSource:
    """Validate an array of labels and decide whether it holds logits or probabilities."""
    if input_kind not in INPUT_KINDS:
        raise InputError(f"input kind must be one of {', '.join(INPUT_KINDS)}, got {input_kind!r}")
    if not isinstance(arr, np.ndarray):
        try:
            import torch
            if isinstance(arr, torch.Tensor):
                arr = (arr.float() if arr.dtype == torch.bfloat16 else arr).detach().cpu().numpy()
        except ImportError:
            pass
        arr = np.asarray(arr)
    check_labels(arr, path)
    if input_kind == "auto":
        if key_kind is not None:
            kind, reason = key_kind, f"the file names the entry {key_kind!r}"
            if kind == "probs":
                check_probs(arr, path)
        else:
            kind, reason = detect_kind(arr)
            reason = "detected: " + reason
    else:
        kind, reason = input_kind, "forced by --input-kind"
        if kind == "probs":
            check_probs(arr, path)
    return LabelSource(arr, kind, reason, path)


def load_labels(spec: str, input_kind: str = "auto") -> LabelSource:
    arr, key_kind = load_array(spec)
    return as_source(arr, _split_spec(spec)[0], input_kind, key_kind)
