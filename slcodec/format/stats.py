"""Exact bit accounting of a ``.vqsl`` file, from its bytes alone (no torch).

Every byte of the file belongs to exactly one entry: the preamble, a section (with the
zero padding that follows it) or the header; the entries add up to the file size.
The JSON form (``slcodec stats --json``) is documented in FORMAT.md ("stats JSON").
"""
from __future__ import annotations

import math
import os

from .container import PREAMBLE, Container, align_up

STATS_VERSION = 1
TOPK_BASELINES = (5, 10, 50)


def section_group(name: str) -> str:
    """Which part of the bit budget a section belongs to."""
    if name.startswith("streams/"):
        return "label_streams"       # marginal: grows with the number of labels
    if name.startswith("params/"):
        return "codec_params"        # fixed: codebooks, decoder weights
    if name.startswith("augment"):
        return "augmentation"
    return "metadata"                # provenance and other free-form sections


#: stored config keys a codec leaves to be chosen (None or "auto") -> the fit-info key that records
#: the value used (the writer stores the fit info in the header)
RESOLVED_FROM_FIT_INFO = {"vq": {"codes": "M", "codebook_size": "K", "encoder_input": "encoder_input"}}


def resolved_codec_config(codec: dict) -> dict:
    """A header's codec config with the values that were chosen in place of the open ones
    (vq: the number of codes M, the codebook size K, the encoder's input and width)."""
    config = dict(codec.get("config") or {}) if isinstance(codec.get("config"), dict) else {}
    info = codec.get("info") if isinstance(codec.get("info"), dict) else {}
    for key, recorded in RESOLVED_FROM_FIT_INFO.get(codec.get("id"), {}).items():
        value = info.get(recorded)
        if key in config and config[key] in (None, "auto") and isinstance(value, (int, str)):
            config[key] = value
    if codec.get("id") == "vq" and config.get("encoder_hidden") is None and "encoder_hidden" in config:
        config["encoder_hidden"] = config.get("hidden")    # the encoder's width defaults to the decoder's
    return config


def format_config(config: dict) -> str:
    """``key=value`` pairs, lists without brackets: one readable line."""
    def text(v):
        if isinstance(v, (list, tuple)):
            return ",".join(text(x) for x in v)
        return f"{v:g}" if isinstance(v, float) else str(v)
    return " ".join(f"{k}={text(v)}" for k, v in config.items()) or "(no options)"


def format_ratio(r: float | None) -> str:
    """A size ratio that never reads as 0.0x: two significant digits below 1."""
    if r is None or not math.isfinite(r):
        return "-"
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 1:
        return f"{r:.1f}x"
    return f"{r:.2g}x" if r > 0 else "0x"


#: one line per storage layout the stats compare with (the same words in stats and --compare)
PACKED_TOPK_WHAT = "k class ids of ceil(log2 C) bits + k FP16 values per label, packed, nothing else"


def topk_bits_per_label(classes: int, k: int) -> int:
    """FKD-style top-k storage: k class ids of ceil(log2 C) bits + k FP16 values."""
    return k * (math.ceil(math.log2(classes)) + 16)


