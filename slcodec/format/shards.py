"""Sharded label sets (format 1.1): a manifest plus shard files, no torch (see FORMAT.md).

A set named ``NAME.vqsl`` is the manifest ``NAME.vqsl`` (codec parameters, augmentation and
provenance records, and the ``shards`` table) and the shards ``NAME-TOKEN-00000.vqsl``,
``NAME-TOKEN-00001.vqsl``, ... beside it (the label streams of consecutive label ranges);
``TOKEN`` is 8 random hex digits, new for every write, so a write never touches the files of
the set it replaces until its manifest is in place (sets written before used ``NAME-00000.vqsl``;
a reader uses whatever names the manifest lists).

* :func:`params_sha256` - the hash that ties shards to their manifest's codec parameters;
* :func:`read_shard_table`, :func:`open_shard` - the checks a reader makes (cheap: sizes,
  header CRCs, header fields); :func:`verify_set` adds the full sha256 of every shard;
* :class:`ShardSetWriter` - writes shards and the manifest to temporary files and renames
  them into place, shards first, manifest last, then removes the replaced set's shards;
* :func:`merge`, :func:`split` - between a sharded set and a single file, copying stream rows
  (no re-encoding: the labels decode identically).
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
import struct

import numpy as np

from .._checks import check_int
from .._version import __version__
from . import rules, schema
from .atomic import remove_stale_temps
from .container import (FLAG_EXTERNAL_PARAMS, FLAG_MANIFEST, FORMAT_MINOR, FORMAT_MINOR_SHARDED, Container,
                        ContainerWriter, SpooledStreamBuilder)
from ..errors import ConfigError, FormatError, SetReplacedError

SHARDS_VERSION = 1
PARAMS_HASH_TAG = b"vqsl-params-sha256-v1\0"
HASH_BLOCK = 1 << 22


# --------------------------------------------------------------------------- hashes and names
def single_file_minor(set_minor: int) -> int:
    """The format minor of the single file that holds a sharded set's labels, from the set's
    own minor.  The minor is the newest feature a file uses (FORMAT.md); sharding is minor 1
    and every codec feature has a minor of its own above it, so a set of minor 1 used no
    feature but sharding (its merged file is 1.0) and a set of a higher minor uses that
    feature (its merged file keeps it).  This is how the format layer knows a codec's minor
    without loading the codec: the file that was written by it says so."""
    return FORMAT_MINOR if set_minor <= FORMAT_MINOR_SHARDED else int(set_minor)


def params_sha256(params: dict) -> str:
    """sha256 (hex) of a codec's parameters, as FORMAT.md defines it: the tag
    ``vqsl-params-sha256-v1\\0``, then for each parameter in ascending order of the UTF-8 bytes
    of its name (without ``params/``): ``u32 len(name) | name | u32 len(dtype) | dtype |
    u32 ndim | u64 dims... | u64 nbytes | the array's bytes`` (little-endian, C order)."""
    h = hashlib.sha256(PARAMS_HASH_TAG)
    for name in sorted(params, key=lambda n: n.encode("utf-8")):
        arr = np.asarray(params[name])
        le = arr.dtype.newbyteorder("<")
        data = np.ascontiguousarray(arr, dtype=le)
        nb, dt = name.encode("utf-8"), le.name.encode("ascii")
        h.update(struct.pack("<I", len(nb)) + nb + struct.pack("<I", len(dt)) + dt)
        h.update(struct.pack("<I", arr.ndim) + b"".join(struct.pack("<Q", d) for d in arr.shape))
        h.update(struct.pack("<Q", data.nbytes))
        h.update(memoryview(data.reshape(-1)).cast("B"))
    return h.hexdigest()


def container_params(c: Container) -> dict:
    return {name[len("params/"):]: c.read_array(name) for name in c.sections if name.startswith("params/")}


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(HASH_BLOCK)
            if not block:
                return h.hexdigest()
            h.update(block)


