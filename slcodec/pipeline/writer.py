"""Streaming writes: :class:`Writer` fits a codec on a sample, then encodes batches as they come.

::

    with slcodec.Writer("labels.vqsl", codec="vq", classes=1000, shape=[images, views]) as w:
        for batch in teacher_batches():          # [n, C] logits, numpy or torch, any device
            w.append(batch)
    # closed: the file is in place, verified; on an exception nothing was written

Fitting.  A codec that learns parameters (``vq``) is fitted on the *first* ``fit_sample``
rows appended (or on an explicit sample given to :meth:`Writer.fit` before the first
``append``).  Rows that arrive before the sample is complete are held - at most
``fit_sample`` rows plus the last batch, in the batch's own dtype - and encoded right after
the fit.  Codecs without parameters (``fp32``, ``fp16``, ``topk``) hold nothing: every
batch is encoded when appended.  ``fit_sample`` defaults to the codec's own ``fit_sample``
option when it has one (vq: 100,000), else 100,000; it is capped so the float32 sample
stays under 2 GiB.  :func:`slcodec.encode`, which has the whole input at hand, instead
fits on ``fit_sample`` evenly spaced rows of the input (:func:`slcodec.pipeline.rows.fit_rows`).

Memory.  Each stream's compressed chunks go to an anonymous temporary file in the output's
folder (:class:`~slcodec.format.container.SpooledStreamBuilder`); only the chunk index stays in
memory.  So memory is bounded by the batch being encoded, the fit sample and one chunk per
stream, whatever the number of labels.  Disk: the spool files, then the container, which
:meth:`Writer.close` hands to its output (:mod:`slcodec.pipeline.output`: one file, a sharded
set, or one shard of a set a team of processes writes), written as
:class:`~slcodec.format.container.ContainerWriter` does (temporary file, fsync, verification,
atomic rename) - about twice the output size at the peak.

Failure.  :meth:`Writer.abort` (called by the context manager on an exception, and by
``append``/``close`` when they fail after validation) removes every temporary file; an
existing file at ``path`` is untouched until ``close`` succeeds.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from .._checks import check_int
from .._version import __version__
from ..codecs.base import SOURCE_KINDS, Codec, Context, get_codec_class
from ..errors import ConfigError
from ..format import entropy
from ..format.container import DEFAULT_CHUNK_ROWS, SpooledStreamBuilder
from .device import default_codec, resolve_device
from .output import Encoded, ExtraSections, FileOutput, ShardedOutput, TeamOutput
from .rows import label_block

#: default number of rows a fitting codec is fitted on (when the codec has no fit_sample option)
DEFAULT_FIT_SAMPLE = 100_000
#: the float32 fit sample is kept under this many bytes
FIT_ROWS_MAX_BYTES = 1 << 31
#: codecs whose label streams are coded "auto": each stream is stored with zstd or with the rans
#: entropy coder (format 1.6), whichever is smaller (vq's code indices: BENCHMARKS.md section 14)
ENTROPY_CODED = ("vq",)


def stream_chunk_rows(dtype: str, width: int) -> int:
    """Rows a chunk: 4096 for narrow streams (random access, zstd context), about 1 MiB a
    chunk for wide value streams (never fewer than 16 rows)."""
    row_bytes = np.dtype(dtype).itemsize * width
    if row_bytes * DEFAULT_CHUNK_ROWS <= (1 << 20):
        return DEFAULT_CHUNK_ROWS
    return max(16, 1 << int(math.log2(max(1, (1 << 20) // row_bytes))))


class Writer:
    """Write a ``.vqsl`` file batch by batch (see the module documentation).

    ``classes``: C.  ``shape``: the leading shape of the label set, ``[N]`` or ``[images,
    augmentations]``; checked at :meth:`close`; ``None`` stores a flat ``[N, C]`` set.
    ``source_kind``: ``"logits"`` or ``"probs"``.  ``augment`` and ``provenance``: the maps
    stored in the ``augment`` and ``provenance`` sections (``provenance`` gets a
    ``created_by`` entry).  Codec options are keyword arguments, as for :func:`slcodec.encode`.
    ``chunk_rows``: a function ``(dtype, width) -> rows per chunk`` (default
    :func:`stream_chunk_rows`).  ``shard_rows``: write a sharded set (format 1.1) of that many
    labels a shard.  ``team``: this writer is member ``team.rank`` of a
    :class:`~slcodec.pipeline.team.Team` that writes the set of ``shape`` together: it is given
    the labels ``team.row_range(N)`` (global indices) and writes them as shard ``team.rank``.
    """

    def __init__(self, path, codec: str | None = None, *, classes: int, shape=None, source_kind: str = "logits",
                 device: str = "cpu", seed: int = 0, fit_sample: int | None = None, augment: dict | None = None,
                 provenance: dict | None = None, source_dtype: str | None = None, chunk_rows=None,
                 shard_rows: int | None = None, team=None, progress=None, log=None, **codec_config):
        self.path = os.fspath(path)
        self._state = "new"
        self._builders: dict = {}
        self._held: list = []
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{self.path}: folder {folder} does not exist")
        if os.path.isdir(self.path):
            raise IsADirectoryError(f"{self.path}: is a folder")
        self.folder = folder
        from ..format.shards import remove_stale_set_temps
        remove_stale_set_temps(self.path)  # what writers of this output that were killed left behind
        self.classes = check_int(classes, "classes", lo=2)
        if source_kind not in SOURCE_KINDS:
            raise ConfigError(f"source_kind must be one of {', '.join(SOURCE_KINDS)}, got {source_kind!r}")
        self.source_kind = source_kind
        if shape is not None:
            shape = [int(s) for s in shape]
            if len(shape) not in (1, 2) or min(shape) < 1:
                raise ConfigError(f"shape must be [N] or [images, augmentations] of positive sizes, got {shape}")
        self.shape = shape
        self.codec_id = codec or default_codec()
        cls = get_codec_class(self.codec_id)
        own = {o.name for o in cls.options}
        if fit_sample is not None:
            fit_sample = check_int(fit_sample, "fit_sample")
            if "fit_sample" in own:
                codec_config["fit_sample"] = fit_sample
        self.codec = cls(**codec_config)
        if fit_sample is None:
            fit_sample = self.codec.config["fit_sample"] if "fit_sample" in own else DEFAULT_FIT_SAMPLE
        self.fit_sample = int(min(fit_sample, max(1, FIT_ROWS_MAX_BYTES // (4 * self.classes))))
        #: whether the codec learns parameters (and so needs a fit sample)
        self.needs_fit = type(self.codec).fit is not Codec.fit
        self.device = resolve_device(device)
        self.ctx = Context(source_kind=source_kind, classes=self.classes, device=self.device, seed=seed,
                           progress=progress, log=log, label_shape=None if shape is None else tuple(shape))
        self.augment = augment
        self.provenance = provenance
        self.source_dtype = source_dtype
        self._chunk_rows = chunk_rows or stream_chunk_rows
        self._extra = ExtraSections(self.folder, self._chunk_rows)
        #: labels per shard of a sharded set (format 1.1), or None for one file
        self.shard_rows = None if shard_rows is None else check_int(shard_rows, "shard_rows")
        #: global index of this writer's first label, and the number of labels it is to be given
        #: (None: as many as appended, or the declared shape's)
        self.first_row, self.expected = 0, (None if shape is None else math.prod(shape))
        if team is not None:
            if shape is None or self.shard_rows is not None:
                raise ConfigError("a team member's writer needs the set's shape and writes one shard (no shard_rows)")
            start, stop = team.row_range(math.prod(shape))
            self.first_row, self.expected = start, stop - start
            self._output = TeamOutput(self.path, team)
        elif self.shard_rows is not None:
            self._output = ShardedOutput(self.path, self.shard_rows)
        else:
            self._output = FileOutput(self.path)
        self._shard_start = 0
        self._held_rows = 0
        self.count = 0
        self._specs = None
        self._t_fit = 0.0
        self._t_encode = 0.0
        self._state = "open"

    # -- context management ------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.close()

    def __repr__(self):
        return f"<slcodec.Writer {self.path!r} codec={self.codec_id} labels={self.count} {self._state}>"

    @property
    def fitted(self) -> bool:
        return self._specs is not None

    def _check_open(self):
        if self._state != "open":
            raise ValueError(f"writer for {self.path} is {self._state}")

    # -- labels --------------------------------------------------------------
    def _as_block(self, labels):
        return label_block(labels, self.classes, self.first_row + self.count + self._held_rows)

    def append(self, labels) -> None:
        """Add labels ``[n, C]`` (or ``[..., C]``): numpy or torch, logits or probabilities as
        declared by ``source_kind``.  They are encoded now, or held until the fit sample is
        complete.  The caller may reuse its buffer afterwards."""
        self._check_open()
        block = self._as_block(labels)
        n = block.shape[0]
        if n == 0:
            return
        if self.expected is not None and self.count + self._held_rows + n > self.expected:
            raise ConfigError(f"more labels appended than the declared shape {self.shape} holds"
                              if self.first_row == 0 and self.expected == math.prod(self.shape) else
                              f"more labels appended than the {self.expected} of this writer's part of the set")
        if self.source_dtype is None:
            self.source_dtype = str(block.dtype).replace("torch.", "")
        try:
            if self.fitted:
                self._encode(block)
            elif not self.needs_fit:
                self._fit(block[:0])  # a codec without parameters: fit() does nothing
                self._encode(block)
            else:
                self._held.append(block.to("cpu", copy=True))
                self._held_rows += n
                if self._held_rows >= self.fit_sample:
                    self._fit_held()
        except BaseException:
            self.abort()
            raise

    def set_fit_statistic(self, name: str, value) -> None:
        """Give the codec a statistic of the whole input that it asked for
        (``writer.codec.fit_statistics(shape, classes)``; :mod:`slcodec.pipeline.statistics`
        computes them), before fitting.  :func:`slcodec.encode` does this itself."""
        self._check_open()
        if self.fitted:
            raise ValueError(f"set_fit_statistic({name!r}) must come before the fit")
        self.codec.set_fit_statistic(name, value)

    def set_image_means(self, means) -> None:
        """Give the codec each image's mean log-probabilities ``[images, C]`` over all its labels,
        before fitting (``vq`` with ``image_bias``, ``imgprior``;
        :func:`slcodec.pipeline.statistics.image_mean_log_probs` computes them)."""
        self.set_fit_statistic("image_mean_log_probs", means)

    def fit(self, sample, rows=None) -> None:
        """Fit the codec on ``sample`` ``[n, C]`` now, instead of on the first appended rows.
        Rows appended before are held no longer: they are encoded right after.  ``rows``: the
        sample's label indices in the set (needed by codecs that condition on the image)."""
        self._check_open()
        if self.fitted:
            raise ValueError("the codec is already fitted")
        block = self._as_block(sample)
        if block.shape[0] == 0:
            raise ConfigError("cannot fit on an empty sample")
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            if rows.size != block.shape[0]:
                raise ConfigError(f"fit: {rows.size} row indices for {block.shape[0]} labels")
            limit = math.prod(self.shape) if self.shape is not None else None
            if rows.size and (int(rows.min()) < 0 or (limit is not None and int(rows.max()) >= limit)):
                raise ConfigError(f"fit: row indices must lie in [0, {limit if limit is not None else 'N'}), "
                                  f"got {int(rows.min())}..{int(rows.max())}")
        try:
            self._fit(block, rows)
            self._flush_held()
        except BaseException:
            self.abort()
            raise

    def use_fitted(self, codec) -> None:
        """Encode with ``codec``, a codec of this writer's id already fitted (by another writer,
        or ``codec.with_options(...)`` of one), instead of fitting: the no-flag choice scores
        several encode-only variants of one fit this way.  Rows appended before are encoded now."""
        self._check_open()
        if self.fitted:
            raise ValueError("the codec is already fitted")
        if getattr(codec, "codec_id", None) != self.codec_id:
            raise ConfigError(f"use_fitted: a {getattr(codec, 'codec_id', type(codec).__name__)!r} codec for a "
                              f"{self.codec_id!r} writer")
        try:
            self.codec = codec
            self._specs = codec.stream_specs(self.classes)
            self._new_builders()
            self._flush_held()
        except BaseException:
            self.abort()
            raise

    def _fit_held(self):
        import torch
        held = torch.cat(self._held) if len(self._held) > 1 else self._held[0]
        self._held = [held]
        n = min(self.fit_sample, held.shape[0])
        self._fit(held[:n], self.first_row + np.arange(n, dtype=np.int64))   # held rows come first
        self._flush_held()

    def _flush_held(self):
        held, self._held = self._held, []
        for block in held:
            self._encode(block)
            self._held_rows -= block.shape[0]

    def _fit(self, sample, rows=None):
        import torch
        t0 = time.perf_counter()
        self.ctx.rows = rows
        try:
            self.codec.fit(sample.to(self.device, torch.float32), self.ctx)
        finally:
            self.ctx.rows = None
        self._t_fit += time.perf_counter() - t0
        self._specs = self.codec.stream_specs(self.classes)
        self._new_builders()

    def _new_builders(self):
        self._builders = {name: self._builder(dtype, width) for name, (dtype, width) in self._specs.items()}

    def _builder(self, dtype, width) -> SpooledStreamBuilder:
        """A label stream's builder.  For a codec of ENTROPY_CODED, coding "auto" with the views of
        one image as rans's context group, and chunks of whole images where they fit in one."""
        chunk_rows = self._chunk_rows(dtype, width)
        if self.codec_id not in ENTROPY_CODED:
            return SpooledStreamBuilder(dtype, width, chunk_rows=chunk_rows, folder=self.folder)
        views = self.shape[1] if self.shape is not None and len(self.shape) == 2 else 0
        group_rows = views if 2 <= views <= entropy.MAX_CHUNK_ROWS else 0
        if group_rows:
            chunk_rows = max(1, chunk_rows // group_rows) * group_rows
            if chunk_rows > entropy.MAX_CHUNK_ROWS:
                chunk_rows = group_rows
        phase = (self.first_row + self._shard_start) % group_rows if group_rows else 0
        return SpooledStreamBuilder(dtype, width, chunk_rows=min(chunk_rows, entropy.MAX_CHUNK_ROWS), coding="auto",
                                    folder=self.folder, group_rows=group_rows, group_phase=phase)

    def _encode(self, block):
        """Encode ``block``, sealing the streams whenever the output says they are full (a shard)."""
        while block.shape[0]:
            room = self._output.room(self.count - self._shard_start)
            part = block[:room] if room < block.shape[0] else block
            self._encode_part(part)
            block = block[part.shape[0]:]
            if self._output.room(self.count - self._shard_start) == 0:
                self._output.seal(self._encoded(), self.first_row + self._shard_start,
                                  self.count - self._shard_start)
                for b in self._builders.values():
                    b.close()
                self._shard_start = self.count
                self._new_builders()

    def _encode_part(self, block):
        import torch
        t0 = time.perf_counter()
        first = self.first_row + self.count
        self.ctx.rows = np.arange(first, first + block.shape[0], dtype=np.int64)
        try:
            streams = self.codec.encode(block.to(self.device, torch.float32), self.ctx)
        finally:
            self.ctx.rows = None
        if set(streams) != set(self._specs):
            raise RuntimeError(f"codec {self.codec_id} returned streams {sorted(streams)}, "
                               f"declared {sorted(self._specs)}")
        for name, arr in streams.items():
            if len(arr) != block.shape[0]:
                raise RuntimeError(f"codec {self.codec_id} returned {len(arr)} rows of stream {name!r} "
                                   f"for {block.shape[0]} labels")
            self._builders[name].append(arr)
        self.count += block.shape[0]
        self._t_encode += time.perf_counter() - t0

    # -- extra sections ----------------------------------------------------
    def add_stream(self, name: str, dtype, width: int, chunk_rows: int | None = None) -> SpooledStreamBuilder:
        """Declare an extra stream section (e.g. ``augment/coords``) and return its builder;
        ``builder.append(rows)`` adds rows (spooled like the label streams).  Its rows need not
        be one per label.  Names ``params/...``, ``streams/...``, ``augment`` and ``provenance``
        are reserved."""
        self._check_open()
        return self._extra.add_stream(name, dtype, width, chunk_rows)

    def add_msgpack(self, name: str, obj) -> None:
        """An extra msgpack section, written at :meth:`close`."""
        self._check_open()
        self._extra.add_msgpack(name, obj)

    # -- finishing ---------------------------------------------------------------
    def close(self) -> str:
        """Fit (if the sample never filled), encode what is held, and write the output atomically."""
        if self._state == "closed":
            return self.path
        self._check_open()
        try:
            if not self.fitted:
                if not self._held_rows:
                    raise ConfigError(f"{self.path}: no labels were appended")
                self._fit_held()
            if self.expected is not None and self.count != self.expected:
                raise ConfigError(f"{self.path}: {self.count} labels appended, shape {self.shape} "
                                  f"needs {self.expected}")
            self._output.finish(self._encoded(), self.first_row + self._shard_start,
                                 self.count - self._shard_start)
        except BaseException:
            self.abort()
            raise
        self._release()
        self._state = "closed"
        return self.path

    def _encoded(self) -> Encoded:
        """The header, parameters, sections and the streams since the last seal, for the output."""
        params = self.codec.get_params()
        problem = None
        for name, arr in params.items():   # a fit gone wrong must not write a file no reader opens
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                problem = (f"{self.path}: codec {self.codec_id!r} produced non-finite parameter {name!r} "
                           "(labels with extreme values?); nothing was written")
                break
        prov = {"created_by": f"slcodec {__version__}"}
        prov.update(self.provenance or {})
        return Encoded(header=self._header(), params=params,
                       sections=[("augment", "msgpack", self.augment or {"mode": "none"}),
                                 ("provenance", "msgpack", prov)],
                       extra=self._extra.sections(),
                       streams=self._builders, format_minor=self.codec.format_minor(), params_problem=problem)

    def _header(self) -> dict:
        """The header of the set (without sections)."""
        codec = self.codec
        lead = self.shape if self.shape is not None else [self.count]
        info = dict(codec.fit_info)
        info.update({"fit_seconds": round(self._t_fit, 3), "encode_seconds": round(self._t_encode, 3),
                     "device": self.device})
        temps = codec.config.get("temperature", [1.0])
        return {
            "labels": {"count": math.prod(lead), "shape": [*lead, self.classes], "classes": self.classes,
                       "source_kind": self.source_kind, "source_dtype": str(self.source_dtype),
                       "temperatures": [float(t) for t in (temps if isinstance(temps, (list, tuple)) else [temps])]},
            "codec": {"id": self.codec_id, "config": codec.get_config(), "info": info},
            "created_by": f"slcodec {__version__}",
        }

    def abort(self) -> None:
        """Drop everything written so far; an existing file at ``path`` is left as it was."""
        if self._state in ("closed", "aborted"):
            return
        self._release()
        self._state = "aborted"

    def _release(self):
        self._output.abort()  # removes what the output wrote and did not publish
        for b in self._builders.values():
            b.close()
        self._extra.close()
        self._held = []
        self._held_rows = 0


__all__ = ["Writer", "stream_chunk_rows", "DEFAULT_FIT_SAMPLE"]
