"""Distributed encoding with ``torch.distributed`` (launched with ``torchrun``): one shard per rank.

::

    torchrun --nproc-per-node 8 -m slcodec encode labels.npy -o labels.vqsl --distributed --codec vq
    # or, in a script run by torchrun:
    slcodec.distributed.encode("labels.npy", "labels.vqsl", codec="vq")

Every rank opens the same input (a path every rank can read, or an array each rank holds).
Rank ``r`` of ``W`` owns the contiguous rows ``[n*r//W, n*(r+1)//W)`` (:meth:`Team.row_range`).

The encode is :func:`slcodec.pipeline.encode.encode_source`, the path a single-process encode
takes, run by a :class:`TorchTeam`: the fit sample is the one :func:`slcodec.encode` uses
(``fit_sample`` evenly spaced rows of the whole input), each rank reading the sample rows in its
own range and ``all_gather`` assembling them in global order, so every rank fits the same
codec on the same rows with the same seed - the codec :func:`slcodec.encode` would fit.  Ranks
do not split the fit (reducing gradients across ranks would change the floating-point result
and so the codec); they agree on it: the hash of the fitted parameters (and the check that they
are finite) is compared across ranks before anything is written, and a rank whose fit differs
(another torch build, another device kind) stops the encode with an error on every rank.

Writing.  Each rank encodes its range into shard ``r`` (a temporary file), the shard entries
are gathered on rank 0, which writes the manifest (a temporary file); after a barrier every
rank renames its shard into place, and after another rank 0 renames the manifest
(:class:`slcodec.pipeline.output.TeamOutput`).  The output folder must be shared by all ranks.
Backend: NCCL when the device is CUDA, else gloo.
"""
from __future__ import annotations

import dataclasses
import os

from .pipeline.team import Team


def _dist():
    import torch.distributed as dist
    return dist


def is_rank_zero() -> bool:
    dist = _dist()
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class TorchTeam(Team):
    """The ranks of the default ``torch.distributed`` process group as a
    :class:`~slcodec.pipeline.team.Team`."""

    def __init__(self):
        dist = _dist()
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def gather(self, obj) -> list:
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        _dist().all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, tensor) -> None:
        if self.size > 1:
            _dist().all_reduce(tensor)

    def barrier(self) -> None:
        if self.size > 1:
            _dist().barrier()


def _join(device: str, backend: str | None = None) -> tuple[Team, str]:
    """The team of this process (joining the default group, or starting it from torchrun's
    environment and leaving it running) and this rank's device (``cuda`` becomes its own GPU)."""
    import torch
    dist = _dist()
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Started from torchrun's environment and left running: a later call joins it (creating a
        # second group on the same MASTER_PORT in one process would wait forever).
        dist.init_process_group(backend or ("nccl" if device.startswith("cuda") else "gloo"))
    team = TorchTeam() if dist.is_initialized() else Team()
    if device == "cuda" and team.size > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', team.rank)) % max(1, torch.cuda.device_count())}"
    return team, device


@dataclasses.dataclass
class SharedChoice:
    """The codec chosen for a distributed encode, the same on every rank: ``choice`` (the full
    :class:`~slcodec.pipeline.choose.Choice`, candidates and all) on rank 0 only."""
    codec: str
    config: dict
    met: bool
    unmet: str
    choice: object = None


def choose(src, target, budget: float, *, device: str = "cpu", backend: str | None = None, **choose_kwargs):
    """The codec and its size chosen for ``src`` (:func:`slcodec.pipeline.choose.choose`) once, by
    rank 0, and sent to every rank as JSON: every shard is written with the same codec and options.
    A choice made on every rank could differ between ranks (a learned candidate's trial fit on
    another device, a near tie) and would cost every rank the whole choice.  The other ranks wait
    in the broadcast meanwhile (the process group's timeout, 30 minutes by default for gloo, bounds
    it).  An error of rank 0's choice is raised on every rank."""
    import json

    import torch

    from .errors import ConfigError, SlcodecError
    from .pipeline import choose as ch
    from .pipeline.device import resolve_device
    team, device = _join(resolve_device(device), backend)
    result, payload = None, {}
    if team.rank == 0:
        try:
            result = ch.choose(src, target, budget, device=device, **choose_kwargs)
            payload = {"codec": result.codec, "config": result.config, "met": result.met,
                       "unmet": ch.unmet_text(result)}
        except SlcodecError as exc:
            if team.size == 1:
                raise
            payload = {"error": str(exc)}
    if team.size > 1:
        dist = _dist()
        where = device if dist.get_backend() == "nccl" else "cpu"
        data = json.dumps(payload, sort_keys=True).encode() if team.rank == 0 else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=where)
        dist.broadcast(size, src=0)
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(where) if team.rank == 0
               else torch.empty(int(size.item()), dtype=torch.uint8, device=where))
        dist.broadcast(buf, src=0)
        payload = json.loads(bytes(buf.cpu().numpy().tobytes()).decode())
        if "error" in payload:
            raise ConfigError(payload["error"])
    # every rank, rank 0 included, encodes with the options as sent
    return SharedChoice(payload["codec"], payload["config"], payload["met"], payload["unmet"], result)


def encode(labels, path, *, codec: str | None = None, input_kind: str = "auto", device: str = "cpu", seed: int = 0,
           provenance: dict | None = None, augment: dict | None = None, batch_size: int = 65536,
           fit_sample: int | None = None, backend: str | None = None, **codec_config) -> str:
    """Encode ``labels`` as a sharded set written by all ranks: shard ``r`` by rank ``r``,
    the manifest ``path`` by rank 0.  Joins the default process group, or starts it from
    torchrun's environment (and leaves it running); without one (no ``WORLD_SIZE``) it runs
    as a single rank.  A rank that fails leaves the others waiting in a collective (as any
    torch.distributed program): torchrun's own failure handling ends them."""
    from .pipeline.device import default_codec, resolve_device
    from .pipeline.encode import encode_source
    from .pipeline.inputs import LabelSource, as_source

    team, device = _join(resolve_device(device), backend)
    src = labels if isinstance(labels, LabelSource) else as_source(labels, input_kind=input_kind)
    return encode_source(src, path, codec=codec or default_codec(), device=device, seed=seed,
                         provenance=provenance, augment=augment, batch_size=batch_size, team=team,
                         fit_sample=fit_sample, **codec_config)


__all__ = ["encode", "choose", "is_rank_zero", "SharedChoice", "TorchTeam"]
