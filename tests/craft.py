"""Helpers that take a valid .vqsl file apart and put it back together with one thing wrong.

Checksums are recomputed after the change unless asked not to, so that each crafted file
breaks exactly the rule under test rather than only a CRC.
"""
import struct
import zlib

import msgpack

from slcodec.format.container import PREAMBLE

FIELDS = ("magic", "major", "minor", "required_flags", "optional_flags", "reserved", "header_offset",
          "header_length", "file_length", "header_crc32", "reserved2", "preamble_crc32")


def parse(data: bytes):
    pre = dict(zip(FIELDS, PREAMBLE.unpack(data[:64])))
    off, length = pre["header_offset"], pre["header_length"]
    header = msgpack.unpackb(data[off:off + length], raw=False)
    return pre, header


def crc(b):
    return zlib.crc32(b) & 0xFFFFFFFF


def pack_preamble(pre: dict, fix_crc=True) -> bytes:
    raw = PREAMBLE.pack(*(pre[f] for f in FIELDS))
    if fix_crc:
        raw = raw[:60] + struct.pack("<I", crc(raw[:60]))
    return raw


def rebuild(data: bytes, header=None, header_bytes=None, body=None, fix_crc=True, **pre_overrides) -> bytes:
    """Reassemble ``data`` with a new header (dict or raw bytes), body (bytes 64..header) or preamble fields."""
    pre, old_header = parse(data)
    body = data[64:pre["header_offset"]] if body is None else body
    if header_bytes is None:
        header_bytes = msgpack.packb(old_header if header is None else header, use_bin_type=True)
    pre["header_offset"] = 64 + len(body)
    pre["header_length"] = len(header_bytes)
    pre["file_length"] = 64 + len(body) + len(header_bytes)
    pre["header_crc32"] = crc(header_bytes)
    pre.update(pre_overrides)
    return pack_preamble(pre, fix_crc) + body + header_bytes


def section(header, name):
    return next(s for s in header["sections"] if s["name"] == name)


def rewrite_file(src, out, params=None, config=None, shape=None, minor=2):
    """``src`` rewritten to ``out`` with valid checksums and edited codec params (name -> array,
    or None to drop it), codec config keys and label shape: hostile files that only a codec's
    own checks can reject."""
    import os

    from slcodec.format.container import Container, ContainerWriter
    from slcodec.format.shards import _copy_section
    with Container.open(src) as c:
        header = {k: v for k, v in c.header.items() if k != "sections"}
        header["codec"] = dict(header["codec"], config=dict(header["codec"]["config"], **(config or {})))
        if shape is not None:
            header["labels"] = dict(header["labels"], shape=shape)
        builders = []
        with ContainerWriter(out) as cw:
            for sec in c.header["sections"]:
                name = sec["name"]
                if name.startswith("params/") and params and name[7:] in params:
                    if params[name[7:]] is not None:
                        cw.add_array(name, params[name[7:]])
                    continue
                _copy_section(cw, c, sec, os.path.dirname(out), builders)
            for name, a in (params or {}).items():   # params the file did not have: added
                if a is not None and "params/" + name not in c.sections:
                    cw.add_array("params/" + name, a)
            cw.commit(header, minor=minor)
        for b in builders:
            b.close()


def assert_rejected(path, rule):
    """Opening and decoding ``path`` raises FormatError(rule); ``slcodec verify`` exits 1."""
    import pytest

    import slcodec
    from slcodec.cli import main as cli_main
    from slcodec.errors import FormatError
    with pytest.raises(FormatError) as ei:
        with slcodec.open(path) as r:
            r.decode(None)
    assert ei.value.rule == rule
    assert cli_main(["verify", str(path)]) == 1


def add_raw_stream(writer, name, chunks, dtype, width, chunk_rows, rows=None, filters=("transpose", "byteshuffle")):
    """Add a stream section made of the given stored chunks (bytes, e.g. hand-made zstd frames),
    with a correct chunk index and CRCs: streams no StreamBuilder would write."""
    from slcodec.format.container import CHUNK_ENTRY
    index = bytearray()
    end = 0
    for chunk in chunks:
        end += len(chunk)
        index += CHUNK_ENTRY.pack(end, crc(chunk), 0)
    rows = len(chunks) * chunk_rows if rows is None else rows
    writer._add_parts(name, "stream", list(chunks) + [bytes(index)],
                      {"dtype": dtype, "rows": rows, "width": width, "chunk_rows": chunk_rows,
                       "coding": "zstd", "filters": list(filters)})
