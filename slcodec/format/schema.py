"""Machine-readable description of the ``.vqsl`` header (format 1) and its validator.

``spec/header.schema.json`` is this ``HEADER_SCHEMA`` dumped as JSON
(``python -m slcodec.format.schema > spec/header.schema.json``); a test keeps the two equal.
The schema language is a small JSON-Schema subset:

* ``type``: ``map``, ``array``, ``str``, ``int``, ``float`` (int accepted), ``bool``, ``any``;
* ``keys``: the known keys of a map, each a schema; ``required``: keys that must be present.
  Unknown keys are ignored so that a later minor version can add optional fields;
* ``items``: schema of array items; ``min``/``max``: bounds of ints and floats,
  ``min_items``/``max_items`` of arrays, ``min_len``/``max_len`` of strings; ``enum``: allowed values.

``SHARDS_SCHEMA`` describes the ``shards`` msgpack section of a format-1.1 manifest (dumped
beside the header schema as ``shards_section``).
"""
from __future__ import annotations

import json

from ..errors import FormatError
from . import rules
from .limits import MAX_CLASSES  # labels.classes (why this number: limits.py)

DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
          "float16", "float32", "float64"]
U64 = 2**64 - 1
MAX_NAME = 128
#: shards of a set: each shard's table entry is 13 msgpack values, within MAX_MSGPACK_ITEMS
MAX_SHARDS = 1 << 16

_SECTION = {
    "type": "map",
    "required": ["name", "kind", "offset", "length", "crc32"],
    "keys": {
        "name": {"type": "str", "max_len": MAX_NAME},
        "kind": {"type": "str", "enum": ["array", "stream", "msgpack"]},
        "offset": {"type": "int", "min": 0, "max": U64},
        "length": {"type": "int", "min": 0, "max": U64},
        "crc32": {"type": "int", "min": 0, "max": 2**32 - 1},
        # array and stream sections
        "dtype": {"type": "str", "enum": DTYPES},
        # array sections
        "shape": {"type": "array", "max_items": 8, "items": {"type": "int", "min": 0, "max": U64}},
        # stream sections
        "rows": {"type": "int", "min": 0, "max": U64},
        "width": {"type": "int", "min": 1, "max": 2**31},
        "chunk_rows": {"type": "int", "min": 1, "max": 2**31},
        "coding": {"type": "str", "enum": ["raw", "zstd", "rans"]},
        "filters": {"type": "array", "max_items": 4,
                    "items": {"type": "str", "enum": ["transpose", "byteshuffle"]}},
        # format 1.6, streams coded "rans": the model (FORMAT.md, "Stream coding rans")
        "rans": {"type": "map",
                 "required": ["alphabet", "increment", "group_rows", "group_phase", "model_bytes", "model_crc32"],
                 "keys": {"alphabet": {"type": "int", "min": 2, "max": 1 << 16},
                          "increment": {"type": "int", "min": 0, "max": 1 << 16},
                          "group_rows": {"type": "int", "min": 0, "max": 1 << 16},
                          "group_phase": {"type": "int", "min": 0, "max": (1 << 16) - 1},
                          "model_bytes": {"type": "int", "min": 0, "max": U64},
                          "model_crc32": {"type": "int", "min": 0, "max": 2**32 - 1}}},
    },
}

HEADER_SCHEMA = {
    "type": "map",
    "required": ["labels", "codec", "sections"],
    "keys": {
        "labels": {
            "type": "map",
            "required": ["count", "shape", "classes", "source_kind"],
            "keys": {
                "count": {"type": "int", "min": 0, "max": 2**62},
                "shape": {"type": "array", "min_items": 2, "max_items": 3,
                          "items": {"type": "int", "min": 0, "max": 2**62}},
                "classes": {"type": "int", "min": 2, "max": MAX_CLASSES},
                "source_kind": {"type": "str", "enum": ["logits", "probs"]},
                "source_dtype": {"type": "str", "max_len": 32},
                "temperatures": {"type": "array", "max_items": 16,
                                 "items": {"type": "float", "min": 1e-6, "max": 1e6}},
            },
        },
        "codec": {
            "type": "map",
            "required": ["id", "config"],
            "keys": {
                "id": {"type": "str", "max_len": 64},
                "config": {"type": "map"},
                "info": {"type": "map"},
                # format 1.1, manifests and shards: sha256 of the codec's parameters (FORMAT.md)
                "params_sha256": {"type": "str", "min_len": 64, "max_len": 64},
            },
        },
        # format 1.1, shards: where the shard sits in its set (checked against the manifest)
        "shard": {
            "type": "map",
            "required": ["index", "start"],
            "keys": {
                "index": {"type": "int", "min": 0, "max": 2**32},
                "start": {"type": "int", "min": 0, "max": 2**62},
            },
        },
        "sections": {"type": "array", "max_items": 4096, "items": _SECTION},
        "created_by": {"type": "str", "max_len": 256},
    },
}

