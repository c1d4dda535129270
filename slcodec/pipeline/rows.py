"""Rows of labels: :class:`RowReader` (block reads that keep a memory-mapped input out of
resident memory), :func:`fit_rows` (the rows a whole-input encode fits on) and
:func:`label_block` (the checked torch block a writer encodes)."""
from __future__ import annotations

import mmap

import numpy as np

from ..errors import InputError


def fit_rows(n: int, k: int) -> np.ndarray:
    """The sorted label indices an encode of ``n`` labels fits on: ``k`` evenly spaced rows,
    the first and the last included, or all rows when there are fewer than ``k``.  Evenly
    spaced rather than the first ``k``: inputs are often ordered by class or by image."""
    if n <= k:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


class RowReader:
    """Reads row blocks of a 2-D label array without keeping them resident.

    For a memory-mapped ``.npy`` (or a contiguous ``.h5`` dataset, which slcodec maps the
    same way) blocks are read with plain file reads into fresh buffers, so the pages of the
    mapping are never touched and the process's resident memory stays at one block however
    large the file; any other array is indexed as it is.
    """

    def __init__(self, rows: np.ndarray):
        self.rows = rows
        self.n, self.classes = rows.shape
        self.dtype = rows.dtype
        self._row_bytes = self.classes * rows.dtype.itemsize
        self._f = None
        self._offset = None
        try:
            self._open_file()
        except (OSError, ValueError, TypeError, AttributeError):
            self.close()

    def _open_file(self):
        rows = self.rows
        mm = getattr(rows, "_mmap", None)
        name = getattr(rows, "filename", None)
        if not isinstance(rows, np.memmap) or mm is None or not name or not rows.flags.c_contiguous or self.n == 0:
            return
        if getattr(rows, "mode", None) == "c":  # copy-on-write: changes made in memory are not in the file
            return
        base = np.frombuffer(mm, dtype=np.uint8)
        rel = rows.ctypes.data - base.ctypes.data
        del base
        map_start = rows.offset - rows.offset % mmap.ALLOCATIONGRANULARITY
        offset = map_start + rel
        f = open(name, "rb", buffering=0)
        self._f, self._offset = f, offset
        # one row read both ways must agree, else fall back to indexing the map
        if not np.array_equal(self._pread(0, 1), np.asarray(rows[:1]), equal_nan=True):
            self.close()

    @property
    def uses_file_reads(self) -> bool:
        return self._f is not None

    def _pread(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.classes), dtype=self.dtype)
        view = memoryview(out).cast("B")
        self._f.seek(self._offset + start * self._row_bytes)
        got = 0
        while got < len(view):
            k = self._f.readinto(view[got:])
            if not k:
                raise InputError(f"{self._f.name}: file ended early (truncated while reading?)")
            got += k
        return out

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as an array that owns its memory."""
        if self._f is not None:
            return self._pread(start, stop)
        return np.array(self.rows[start:stop])

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows at sorted ``index``."""
        index = np.asarray(index, dtype=np.int64)
        if self._f is None:
            return np.array(self.rows[index])
        out = np.empty((index.size, self.classes), dtype=self.dtype)
        # consecutive runs are read at once
        breaks = np.nonzero(np.diff(index) != 1)[0] + 1
        pos = 0
        for run in np.split(index, breaks):
            if run.size:
                out[pos:pos + run.size] = self._pread(int(run[0]), int(run[-1]) + 1)
                pos += run.size
        return out

    def close(self):
        if self._f is not None:
            self._f.close()
        self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def label_block(labels, classes: int, first_index: int = 0):
    """Labels appended to a writer (numpy or torch, ``[..., C]``) as a 2-D torch tensor ``[n, C]``
    (not copied; any floating dtype, any device); NaN or Inf is an InputError naming the row
    (``first_index``: the global index of the first row)."""
    import torch
    if isinstance(labels, torch.Tensor):
        t = labels.detach()
    else:
        arr = np.asarray(labels)
        if arr.dtype.kind != "f":
            raise InputError(f"labels are {arr.dtype}, expected floating point")
        native = arr.dtype.newbyteorder("=")
        if arr.dtype != native or not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, dtype=native, order="C")  # a copy torch can own
        t = torch.from_numpy(arr)
    if not t.dtype.is_floating_point:
        raise InputError(f"labels are {t.dtype}, expected floating point")
    if t.ndim < 1 or t.shape[-1] != classes:
        raise InputError(f"labels have shape {list(t.shape)}; expected [..., {classes}]")
    t = t.reshape(-1, classes)
    if t.shape[0] and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t).all(dim=1)).nonzero()[0, 0])
        raise InputError(f"label row {first_index + bad} holds NaN or Inf")
    return t


__all__ = ["RowReader", "fit_rows", "label_block"]
