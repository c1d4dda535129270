"""Reading: :func:`open` a ``.vqsl`` file (or a sharded set's manifest) and decode its labels
with a :class:`Reader` (:class:`ShardedReader`).  Encoding is :mod:`slcodec.pipeline.encode`."""
from __future__ import annotations

import math
import os

import numpy as np

from ..format import limits, rules
from ..codecs.base import Context, get_codec_class
from ..codecs.rules import check_stored
from ..format.container import Container
from ..errors import ConfigError, FormatError, ResourceError
from .device import resolve_device

DECODED_KINDS = ("probs", "logits", "log_probs")
#: streams whose decoded size is at most this are held in memory for random access (see read_streams)
RESIDENT_STREAM_BYTES = 256 << 20


def open(path) -> "Reader":  # noqa: A001 - mirrors the built-in, as gzip.open does
    """Open a ``.vqsl`` file for decoding (memory-mapped; nothing is decoded until asked).

    A manifest of a sharded set (format 1.1) opens as a :class:`ShardedReader`, which has the
    same API with global label indices."""
    c = Container.open(path)
    try:
        if c.is_manifest:
            return ShardedReader(path, container=c)
        return Reader(path, container=c)
    except BaseException:
        c.close()
        raise


class Reader:
    """Random access to the labels of a ``.vqsl`` file.

    ``reader.decode(index)`` takes an int, a slice, an array of flat label indices, or for
    ``[images, augmentations, C]`` sets a tuple ``(image, augmentation)`` of ints, slices or
    arrays; ``None`` decodes everything in the input's original shape.
    """

    def __init__(self, path, container=None):
        self.path = os.fspath(path)
        self.container = c = container if container is not None else Container.open(self.path)
        try:
            self._setup()
        except BaseException:
            c.close()
            raise

    def _setup(self):
        c = self.container
        if c.is_shard:
            raise FormatError(f"{self.path}: is a shard of a sharded set (its codec parameters are in the "
                              "manifest): open the manifest", rule=rules.EXTERNAL_PARAMS)
        specs = self._setup_codec()
        self.streams = _check_streams(c, self.path, specs, self.count)
        self.decoded_kind = self.codec.decoded_kind(self.source_kind)
        self._resident = None

    def _setup_codec(self) -> dict:
        """Labels and codec from the header, parameters from the params/* sections; returns the
        codec's stream specs."""
        c = self.container
        h = c.header
        lab = h["labels"]
        self.shape = tuple(lab["shape"])
        self.classes = lab["classes"]
        self.source_kind = lab["source_kind"]
        self.temperatures = list(lab.get("temperatures", [1.0]))
        if self.shape[-1] != self.classes:
            raise FormatError(f"{self.path}: label shape {list(self.shape)} does not end in {self.classes} classes",
                              rule=rules.LABELS)
        if math.prod(self.shape[:-1]) != lab["count"]:
            raise FormatError(f"{self.path}: label shape {list(self.shape)} does not hold {lab['count']} labels",
                              rule=rules.LABELS)
        self.count = lab["count"]
        self.codec_id = h["codec"]["id"]
        try:
            codec_cls = get_codec_class(self.codec_id)
            if isinstance(h["codec"]["config"], dict):
                check_stored(self.codec_id, codec_cls.options, h["codec"]["config"])
            self.codec = codec_cls.from_config(h["codec"]["config"])
        except ConfigError as exc:
            raise FormatError(f"{self.path}: codec {self.codec_id!r}: {exc}", rule=rules.CODEC) from None
        except TypeError as exc:
            raise FormatError(f"{self.path}: codec {self.codec_id!r}: bad config ({exc})", rule=rules.CODEC) from None
        params = {name[len("params/"):]: c.read_array(name) for name in c.sections if name.startswith("params/")}
        ctx = self._ctx("cpu")
        try:
            self.codec.set_params(params, ctx)
            specs = self.codec.stream_specs(self.classes)
        except ConfigError as exc:
            raise FormatError(f"{self.path}: codec {self.codec_id!r}: {exc}", rule=rules.CODEC) from None
        except FormatError as exc:
            raise FormatError(f"{self.path}: {exc}", rule=exc.rule) from None
        return specs

    def _ctx(self, device):
        return Context(source_kind=self.source_kind, classes=self.classes, device=device,
                       label_shape=tuple(self.shape[:-1]))

    # -- basic facts ------------------------------------------------------
    def __len__(self):
        return self.count

    @property
    def header(self):
        return self.container.header

    def close(self):
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<slcodec.Reader {self.path!r} codec={self.codec_id} shape={list(self.shape)}>"

    # -- indexing ---------------------------------------------------------
    def flat_indices(self, index) -> tuple[np.ndarray, tuple]:
        """Flat label indices for ``index`` and the leading shape of the result."""
        if index is None:
            return np.arange(self.count, dtype=np.int64), self.shape[:-1]
        if isinstance(index, tuple):
            if len(self.shape) != 3 or len(index) != 2:
                raise IndexError(f"a tuple index needs a [images, augmentations, C] set and 2 entries; "
                                 f"this set is {list(self.shape)}")
            img, img_slice = self._axis(index[0], self.shape[0], "image")
            aug, aug_slice = self._axis(index[1], self.shape[1], "augmentation")
            if img_slice or aug_slice:  # slices combine as an outer product, like numpy's basic indexing
                img = img.reshape(img.shape + (1,) * aug.ndim)
            flat = img * self.shape[1] + aug
            return flat.reshape(-1), flat.shape
        arr, _ = self._axis(index, self.count, "label")
        return arr.reshape(-1), arr.shape

    @staticmethod
    def _axis(index, size, what):
        """Index along one axis -> (int64 array, whether it came from a slice)."""
        if isinstance(index, slice):  # range: no size-long array for a short slice of a huge set
            r = range(size)[index]
            return np.arange(r.start, r.stop, r.step, dtype=np.int64), True
        try:
            import torch
            if isinstance(index, torch.Tensor):
                index = index.cpu().numpy()
        except ImportError:
            pass
        arr = np.asarray(index)
        if arr.size == 0 and arr.dtype.kind == "f":  # an empty list: no labels, as x[[]] in numpy
            arr = arr.astype(np.int64)
        if arr.dtype == bool or arr.dtype.kind not in "iu":
            raise IndexError(f"{what} index must be integers or a slice, got {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < -size or arr.max() >= size):
            raise IndexError(f"{what} index out of range for {size} {what}s")
        return np.where(arr < 0, arr + size, arr), False

    # -- decoding ---------------------------------------------------------
    def read_streams(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """The raw stream rows of the given flat label indices (numpy, no torch needed).

        Random access to narrow streams (the index streams of learned codecs: a few bytes per
        label) decodes them whole once per process and then gathers rows from memory, so a
        shuffled training loop does not decompress a chunk per label.  Wide streams (raw
        values) are read chunk by chunk."""
        # a contiguous range (checked cheaply first: shuffled batches rarely span size - 1)
        if flat.size and int(flat[-1]) - int(flat[0]) == flat.size - 1 and np.all(np.diff(flat) == 1):
            lo, hi = int(flat[0]), int(flat[-1]) + 1
            if self._resident is not None:
                return {name: arr[lo:hi] for name, arr in self._resident.items()}
            return {name: s.read_rows(lo, hi) for name, s in self.streams.items()}
        if self._resident is None and flat.size > 1 and self._resident_bytes() <= RESIDENT_STREAM_BYTES:
            self._resident = {name: s.read_rows(0, s.rows) for name, s in self.streams.items()}
        if self._resident is not None:
            return {name: arr[flat] for name, arr in self._resident.items()}
        return {name: s.take(flat) for name, s in self.streams.items()}

    def _resident_bytes(self) -> int:
        return sum(s.rows * s.width * s.dtype.itemsize for s in self.streams.values())

    def verify_streams(self, batch_size: int = 1 << 16) -> None:
        """Check every stream value against the codec's ranges (raises FormatError)."""
        for start in range(0, self.count, batch_size):
            raw = self.read_streams(np.arange(start, min(self.count, start + batch_size)))
            try:
                self.codec.validate_streams(raw, self.classes)
            except FormatError as exc:
                raise FormatError(f"{self.path}: {exc}", rule=exc.rule) from None

    def decode(self, index=None, *, device="cpu", as_: str = "probs", temperature: float | None = None,
               batch_size: int = 65536):
        """Decode labels to a float32 torch tensor on ``device``.

        ``as_``: ``"probs"`` (softmax at ``temperature``), ``"log_probs"`` (log-softmax at
        ``temperature``) or ``"logits"`` (unscaled; ``temperature`` must be left unset).
        """
        import torch

        if as_ not in DECODED_KINDS:
            raise ConfigError(f"as_ must be one of {', '.join(DECODED_KINDS)}, got {as_!r}")
        if as_ == "logits" and temperature not in (None, 1, 1.0):
            raise ConfigError("a temperature applies to probs or log_probs, not to raw logits")
        t = 1.0 if temperature is None else float(temperature)
        if not (t > 0 and math.isfinite(t)):
            raise ConfigError(f"temperature must be a positive number, got {temperature!r}")
        device = resolve_device(device)
        flat, lead = self.flat_indices(index)
        ctx = self._ctx(device)
        # one codec call decodes at most MAX_DECODE_BYTES of float32 (the codecs refuse more)
        batch_size = max(1, min(batch_size, limits.MAX_DECODE_BYTES // (4 * self.classes)))
        out = None
        if flat.size > batch_size:
            out = _result_tensor(flat.size, self.classes, device, self.path)
        if flat.size == 0:
            out = torch.empty((0, self.classes), dtype=torch.float32, device=device)
        for start in range(0, flat.size, batch_size):
            rows = flat[start:start + batch_size]
            raw = self.read_streams(rows)
            ctx.rows = rows
            try:
                self.codec.validate_streams(raw, self.classes)
                ctx.streams_checked = True
                values = self.codec.decode({name: _to_torch(arr, device) for name, arr in raw.items()}, ctx)
            except FormatError as exc:
                raise FormatError(f"{self.path}: {exc}", rule=exc.rule) from None
            owned = self.codec.decode_owns_output
            if out is None:   # one batch: converted in place only where the codec's result is its own
                conv = _convert(values, self.decoded_kind, as_, t, owned=owned)
                out = conv if conv is not values or owned else conv.clone()
            else:
                _convert(values, self.decoded_kind, as_, t, out=out[start:start + rows.size], owned=owned)
        if isinstance(index, (int, np.integer)):
            return out[0]
        return out.reshape(*lead, self.classes)


def _check_streams(c: Container, path: str, specs: dict, count: int) -> dict:
    """The ``streams/*`` sections of ``c``, checked against the codec's specs (codec-streams)."""
    present = {name[len("streams/"):] for name in c.sections if name.startswith("streams/")}
    if present != set(specs):
        raise FormatError(f"{path}: codec needs streams {sorted(specs)}, file has {sorted(present)}",
                          rule=rules.CODEC_STREAMS)
    streams = {}
    for name, (dtype, width) in specs.items():
        s = c.stream("streams/" + name)
        if s.dtype.name != dtype or s.width != width or s.rows != count:
            raise FormatError(f"{path}: stream {name!r} is {s.rows}x{s.width} {s.dtype.name}, "
                              f"expected {count}x{width} {dtype}", rule=rules.CODEC_STREAMS)
        streams[name] = s
    return streams


class ShardedReader(Reader):
    """A sharded set (format 1.1) read through its manifest, with global label indices.

    Shards are opened when first needed and checked against the manifest then: file size,
    header CRC and header fields (count, codec, ``params_sha256``, position).  The full sha256
    of a shard is checked by :meth:`verify_shards` (``slcodec verify``), not at open: hashing
    every byte of a large shard would make opening as slow as reading it all, and the bytes a
    decode reads are checked by their own CRCs anyway."""

    def _setup(self):
        from ..format.shards import read_shard_table
        self._specs = self._setup_codec()
        self.entries = read_shard_table(self.container)
        self._starts = np.array([e["start"] for e in self.entries], dtype=np.int64)
        self._shards: dict[int, tuple] = {}
        self.decoded_kind = self.codec.decoded_kind(self.source_kind)
        per_label = sum(np.dtype(d).itemsize * w for d, w in self._specs.values())
        self._allow_resident = per_label * self.count <= RESIDENT_STREAM_BYTES
        self._resident = None

    @property
    def streams(self):
        raise AttributeError("a sharded set has no single stream set; use read_streams()")

    def __repr__(self):
        return (f"<slcodec.ShardedReader {self.path!r} codec={self.codec_id} shape={list(self.shape)} "
                f"shards={len(self.entries)}>")

    def _shard(self, k: int):
        got = self._shards.get(k)
        if got is None:
            from ..format.shards import open_shard
            c = open_shard(self.container, self.entries, k)
            try:
                streams = _check_streams(c, c.path, self._specs, self.entries[k]["count"])
            except BaseException:
                c.close()
                raise
            got = self._shards[k] = (c, streams, {})
        return got

    def _shard_rows(self, k: int, local: np.ndarray) -> dict:
        c, streams, state = self._shard(k)
        if local.size and np.all(np.diff(local) == 1):
            lo, hi = int(local[0]), int(local[-1]) + 1
            if "resident" in state:
                return {name: arr[lo:hi] for name, arr in state["resident"].items()}
            return {name: s.read_rows(lo, hi) for name, s in streams.items()}
        if "resident" not in state and self._allow_resident and local.size > 1:
            state["resident"] = {name: s.read_rows(0, s.rows) for name, s in streams.items()}
        if "resident" in state:
            return {name: arr[local] for name, arr in state["resident"].items()}
        return {name: s.take(local) for name, s in streams.items()}

    def read_streams(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        flat = np.asarray(flat, dtype=np.int64)
        shard_of = np.searchsorted(self._starts, flat, side="right") - 1
        if flat.size == 0 or shard_of.min() == shard_of.max():
            k = int(shard_of[0]) if flat.size else 0
            return self._shard_rows(k, flat - self._starts[k])
        out = {name: np.empty((flat.size, width), dtype=np.dtype(dtype).newbyteorder("<"))
               for name, (dtype, width) in self._specs.items()}
        for k in np.unique(shard_of):
            sel = shard_of == k
            part = self._shard_rows(int(k), flat[sel] - self._starts[k])
            for name, arr in part.items():
                out[name][sel] = arr
        return out

    def verify_shards(self) -> list[str]:
        """The full check of every shard (sha256 and every byte); the problems found."""
        from ..format.shards import verify_set
        return verify_set(self.path)

    def close(self):
        for c, _, _ in self._shards.values():
            c.close()
        self._shards = {}
        self.container.close()


def _result_tensor(rows: int, classes: int, device, path):
    """The float32 ``[rows, classes]`` result of a decode call; a request the machine cannot hold
    (say, every label of a set of billions) is a ResourceError, not an allocator's exception."""
    import torch
    try:
        return torch.empty((rows, classes), dtype=torch.float32, device=device)
    except (MemoryError, RuntimeError) as exc:  # torch reports a failed allocation as RuntimeError
        raise ResourceError(f"{path}: cannot allocate the {rows:,} x {classes:,} float32 result "
                            f"({rows * classes * 4:,} bytes): decode fewer labels at a time "
                            f"({type(exc).__name__})") from None


def _to_torch(arr: np.ndarray, device: str):
    import torch
    if arr.dtype in (np.uint16, np.uint32, np.uint64):
        arr = arr.astype(np.int64)  # torch's unsigned types beyond uint8 support few ops
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device, non_blocking=True)


def _convert(values, kind: str, as_: str, t: float, out=None, owned: bool = False):
    """Decoded ``values`` (of ``kind``) as ``as_`` at temperature ``t``, float32, written into
    ``out`` when given.  ``owned``: nothing else refers to ``values``, so it may be overwritten
    (a softmax in place skips allocating - and page-faulting - a second [n, C] block)."""
    import torch
    if values.dtype != torch.float32:
        values, owned = values.float(), True
    if kind == "probs":
        if as_ == "probs" and t == 1.0:
            return values if out is None else out.copy_(values)
        values, owned = torch.log(values.clamp_min(torch.finfo(torch.float32).tiny)), True
    big = torch.finfo(torch.float32).max
    if t != 1.0:
        values, owned = (values.div_(t) if owned else values / t), True
        values.clamp_(-big, big)   # a temperature below 1 may carry a finite logit past float32
    if as_ == "logits":
        return values if out is None else out.copy_(values)
    fn = torch.log_softmax if as_ == "log_probs" else torch.softmax
    if out is None and owned:
        out = values
    result = fn(values, dim=1) if out is None else fn(values, dim=1, out=out)
    # a row whose logits span more than the float32 range (an fp32 file may hold -3.4e38 and
    # 3.4e38) has log-probabilities below it: the lowest float, never -inf
    return result.clamp_min_(-big) if as_ == "log_probs" else result


__all__ = ["open", "Reader", "ShardedReader"]
