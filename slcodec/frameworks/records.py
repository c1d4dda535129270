"""Reading the per-view augmentation records of an imported file back (``read_augment``)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from ..format import rules
from .fields import decode_coords
from .layouts import BATCH_COLUMNS, IMAGE_COLUMNS, LAYOUTS


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
