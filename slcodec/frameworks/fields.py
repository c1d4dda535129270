"""Converting the fields of framework files (tensors, arrays, scalars, boxes) and coding crop boxes
losslessly on a batch's own integer grid."""
from __future__ import annotations


import numpy as np

from ..errors import InputError
from .layouts import MAX_GRID, MAX_GRID_VALUES


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
