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


def format_stats(s: dict) -> str:
    lines = [f"{s['file']}: {s['labels']:,} labels {s['shape']} ({s['source_kind']}), codec {s['codec']} "
             f"{s['codec_config']}",
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
    lines.append("  compression ratio of the whole file against the same labels stored as:")
    for name, b in s["baselines"].items():
        label = {"fp32": "raw FP32", "fp16": "raw FP16"}.get(name, f"FKD {name} (ids + FP16)")
        lines.append(f"    {label:<26} {b['bits_per_label']:>8,} bits/label   {b['ratio']:>9.1f}x")
    if "fidelity" in s:
        f = s["fidelity"]
        lines.append("")
        lines.append(f"  fidelity against {f['reference']} ({f['labels']:,} labels):")
        for t, kl in f["kl"].items():
            lines.append(f"    mean KL(p||q) at T={t}: {kl:.5f} nats")
        lines.append(f"    top-1 agreement: {f['top1_agreement']:.4f}")
        lines.append(f"    top-5 overlap:   {f['top5_overlap']:.4f}")
    return "\n".join(lines)