def _stem(manifest_path) -> str:
    base = os.path.basename(os.fspath(manifest_path))
    return base[:-len(".vqsl")] if base.endswith(".vqsl") and len(base) > 5 else base


def new_write_token() -> str:
    """The per-write part of shard names: 8 random hex digits."""
    return secrets.token_hex(4)


def shard_file_name(manifest_path, index: int, token: str | None = None) -> str:
    """``NAME-TOKEN-00000.vqsl`` for manifest ``NAME.vqsl`` (the base name, no folder);
    ``NAME-00000.vqsl`` without a token (the naming of sets written before tokens)."""
    if token is not None and not re.fullmatch(r"[0-9a-f]{8}", token):
        raise ValueError(f"a write token is 8 lowercase hex digits, got {token!r}")
    return f"{_stem(manifest_path)}-{'' if token is None else token + '-'}{index:05d}.vqsl"


def _shard_name_pattern(manifest_path, tokened_only: bool = False):
    token = "[0-9a-f]{8}-" if tokened_only else "(?:[0-9a-f]{8}-)?"
    return re.compile(re.escape(_stem(manifest_path)) + "-" + token + r"[0-9]{5,}\.vqsl")


def set_file_names(manifest_path):
    """A predicate: is a base name the manifest's or a shard's of the set ``manifest_path``
    (in slcodec's naming, with or without a write token)?"""
    base = os.path.basename(os.fspath(manifest_path))
    shard = _shard_name_pattern(manifest_path)
    return lambda name: name == base or shard.fullmatch(name) is not None


def remove_stale_set_temps(manifest_path) -> list[str]:
    """Remove the temporary files that killed writers (dead processes of this host) left for
    the output ``manifest_path``: its own temporary files and those of its shards."""
    folder = os.path.dirname(os.path.abspath(os.fspath(manifest_path)))
    return remove_stale_temps(folder, set_file_names(manifest_path))


def _plain_file_name(name: str) -> bool:
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and not name.startswith("."))


# --------------------------------------------------------------------------- reading
def read_shard_table(m: Container) -> list[dict]:
    """The manifest's shard entries, checked (rule ``manifest``): schema, plain file names,
    no name twice, ranges in order covering ``[0, count)`` exactly, and the header's
    ``params_sha256`` equal to the hash of the manifest's ``params/*`` sections."""
    def bad(msg):
        raise FormatError(f"{m.path}: {msg}", rule=rules.MANIFEST)

    if not m.is_manifest:
        bad("not a manifest (required flag bit 0 is clear)")
    table = m.read_msgpack("shards")
    try:
        schema.validate(table, schema.SHARDS_SCHEMA, "shards")
    except FormatError as exc:
        bad(f"section 'shards': {exc}")
    entries = table["shards"]
    seen = set()
    pos = 0
    for k, e in enumerate(entries):
        if not _plain_file_name(e["file"]):
            bad(f"shard {k}: file name {e['file']!r} is not a plain file name in the manifest's folder")
        if e["file"] in seen or e["file"] == os.path.basename(m.path):
            bad(f"shard {k}: file {e['file']!r} is named twice (or is the manifest)")
        seen.add(e["file"])
        if e["start"] != pos:
            bad(f"shard {k} starts at label {e['start']}, expected {pos} (shards must be in order, "
                "without gaps or overlaps)")
        pos += e["count"]
        try:
            int(e["sha256"], 16)
        except ValueError:
            bad(f"shard {k}: sha256 {e['sha256']!r} is not hexadecimal")
    if pos != m.header["labels"]["count"]:
        bad(f"shards hold {pos} labels, the manifest {m.header['labels']['count']}")
    if params_sha256(container_params(m)) != m.header["codec"]["params_sha256"]:
        bad("codec.params_sha256 is not the hash of the manifest's params/* sections")
    return entries


def shard_path(m: Container, entry: dict) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(m.path)), entry["file"])


