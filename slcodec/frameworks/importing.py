"""``slcodec import``: a framework's folder (sre2l/CDA/LPLD, lpqld, fkd) into one ``.vqsl`` file."""
from __future__ import annotations

import os

import numpy as np

from .._checks import check_int
from ..errors import ConfigError, InputError
from .fields import _Coords, _Replan, _array, _bbox, _kind_of, _scalar_float
from .layouts import (BATCH_COLUMNS, FKD_SUFFIXES, FLAG_MIX_BBOX, FLAG_MIX_INDEX, FLAG_MIX_LAM, IMAGE_COLUMNS,
                      LAYOUTS, _BATCH_RE, _EPOCH_RE)
from .safe_load import load_file


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