#: the ``shards`` msgpack section of a manifest (format 1.1)
SHARDS_SCHEMA = {
    "type": "map",
    "required": ["version", "shards"],
    "keys": {
        "version": {"type": "int", "min": 1, "max": 1},
        "shards": {
            "type": "array", "min_items": 1, "max_items": MAX_SHARDS,
            "items": {
                "type": "map",
                "required": ["file", "start", "count", "bytes", "sha256", "header_crc32"],
                "keys": {
                    "file": {"type": "str", "min_len": 1, "max_len": 255},
                    "start": {"type": "int", "min": 0, "max": 2**62},
                    "count": {"type": "int", "min": 1, "max": 2**62},
                    "bytes": {"type": "int", "min": 64, "max": U64},
                    "sha256": {"type": "str", "min_len": 64, "max_len": 64},
                    "header_crc32": {"type": "int", "min": 0, "max": 2**32 - 1},
                },
            },
        },
    },
}

_PY_TYPES = {"map": dict, "array": list, "str": str, "bool": bool}


def validate(obj, schema=HEADER_SCHEMA, path="header"):
    """Raise FormatError(rule=rules.HEADER_SCHEMA) unless ``obj`` matches ``schema``."""
    t = schema.get("type", "any")

    def bad(msg):
        raise FormatError(f"{path}: {msg}", rule=rules.HEADER_SCHEMA)

    if t == "int":
        if not isinstance(obj, int) or isinstance(obj, bool):
            bad(f"expected an integer, got {type(obj).__name__}")
    elif t == "float":
        if not isinstance(obj, (int, float)) or isinstance(obj, bool):
            bad(f"expected a number, got {type(obj).__name__}")
        if obj != obj:
            bad("NaN is not allowed")
    elif t != "any":
        if not isinstance(obj, _PY_TYPES[t]):
            bad(f"expected {t}, got {type(obj).__name__}")
    if "enum" in schema and obj not in schema["enum"]:
        bad(f"{obj!r} is not one of {schema['enum']}")
    if "min" in schema and obj < schema["min"]:
        bad(f"{obj!r} is below {schema['min']}")
    if "max" in schema and obj > schema["max"]:
        bad(f"{obj!r} is above {schema['max']}")
    if "max_len" in schema and len(obj) > schema["max_len"]:
        bad(f"longer than {schema['max_len']} characters")
    if "min_len" in schema and len(obj) < schema["min_len"]:
        bad(f"shorter than {schema['min_len']} characters")
    if t == "array":
        if len(obj) < schema.get("min_items", 0):
            bad(f"fewer than {schema['min_items']} items")
        if len(obj) > schema.get("max_items", 2**62):
            bad(f"more than {schema['max_items']} items")
        if "items" in schema:
            for i, item in enumerate(obj):
                validate(item, schema["items"], f"{path}[{i}]")
    if t == "map":
        for key in schema.get("required", ()):
            if key not in obj:
                bad(f"missing required key {key!r}")
        for key, sub in schema.get("keys", {}).items():
            if key in obj:
                validate(obj[key], sub, f"{path}.{key}")
    return obj


def dump() -> str:
    return json.dumps({"format": "vqsl", "major": 1, "header": HEADER_SCHEMA, "shards_section": SHARDS_SCHEMA},
                      indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(dump(), end="")