def file_stats(container: Container, shards=None) -> dict:
    """Stats of one file; for a manifest with ``shards`` (its opened shard containers, in
    order) the stats of the whole set: the shards' sections are added up by name (``streams/ids``
    is the sum over all shards) and their preambles and headers are the entries ``(shard
    preambles)`` and ``(shard headers)``; ``file_bytes`` is then the bytes of all the files."""
    h = container.header
    lab = h["labels"]
    n, classes, shape = lab["count"], lab["classes"], lab["shape"]
    file_bytes = container.preamble.file_length
    entries = [{"name": "(preamble)", "kind": "preamble", "group": "overhead", "bytes": PREAMBLE.size}]
    for sec in h["sections"]:
        entries.append({"name": sec["name"], "kind": sec["kind"], "group": section_group(sec["name"]),
                        "bytes": align_up(sec["offset"] + sec["length"]) - sec["offset"],
                        "payload_bytes": sec["length"]})
    entries.append({"name": "(header)", "kind": "header", "group": "overhead",
                    "bytes": container.preamble.header_length})
    if shards:
        summed: dict = {}
        for c in shards:
            file_bytes += c.preamble.file_length
            for sec in c.header["sections"]:
                e = summed.setdefault(sec["name"], {"name": sec["name"], "kind": sec["kind"],
                                                    "group": section_group(sec["name"]), "bytes": 0,
                                                    "payload_bytes": 0})
                e["bytes"] += align_up(sec["offset"] + sec["length"]) - sec["offset"]
                e["payload_bytes"] += sec["length"]
        entries.append({"name": "(shard preambles)", "kind": "preamble", "group": "overhead",
                        "bytes": PREAMBLE.size * len(shards)})
        entries.extend(summed.values())
        entries.append({"name": "(shard headers)", "kind": "header", "group": "overhead",
                        "bytes": sum(c.preamble.header_length for c in shards)})
    total = sum(e["bytes"] for e in entries)
    assert total == file_bytes, "section table does not cover the file"  # guaranteed by the reader's checks
    per = max(n, 1)
    for e in entries:
        e["bits_per_label"] = e["bytes"] * 8 / per
    groups = {}
    for e in entries:
        groups[e["group"]] = groups.get(e["group"], 0) + e["bytes"]
    file_bits = file_bytes * 8
    images = shape[0] if len(shape) == 3 else None
    fp32_bits = 32 * classes * n
    fp16_bits = 16 * classes * n
    out = {
        "stats_version": STATS_VERSION,
        "file": os.path.basename(container.path),
        "file_bytes": file_bytes,
        "files": 1 + len(shards or ()),
        "format_version": f"{container.preamble.major}.{container.preamble.minor}",
        "codec": h["codec"]["id"],
        "codec_config": h["codec"]["config"],
        "codec_resolved_config": resolved_codec_config(h["codec"]),
        "labels": n,
        "shape": shape,
        "classes": classes,
        "images": images,
        "augmentations_per_image": shape[1] if len(shape) == 3 else None,
        "source_kind": lab["source_kind"],
        "temperatures": lab.get("temperatures", [1.0]),
        "sections": entries,
        "groups": {g: {"bytes": b, "bits_per_label": b * 8 / per} for g, b in sorted(groups.items())},
        "bits_per_label": file_bits / per,
        "marginal_bits_per_label": groups.get("label_streams", 0) * 8 / per,
        "fixed_bytes": file_bytes - groups.get("label_streams", 0),
        "bits_per_image": file_bits / images if images else None,
        "baselines": {
            "fp32": {"bits_per_label": 32 * classes, "ratio": fp32_bits / file_bits},
            "fp16": {"bits_per_label": 16 * classes, "ratio": fp16_bits / file_bits},
        },
    }
    # Augmentation: explicit per-view records (stream sections augment/...) cost bits per view;
    # a seeded record is one small msgpack section whatever the number of views.
    per_view = sum(e["bytes"] for e in entries if e["name"].startswith("augment/"))
    record = sum(e["bytes"] for e in entries if e["name"] == "augment")
    mode = None
    if "augment" in container.sections and container.sections["augment"]["kind"] == "msgpack":
        rec = container.read_msgpack("augment")
        mode = rec.get("mode") if isinstance(rec, dict) else None
    out["augmentation"] = {"mode": mode, "record_bytes": record, "per_view_bytes": per_view,
                           "bits_per_view": per_view * 8 / per}
    for k in TOPK_BASELINES:
        if k < classes:
            bits = topk_bits_per_label(classes, k)
            out["baselines"][f"top{k}"] = {"bits_per_label": bits, "ratio": bits * n / file_bits}
    return out


#: default relabeling batch of SRe2L / CDA / LPLD (their per-batch records are shared by a batch)
FRAMEWORK_BATCH = 1024


