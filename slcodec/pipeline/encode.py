"""Encoding a whole input: the one path behind :func:`slcodec.encode`, ``slcodec encode`` and
``slcodec encode --distributed`` (:func:`slcodec.distributed.encode`).

:func:`encode_source` feeds a :class:`~slcodec.pipeline.writer.Writer` from a label array.  A
codec that learns parameters is fitted on ``fit_sample`` evenly spaced rows of the whole input
(:func:`~slcodec.pipeline.rows.fit_rows`), after the whole-input statistics it asks for
(:mod:`slcodec.pipeline.statistics`); then the rows are read and encoded in blocks.  Run by a
:class:`~slcodec.pipeline.team.Team` of processes, each member reads the fit rows in its own
range and the team gathers them in global order, so every member fits the same codec on the same
rows with the same seed - the codec a single process fits; each member then encodes its range
as one shard of the set.
"""
from __future__ import annotations

import builtins
import math
import os
import tempfile

import numpy as np

from .._checks import check_int
from ..errors import ConfigError
from .device import default_codec
from .inputs import LabelSource, as_source
from .rows import RowReader, fit_rows
from .statistics import compute_fit_statistics
from .team import Team
from .writer import Writer

#: encode reads and encodes its input in blocks of at most this many float32 bytes
ENCODE_BLOCK_BYTES = 32 << 20


def encode_block_rows(classes: int, batch_size: int) -> int:
    """Rows handed to the writer at a time: ``batch_size``, capped to a power of two that keeps
    one float32 block under ENCODE_BLOCK_BYTES."""
    cap = max(1, ENCODE_BLOCK_BYTES // (4 * classes))
    return max(1, min(batch_size, 1 << int(math.log2(cap))))


def source_provenance(src: LabelSource, team: Team | None = None, provenance: dict | None = None) -> dict:
    """The ``provenance`` section of an encode of ``src``: where the labels came from, the team
    size of a distributed encode, then the caller's own entries (the writer adds ``created_by``)."""
    prov = {"source": os.path.basename(src.path), "source_shape": list(src.shape),
            "source_dtype": str(src.array.dtype), "input_kind_reason": src.kind_reason}
    if team is not None:
        prov["distributed"] = {"world_size": team.size}
    prov.update(provenance or {})
    return prov


def encode(labels, path=None, *, codec: str | None = None, input_kind: str = "auto", device: str = "cpu",
           seed: int = 0, provenance: dict | None = None, augment: dict | None = None,
           batch_size: int = 65536, shard_rows: int | None = None, shards: int | None = None,
           progress=None, log=None, max_kl=None, max_bits: float | None = None, allow_top1_loss: bool = False,
           best_effort: bool = False, **codec_config):
    """Fit ``codec`` on ``labels`` and write a container.

    ``labels``: a :class:`~slcodec.pipeline.inputs.LabelSource`, a numpy array or a torch tensor of
    shape ``[N, C]`` or ``[images, augmentations, C]``.  With ``path`` the file is written
    atomically and the path returned; without it the container's bytes are returned.
    Codec options are keyword arguments (``k=5`` for ``topk``, ``bits=40`` for ``vq`` ...).

    This is :class:`slcodec.Writer` fed from an array: a codec that learns parameters is
    fitted on ``fit_sample`` evenly spaced rows of the input (all rows when there are
    fewer; ``fit_sample`` is the codec's option, or a keyword of the writer), then the rows
    are read and encoded in blocks of at most ``batch_size`` rows (and at most 32 MiB as
    float32).  A memory-mapped ``.npy`` or contiguous ``.h5`` input is read with plain
    file reads, block by block, so inputs larger than memory stream through.

    ``shard_rows`` (or ``shards``, a number of shards of equal size): write a sharded set
    (format 1.1): ``path`` is the manifest and the shards are ``NAME-TOKEN-00000.vqsl``, ... beside it
    (``TOKEN``: 8 hex digits, new for each write).

    ``max_kl`` (``"0.1@1"``, ``(0.1, 1.0)`` or a list of them) and/or ``max_bits``, without
    ``codec`` and codec options: the codec and its size are chosen for the set
    (:func:`slcodec.pipeline.choose.choose_codec`; ``allow_top1_loss``, ``best_effort`` as there).
    """
    src = labels if isinstance(labels, LabelSource) else as_source(labels, input_kind=input_kind)
    if max_kl is not None or max_bits is not None:
        if codec is not None or codec_config:
            raise ConfigError("max_kl / max_bits choose the codec: give them without codec and codec options")
        from .choose import choose_codec
        choice = choose_codec(src, max_kl, max_bits, allow_top1_loss=allow_top1_loss, best_effort=best_effort,
                              seed=seed, device=device, log=log)
        codec, codec_config = choice.codec, choice.config
    codec_id = codec or default_codec()
    if path is None:
        if shard_rows is not None or shards is not None:
            raise ConfigError("a sharded set needs a path")
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "labels.vqsl")
            encode(src, out, codec=codec_id, device=device, seed=seed, provenance=provenance, augment=augment,
                   batch_size=batch_size, progress=progress, log=log, **codec_config)
            with builtins.open(out, "rb") as f:
                return f.read()
    if shards is not None:
        if shard_rows is not None:
            raise ConfigError("give shard_rows or shards, not both")
        shard_rows = max(1, math.ceil(src.rows().shape[0] / check_int(shards, "shards")))
    return encode_source(src, path, codec=codec_id, device=device, seed=seed, provenance=provenance,
                         augment=augment, batch_size=batch_size, shard_rows=shard_rows, progress=progress, log=log,
                         **codec_config)


