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
# The package is split by concern: layouts (names, patterns, record columns), safe_load, fields
# (field conversion, crop-box grids), importing, records (reading them back), exporting.  This
# module keeps the names its callers use.
from .exporting import export_folder  # noqa: F401
from .importing import import_folder  # noqa: F401
from .layouts import EXPORT_LAYOUTS, LAYOUTS  # noqa: F401
from .records import read_augment  # noqa: F401
from .safe_load import load_file  # noqa: F401

__all__ = ["import_folder", "export_folder", "read_augment", "load_file", "LAYOUTS", "EXPORT_LAYOUTS"]
