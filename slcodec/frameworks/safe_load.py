"""Loading framework files safely: ``torch.load(weights_only=True)`` with only the numpy globals a file
references allowed, and a check that the result holds nothing but tensors, arrays and plain values."""
from __future__ import annotations

import pickle

import numpy as np

from ..errors import InputError, one_line


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