def encode_source(src: LabelSource, path, *, codec: str, device: str = "cpu", seed: int = 0,
                  provenance: dict | None = None, augment: dict | None = None, batch_size: int = 65536,
                  shard_rows: int | None = None, team: Team | None = None, progress=None, log=None,
                  **codec_config) -> str:
    """Encode ``src`` to ``path`` (see the module documentation).  ``team``: this process is
    one member of a team writing the set as one shard per member (None: this process alone)."""
    from ..codecs.base import get_codec_class
    try:
        batch_size = check_int(batch_size, "batch_size")
    except ConfigError:
        get_codec_class(codec)  # an unknown codec is reported first
        raise
    members = team if team is not None else Team()
    rows = src.rows()
    n = rows.shape[0]
    if n < members.size:
        raise ConfigError(f"{n} labels cannot be split over {members.size} ranks")
    lo, hi = members.row_range(n)
    step = encode_block_rows(src.classes, batch_size)
    with Writer(path, codec, classes=src.classes, shape=src.shape[:-1], source_kind=src.kind, device=device,
                seed=seed, augment=augment, provenance=source_provenance(src, team, provenance),
                source_dtype=str(src.array.dtype), shard_rows=shard_rows, team=team, progress=progress, log=log,
                **codec_config) as writer, RowReader(rows) as reader:
        if writer.needs_fit:
            wanted = writer.codec.fit_statistics(writer.shape, src.classes)
            stats = compute_fit_statistics(wanted, reader, writer.shape, src.kind, step, lo, hi,
                                           members.all_reduce_sum if members.size > 1 else None)
            for name, value in stats.items():
                writer.set_fit_statistic(name, value)
            idx = fit_rows(n, writer.fit_sample)
            mine = idx[(idx >= lo) & (idx < hi)]
            sample = np.concatenate(members.gather(reader.take(mine)))
            writer.fit(sample, rows=idx)
        for start in range(lo, hi, step):
            stop = min(hi, start + step)
            writer.append(reader.read(start, stop))
            if progress is not None:
                progress(stop - lo, hi - lo, "encode")
    return os.fspath(path)


__all__ = ["encode", "encode_source", "encode_block_rows", "source_provenance", "ENCODE_BLOCK_BYTES"]