def open_shard(m: Container, entries: list[dict], k: int) -> Container:
    """Open shard ``k`` of manifest ``m`` and check it against its entry (cheap checks: file
    size, header CRC, header fields; the full sha256 is :func:`verify_set`'s)."""
    e = entries[k]
    path = shard_path(m, e)
    try:
        if not os.path.isfile(path):
            raise FormatError(f"{m.path}: shard {k} ({e['file']}) is missing", rule=rules.SHARD_MISSING)
        size = os.path.getsize(path)
        if size != e["bytes"]:
            raise FormatError(f"{m.path}: shard {k} ({e['file']}) is {size} bytes, the manifest says {e['bytes']}",
                              rule=rules.SHARD_MISMATCH)
        c = Container.open(path)
        try:
            check_shard(m, e, k, c)
        except BaseException:
            c.close()
            raise
    except FormatError as exc:
        if manifest_replaced(m):
            raise SetReplacedError(f"{m.path}: the sharded set was replaced while it was being read (shard {k}, "
                                   f"{e['file']}, no longer belongs to the manifest opened); open it again") from exc
        raise
    return c


def manifest_replaced(m: Container) -> bool:
    """Whether the file at ``m.path`` is no longer the manifest ``m`` was opened from (a new
    set was renamed over it, or it was removed).  A writer renames a new manifest into place
    last and then removes the shards of the set it replaced, so a reader that opens a shard
    after that finds it gone: that is a replaced set, not a damaged one."""
    f = getattr(m, "_file", None)
    if f is None or f.closed:
        return False
    try:
        opened = os.fstat(f.fileno())
        now = os.stat(m.path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return (opened.st_dev, opened.st_ino) != (now.st_dev, now.st_ino)


def check_shard(m: Container, e: dict, k: int, c: Container) -> None:
    def bad(msg):
        raise FormatError(f"{m.path}: shard {k} ({e['file']}): {msg}", rule=rules.SHARD_MISMATCH)

    if c.preamble.file_length != e["bytes"]:
        bad(f"is {c.preamble.file_length} bytes, the manifest says {e['bytes']}")
    if c.preamble.header_crc32 != e["header_crc32"]:
        bad("header CRC differs from the manifest's (another file of the same name?)")
    if not c.is_shard or c.is_manifest:
        bad("is not a shard (required flag bit 1 clear)")
    h, mh = c.header, m.header
    lab, mlab = h["labels"], mh["labels"]
    if lab["count"] != e["count"] or list(lab["shape"]) != [e["count"], mlab["classes"]]:
        bad(f"holds {lab['count']} labels {lab['shape']}, the manifest says {e['count']}")
    for key in ("classes", "source_kind"):
        if lab[key] != mlab[key]:
            bad(f"labels.{key} is {lab[key]!r}, the manifest's {mlab[key]!r}")
    if h["codec"]["id"] != mh["codec"]["id"] or h["codec"]["config"] != mh["codec"]["config"]:
        bad("codec id or config differs from the manifest's")
    if h["codec"]["params_sha256"] != mh["codec"]["params_sha256"]:
        bad("params_sha256 differs from the manifest's codec parameters")
    if h.get("shard") != {"index": k, "start": e["start"]}:
        bad(f"says it is shard {h.get('shard')}, the manifest lists it as index {k} starting at {e['start']}")


def verify_set(path) -> list[str]:
    """Every check of a sharded set that needs no codec: the manifest's bytes, its table, and
    for each shard its presence, size, sha256, header fields and every byte (Container.verify).
    Returns the problems found (empty: valid)."""
    problems = []
    with Container.open(path) as m:
        problems += m.verify()
        if problems:
            return problems
        try:
            entries = read_shard_table(m)
        except FormatError as exc:
            return [str(exc)]
        for k, e in enumerate(entries):
            try:
                with open_shard(m, entries, k) as c:
                    if file_sha256(c.path) != e["sha256"].lower():
                        raise FormatError(f"{m.path}: shard {k} ({e['file']}): sha256 differs from the manifest's",
                                          rule=rules.SHARD_MISMATCH)
                    problems += [f"shard {k} ({e['file']}): {p}" for p in c.verify()]
            except FormatError as exc:
                problems.append(str(exc))
    return problems


# --------------------------------------------------------------------------- writing
class ShardSetWriter:
    """Writes a sharded set: :meth:`write_shard` for each shard (to a temporary file),
    :meth:`write_manifest`, then :meth:`publish` renames the shards and, last, the manifest.

    ``header``: the set's header without sections: ``labels`` of the whole set, ``codec``
    (``id``, ``config``, ``info``), ``created_by``.  ``params``: the codec's parameter arrays.
    Shard files are named with ``token`` (default: a new random one; the ranks of a
    distributed write share rank 0's), so they never have the name of a shard of the set being
    replaced: until the manifest is renamed into place a reader sees the old set whole, after
    it the new one (whose manifest names only new files).  :meth:`abort` removes the temporary
    files.  A crash between the shard renames and the manifest rename leaves the old set intact
    beside new shard files that no manifest names; the next write of the set removes them, as
    it removes the temporary files of writers that were killed."""

    def __init__(self, path, header: dict, params: dict, *, minor: int, token: str | None = None):
        self.path = os.fspath(path)
        # the newest format feature the codec's config uses (the caller asks the codec, or reads
        # the file being split): the format layer does not load codecs
        self.minor = int(minor)
        self.folder = os.path.dirname(os.path.abspath(self.path))
        self.header = header
        self.params = dict(params)
        self.params_hash = params_sha256(self.params)
        self.token = new_write_token() if token is None else token
        shard_file_name(self.path, 0, self.token)  # checks the token
        self._shards: list[ContainerWriter] = []
        self._manifest: ContainerWriter | None = None
        remove_stale_set_temps(self.path)

    def shard_header(self, index: int, start: int, count: int) -> dict:
        lab = dict(self.header["labels"])
        lab.update(count=int(count), shape=[int(count), lab["classes"]])
        codec = {"id": self.header["codec"]["id"], "config": self.header["codec"]["config"],
                 "params_sha256": self.params_hash}
        return {"labels": lab, "codec": codec, "shard": {"index": int(index), "start": int(start)},
                "created_by": f"slcodec {__version__}"}

    def write_shard(self, index: int, start: int, count: int, streams: dict) -> dict:
        """Write shard ``index`` holding labels ``[start, start+count)`` from stream builders
        ``{name: builder}``; returns its manifest entry."""
        cw = ContainerWriter(os.path.join(self.folder, shard_file_name(self.path, index, self.token)))
        self._shards.append(cw)
        for name, builder in streams.items():
            if builder.rows != count:
                raise RuntimeError(f"stream {name!r} has {builder.rows} rows for a shard of {count}")
            cw.add_stream("streams/" + name, builder)
        header = self.shard_header(index, start, count)
        cw.commit(header, required_flags=FLAG_EXTERNAL_PARAMS, publish=False, minor=self.minor)
        return {"file": os.path.basename(cw.path), "start": int(start), "count": int(count),
                "bytes": cw.file_length, "sha256": file_sha256(cw.tmp_path), "header_crc32": cw.header_crc32}

    def write_manifest(self, entries: list[dict], sections=()) -> None:
        """Write the manifest (to a temporary file): the params, then ``sections`` (a list of
        ``(name, kind, value)`` with kind ``msgpack``, ``array`` or ``stream`` (a builder)), then
        the ``shards`` table of ``entries`` (in label order)."""
        entries = sorted(entries, key=lambda e: e["start"])
        cw = self._manifest = ContainerWriter(self.path)
        for name, arr in self.params.items():
            cw.add_array("params/" + name, arr)
        for name, kind, value in sections:
            {"msgpack": cw.add_msgpack, "array": cw.add_array, "stream": cw.add_stream}[kind](name, value)
        cw.add_msgpack("shards", {"version": SHARDS_VERSION, "shards": entries})
        header = dict(self.header)
        header["codec"] = dict(header["codec"], params_sha256=self.params_hash)
        cw.commit(header, required_flags=FLAG_MANIFEST, publish=False, minor=self.minor)
        with Container.open(cw.tmp_path) as m:  # the table must pass the reader's checks
            read_shard_table(m)

    def publish_shards(self) -> None:
        for cw in self._shards:
            if not cw.closed:
                cw.publish()

    def publish_manifest(self) -> None:
        old = _old_shard_files(self.path)
        self._manifest.publish()
        keep = ({e["file"] for e in _table_of(self._manifest.path)}
                or {os.path.basename(cw.path) for cw in self._shards})
        # shards of the replaced set, and shards of writes killed before their manifest was
        # renamed (tokened names no manifest lists): never a file the new manifest names
        orphan = _shard_name_pattern(self.path, tokened_only=True)
        try:
            here = {n for n in os.listdir(self.folder) if orphan.fullmatch(n)}
        except OSError:
            here = set()
        for name in (old | here) - keep:
            try:
                os.unlink(os.path.join(self.folder, name))
            except OSError:
                pass

    def publish(self) -> str:
        self.publish_shards()
        self.publish_manifest()
        return self.path

    def abort(self) -> None:
        for cw in self._shards + ([self._manifest] if self._manifest else []):
            if not cw.closed:
                cw.abort()


def _table_of(path) -> list:
    try:
        with Container.open(path) as m:
            return read_shard_table(m)
    except (OSError, FormatError):
        return []


def _old_shard_files(path) -> set:
    """Shard files of the valid manifest at ``path`` (if any), to remove once it is replaced."""
    return {e["file"] for e in _table_of(path)}


def _copy_stream(builder, reader, start: int, stop: int) -> None:
    step = max(1, reader.chunk_rows)
    for lo in range(start, stop, step):
        builder.append(reader.read_rows(lo, min(stop, lo + step)))


def _builder_like(sec: dict, folder, first_row: int = 0) -> SpooledStreamBuilder:
    """A builder for the rows of stream ``sec`` from its row ``first_row`` on; a rans stream (1.6)
    keeps its context groups (the views of an image) where they are in the labels."""
    rans = sec.get("rans") if sec["coding"] == "rans" else None
    if rans is not None:
        group = rans["group_rows"]
        return SpooledStreamBuilder(sec["dtype"], sec["width"], chunk_rows=sec["chunk_rows"], coding="rans",
                                    filters=[], folder=folder, group_rows=group,
                                    group_phase=(rans["group_phase"] + first_row) % group if group else 0)
    return SpooledStreamBuilder(sec["dtype"], sec["width"], chunk_rows=sec["chunk_rows"], coding=sec["coding"],
                                filters=sec["filters"], folder=folder)


def merge(manifest_path, out_path) -> str:
    """Write the sharded set ``manifest_path`` as one plain (format 1.0) file ``out_path``."""
    folder = os.path.dirname(os.path.abspath(os.fspath(out_path)))
    with Container.open(manifest_path) as m:
        entries = read_shard_table(m)
        with open_shard(m, entries, 0) as first:
            stream_secs = [dict(s) for s in first.header["sections"] if s["name"].startswith("streams/")]
        builders = []
        with ContainerWriter(out_path) as cw:
            try:
                secs = [s for s in m.header["sections"] if s["name"] != "shards"]
                extra = [s for s in secs if not s["name"].startswith("params/")
                         and s["name"] not in ("augment", "provenance")]
                for s in secs:
                    if s not in extra:
                        _copy_section(cw, m, s, folder, builders)
                for s in stream_secs:
                    b = _builder_like(s, folder)
                    builders.append(b)
                    for k in range(len(entries)):
                        with open_shard(m, entries, k) as c:
                            r = c.stream(s["name"])
                            _copy_stream(b, r, 0, r.rows)
                    cw.add_stream(s["name"], b)
                for s in extra:
                    _copy_section(cw, m, s, folder, builders)
                header = {k: v for k, v in m.header.items() if k != "sections"}
                header["codec"] = {k: v for k, v in header["codec"].items() if k != "params_sha256"}
                cw.commit(header, minor=single_file_minor(m.preamble.minor))
            finally:
                for b in builders:
                    b.close()
    return os.fspath(out_path)


def _copy_section(cw, c: Container, sec: dict, folder, builders) -> None:
    name = sec["name"]
    if sec["kind"] == "array":
        cw.add_array(name, c.read_array(name))
    elif sec["kind"] == "msgpack":
        cw.add_msgpack(name, c.read_msgpack(name))
    else:
        b = _builder_like(sec, folder)
        builders.append(b)
        r = c.stream(name)
        _copy_stream(b, r, 0, r.rows)
        cw.add_stream(name, b)


def split(path, out_manifest, shards: int | None = None, shard_rows: int | None = None) -> str:
    """Write the plain file ``path`` as a sharded set: manifest ``out_manifest`` and ``shards``
    shards (or shards of ``shard_rows`` labels), copying stream rows."""
    if (shards is None) == (shard_rows is None):
        raise ConfigError("give exactly one of shards and shard_rows")
    for v, what in ((shards, "shards"), (shard_rows, "shard_rows")):
        if v is not None:
            check_int(v, what)
    if os.path.abspath(os.fspath(path)) == os.path.abspath(os.fspath(out_manifest)):
        raise ConfigError("split: the output must not be the input")
    with Container.open(path) as c:
        if c.is_manifest or c.is_shard:
            raise ConfigError(f"{c.path}: already part of a sharded set (merge it first)")
        n = c.header["labels"]["count"]
        rows = shard_rows if shard_rows is not None else max(1, math.ceil(n / shards))
        header = {k: v for k, v in c.header.items() if k != "sections"}
        header["codec"] = {k: v for k, v in header["codec"].items() if k != "params_sha256"}
        header.setdefault("created_by", f"slcodec {__version__}")
        w = ShardSetWriter(out_manifest, header, container_params(c), minor=c.preamble.minor)
        builders = []
        try:
            stream_secs = [s for s in c.header["sections"] if s["name"].startswith("streams/")]
            entries = []
            for k, start in enumerate(range(0, n, rows)):
                stop = min(n, start + rows)
                bs = {}
                for s in stream_secs:
                    b = bs[s["name"][len("streams/"):]] = _builder_like(s, w.folder, start)
                    builders.append(b)
                    _copy_stream(b, c.stream(s["name"]), start, stop)
                entries.append(w.write_shard(k, start, stop - start, bs))
                for b in bs.values():
                    b.close()
            sections = []
            for s in c.header["sections"]:
                name = s["name"]
                if name.startswith(("params/", "streams/")):
                    continue
                if s["kind"] == "array":
                    sections.append((name, "array", c.read_array(name)))
                elif s["kind"] == "msgpack":
                    sections.append((name, "msgpack", c.read_msgpack(name)))
                else:
                    b = _builder_like(s, w.folder)
                    builders.append(b)
                    r = c.stream(name)
                    _copy_stream(b, r, 0, r.rows)
                    sections.append((name, "stream", b))
            w.write_manifest(entries, sections)
            w.publish()
        except BaseException:
            w.abort()
            raise
        finally:
            for b in builders:
                b.close()
    return os.fspath(out_manifest)


__all__ = ["params_sha256", "single_file_minor", "read_shard_table", "open_shard", "verify_set", "ShardSetWriter",
           "merge", "split", "shard_file_name", "new_write_token", "manifest_replaced", "remove_stale_set_temps"]
