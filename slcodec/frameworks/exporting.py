"""``slcodec export``: a ``.vqsl`` file back into a framework's own layout."""
from __future__ import annotations

import os

import numpy as np

from ..errors import ConfigError
from ..format import rules
from .fields import _typed
from .layouts import EXPORT_LAYOUTS
from .records import read_augment


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


