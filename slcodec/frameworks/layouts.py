"""The frameworks' layouts: names, file patterns and the columns of the augmentation records."""
from __future__ import annotations

import re


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