def framework_storage(labels: int, classes: int, augs: int | None, batch: int = FRAMEWORK_BATCH) -> list[dict]:
    """Bytes the frameworks' own files would hold for a label set of ``labels`` soft labels of
    ``classes`` classes (array payloads as SOFT_LABELS.md describes them; the pickle container
    around them is not counted, so these are lower bounds).  ``augs``: views per image, for the
    per-image column.

    * SRe2L / CDA / LPLD, per label: logits C x FP16 (or FP32), crop box 4 x float32, flip bool,
      mix index int64; per batch of ``batch``: mix lambda float64 + CutMix box 4 x int64.
    * FKD, per label (crop): box 4 x float32, flip bool, label [2, k] float32 (ids and probs), k = 5.
    * LPQLD, per label: box 4 x FP16, mix index uint8, top-k logits k x FP16 + ids k x int16;
      per batch the mix lambda and box as above; MR-10/50/100 keep k = 10/50/100 classes.
    """
    batches = math.ceil(labels / batch) if labels else 0
    per_batch = 8 + 4 * 8
    rows = []

    def add(name, per_label, what, per_batch_bytes=0):
        total = per_label * labels + per_batch_bytes * batches
        rows.append({"layout": name, "what": what, "bytes": total,
                     "bits_per_label": total * 8 / max(labels, 1),
                     "bits_per_image": total * 8 / max(labels, 1) * augs if augs else None})

    crop = 4 * 4 + 1
    add("SRe2L/CDA FP16", 2 * classes + crop + 8, "FP16 logits + crop/flip/mix records", per_batch)
    add("SRe2L/CDA FP32", 4 * classes + crop + 8, "FP32 logits + crop/flip/mix records", per_batch)
    add("FKD top-5", crop + 2 * 5 * 4, "top-5 ids+probs (float32) + crop/flip per crop")
    for k in (10, 50, 100):
        if k < classes:
            add(f"LPQLD MR-{k}", 4 * 2 + 1 + k * 2 + k * 2, f"top-{k} FP16 logits + int16 ids + FP16 crop, uint8 mix",
                per_batch)
    return rows


def add_comparison(s: dict, image_bytes: int | None = None, batch: int = FRAMEWORK_BATCH) -> dict:
    """Add ``compare`` to stats ``s``: the frameworks' storage of the same label set (and, with
    ``image_bytes`` per image, the share of labels in images + labels)."""
    augs = s.get("augmentations_per_image")
    rows = framework_storage(s["labels"], s["classes"], augs, batch)
    mine = {"layout": f"this file ({s['codec']})", "what": "everything in the .vqsl file", "bytes": s["file_bytes"],
            "bits_per_label": s["bits_per_label"], "bits_per_image": s.get("bits_per_image")}
    for r in [mine] + rows:
        r["x_this_file"] = r["bytes"] / s["file_bytes"] if s["file_bytes"] else None
        if image_bytes is not None and r["bits_per_image"] is not None:
            img_bits = 8 * image_bytes
            r["bits_per_image_with_image"] = r["bits_per_image"] + img_bits
            r["label_share"] = r["bits_per_image"] / (r["bits_per_image"] + img_bits)
    s["compare"] = {"relabel_batch": batch, "image_bytes": image_bytes, "rows": [mine] + rows,
                    "note": "framework sizes are array payloads only (their pickle containers add more)"}
    return s


