"""Distributed encoding with ``torch.distributed`` (launched with ``torchrun``): one shard per rank.

::

    torchrun --nproc-per-node 8 -m slcodec encode labels.npy -o labels.vqsl --distributed --codec vq
    # or, in a script run by torchrun:
    slcodec.distributed.encode("labels.npy", "labels.vqsl", codec="vq")

Every rank opens the same input (a path every rank can read, or an array each rank holds).
Rank ``r`` of ``W`` owns the contiguous rows ``[n*r//W, n*(r+1)//W)``.

Fitting.  The fit sample is the one :func:`slcodec.encode` uses: ``fit_sample`` evenly spaced
rows of the whole input.  Each rank reads the sample rows in its own range and ``all_gather``
assembles them in global order, so every rank fits the same codec on the same rows with the
same seed - the codec :func:`slcodec.encode` would fit.  Ranks do not split the fit (reducing
gradients across ranks would change the floating-point result and so the codec); they agree
on it, and the hash of the fitted parameters is compared across ranks (all_gather) before
anything is written: a rank whose fit differs (another torch build, another device kind)
stops the encode with an error.

Writing.  Each rank encodes its range into shard ``r`` (a temporary file), the shard entries
are gathered on rank 0, which writes the manifest (a temporary file); after a barrier every
rank renames its shard into place, and after another rank 0 renames the manifest. The output
folder must be shared by all ranks.  Backend: NCCL when the device is CUDA, else gloo.
"""
from __future__ import annotations

import os

import numpy as np

from ._version import __version__
from .errors import ConfigError


def _dist():
    import torch.distributed as dist
    return dist


def is_rank_zero() -> bool:
    dist = _dist()
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def rank_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous rows of rank ``rank`` of ``world``."""
    return n * rank // world, n * (rank + 1) // world


def fit_rows(n: int, k: int) -> np.ndarray:
    """The rows :func:`slcodec.encode` fits on (``RowReader.evenly_spaced``)."""
    if n <= k:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def encode(labels, path, *, codec: str | None = None, input_kind: str = "auto", device: str = "cpu", seed: int = 0,
           provenance: dict | None = None, augment: dict | None = None, batch_size: int = 65536,
           fit_sample: int | None = None, backend: str | None = None, **codec_config) -> str:
    """Encode ``labels`` as a sharded set written by all ranks: shard ``r`` by rank ``r``,
    the manifest ``path`` by rank 0.  Joins the default process group, or starts it from
    torchrun's environment (and leaves it running); without one (no ``WORLD_SIZE``) it runs
    as a single rank.  A rank that fails leaves the others waiting in a collective (as any
    torch.distributed program): torchrun's own failure handling ends them."""
    import torch

    from .pipeline.reader import default_codec, resolve_device
    from .pipeline.inputs import LabelSource, as_source
    from .format.shards import ShardSetWriter, new_write_token
    from .pipeline.writer import RowReader, Writer, encode_block_rows, image_log_prob_sums

    dist = _dist()
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Started from torchrun's environment and left running: a later call joins it (creating a
        # second group on the same MASTER_PORT in one process would wait forever).
        dev = resolve_device(device)
        dist.init_process_group(backend or ("nccl" if dev.startswith("cuda") else "gloo"))
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = resolve_device(device)
    if device.startswith("cuda") and device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % max(1, torch.cuda.device_count())}"

    def gather(obj):
        if world == 1:
            return [obj]
        out = [None] * world
        dist.all_gather_object(out, obj)
        return out

    src = labels if isinstance(labels, LabelSource) else as_source(labels, input_kind=input_kind)
    codec_id = codec or default_codec()
    prov = {"created_by": f"slcodec {__version__}", "source": os.path.basename(src.path),
            "source_shape": list(src.shape), "source_dtype": str(src.array.dtype),
            "input_kind_reason": src.kind_reason, "distributed": {"world_size": world}}
    prov.update(provenance or {})
    rows = src.rows()
    n = rows.shape[0]
    if n < world:
        raise ConfigError(f"{n} labels cannot be split over {world} ranks")
    lo, hi = rank_range(n, rank, world)
    # A Writer for this rank's range: it fits the codec and spools the streams; the shard and
    # the manifest are then written here rather than by Writer.close.
    tmp = os.path.join(os.path.dirname(os.path.abspath(os.fspath(path))), f".rank{rank}.unused.vqsl")
    lead = [int(v) for v in src.shape[:-1]]
    writer = Writer(tmp, codec_id, classes=src.classes, shape=lead, source_kind=src.kind, device=device, seed=seed,
                    fit_sample=fit_sample, source_dtype=str(src.array.dtype), **codec_config)
    writer._row_offset = lo
    sset = None
    try:
        with RowReader(rows) as reader:
            if writer.needs_fit:
                if len(lead) == 2 and writer.codec.wants_image_means(lead, src.classes):
                    # every image's mean over all ranks' rows, as slcodec.encode computes it
                    sums = image_log_prob_sums(reader, lead, src.kind, encode_block_rows(src.classes, batch_size),
                                               lo, hi)
                    if world > 1:
                        dist.all_reduce(sums)
                    writer.set_image_means((sums / lead[1]).float().numpy())
                idx = fit_rows(n, writer.fit_sample)
                mine = idx[(idx >= lo) & (idx < hi)]
                parts = gather(reader.take(mine) if mine.size else np.zeros((0, src.classes), rows.dtype))
                writer.fit(np.concatenate(parts), rows=idx)
            step = encode_block_rows(src.classes, batch_size)
            for start in range(lo, hi, step):
                writer.append(reader.read(start, min(hi, start + step)))
        header = writer._header()
        header["labels"].update(count=n, shape=list(src.shape))
        params = writer.codec.get_params()
        sset = ShardSetWriter(path, header, params, minor=writer.codec.format_minor(),
                              token=gather(new_write_token())[0])  # rank 0's, for every rank
        hashes = gather(sset.params_hash)
        if len(set(hashes)) != 1:
            raise RuntimeError(f"ranks fitted different codecs (params sha256 {hashes}); "
                               "every rank must run the same torch build on the same kind of device")
        entry = sset.write_shard(rank, lo, hi - lo, writer._builders)
        entries = gather(entry)
        if rank == 0:
            sset.write_manifest(entries, [("augment", "msgpack", augment or {"mode": "none"}),
                                          ("provenance", "msgpack", prov)])
        if world > 1:
            dist.barrier()
        sset.publish_shards()
        if world > 1:
            dist.barrier()
        if rank == 0:
            sset.publish_manifest()
        if world > 1:
            dist.barrier()
    except BaseException:
        if sset is not None:
            sset.abort()
        raise
    finally:
        writer.abort()  # releases the spooled streams (the writer's own file is never written)
    return os.fspath(path)


__all__ = ["encode", "rank_range", "fit_rows", "is_rank_zero"]