def format_comparison(s: dict) -> str:
    c = s["compare"]
    img = c["image_bytes"]
    head = f"  {'layout':<22} {'bits/label':>12} {'bits/image':>14} {'bytes (this set)':>18} {'x this file':>12}"
    if img is not None:
        head += f" {'labels share':>13}"
    lines = [f"storage of this label set ({s['labels']:,} labels x {s['classes']} classes) in the frameworks' layouts"
             + (f", images of {img:,} bytes each" if img is not None else "") + ":", head]
    for r in c["rows"]:
        per_img = f"{r['bits_per_image']:,.0f}" if r["bits_per_image"] is not None else "-"
        line = (f"  {r['layout']:<22} {r['bits_per_label']:>12,.1f} {per_img:>14} {r['bytes']:>18,} "
                f"{format_ratio(r['x_this_file']):>12}")
        if img is not None:
            line += f" {100 * r['label_share']:>12.1f}%" if r.get("label_share") is not None else f" {'-':>13}"
        lines.append(line)
    lines.append("  what each layout stores:")
    for r in c["rows"]:
        lines.append(f"    {r['layout']}: {r['what']}")
    if img is None:
        lines.append("  (--image-bytes N adds each layout's share of images + labels)")
    elif s.get("augmentations_per_image") is None:
        lines.append("  (a flat [N, C] set has no images: give an [images, views, C] set for the share)")
    lines.append(f"  {c['note']}; relabeling batch {c['relabel_batch']:,} (SRe2L default)")
    return "\n".join(lines)


def format_stats(s: dict) -> str:
    lines = [f"{s['file']}: {s['labels']:,} labels {s['shape']} ({s['source_kind']}), codec {s['codec']}: "
             f"{format_config(s.get('codec_resolved_config', s['codec_config']))}",
             (f"set of {s['files']} files (manifest + shards)" if s.get("files", 1) > 1 else "file")
             + f": {s['file_bytes']:,} bytes = {s['bits_per_label']:.2f} bits/label"
             + (f" = {s['bits_per_image']:,.0f} bits/image" if s["bits_per_image"] else ""),
             f"marginal (label streams): {s['marginal_bits_per_label']:.2f} bits/label; "
             f"fixed part: {s['fixed_bytes']:,} bytes",
             "",
             f"  {'section':<28} {'kind':<9} {'group':<14} {'bytes':>12} {'bits/label':>11}"]
    for e in s["sections"]:
        lines.append(f"  {e['name']:<28} {e['kind']:<9} {e['group']:<14} {e['bytes']:>12,} {e['bits_per_label']:>11.3f}")
    a = s.get("augmentation")
    if a:
        lines.append(f"  augmentation ({a['mode']}): {a['bits_per_view']:.2f} bits per view "
                     f"+ a {a['record_bytes']:,}-byte record")
    lines.append(f"  {'total':<28} {'':<9} {'':<14} {s['file_bytes']:>12,} {s['bits_per_label']:>11.3f}")
    lines.append("")
    lines.append("  size of the same labels stored otherwise, as a multiple of this whole file:")
    for name, b in s["baselines"].items():
        label = {"fp32": "raw FP32", "fp16": "raw FP16"}.get(name, f"packed {name.replace('top', 'top-')}")
        lines.append(f"    {label:<26} {b['bits_per_label']:>8,} bits/label   {format_ratio(b['ratio']):>9}")
    if any(name.startswith("top") for name in s["baselines"]):
        lines.append(f"    (raw: C values per label; packed top-k: {PACKED_TOPK_WHAT};")
        lines.append("     the frameworks' own layouts, with their augmentation records: stats --compare)")
    if "fidelity" in s:
        f = s["fidelity"]
        lines.append("")
        lines.append(f"  fidelity against {f['reference']} ({f['labels']:,} labels), KL(p||q) in nats per label:")
        spread = f.get("kl_spread", {})
        lines.append(f"    {'T':>6} {'mean':>10} {'median':>10} {'p99':>10} {'max':>10}")
        for t, kl in f["kl"].items():
            sp = spread.get(t, {})
            cols = " ".join(f"{sp[k]:>10.5f}" if k in sp else f"{'-':>10}" for k in ("median", "p99", "max"))
            lines.append(f"    {t:>6} {kl:>10.5f} {cols}")
        lines.append(f"    top-1 agreement: {f['top1_agreement']:.4f}")
        lines.append(f"    top-5 overlap:   {f['top5_overlap']:.4f}")
    return "\n".join(lines)
