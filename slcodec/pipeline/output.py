"""Where a :class:`~slcodec.pipeline.writer.Writer`'s encoded streams go when it closes.

Three outputs, one interface (:meth:`room`, :meth:`seal`, :meth:`finish`, :meth:`abort`):

* :class:`FileOutput` - one ``.vqsl`` file (format 1.0), written atomically;
* :class:`ShardedOutput` - a sharded set (format 1.1) of ``shard_rows`` labels a shard,
  written by this process alone;
* :class:`TeamOutput` - one shard of a sharded set written by a :class:`~slcodec.pipeline.team.Team`
  of processes, member ``r`` writing shard ``r`` and member 0 the manifest.

The writer hands each its :class:`Encoded` result: the header, the parameters (together
with the verdict on whether they are finite), the sections and the spooled stream builders.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..format.container import ContainerWriter, SpooledStreamBuilder

#: section names a caller may not use for its own sections (besides ``params/...`` and ``streams/...``)
RESERVED_SECTIONS = ("augment", "provenance")


@dataclasses.dataclass
class Encoded:
    """What a writer hands its output: ``header`` (without sections), ``params`` (name ->
    array), ``sections`` (the ``augment`` and ``provenance`` maps, as [(name, "msgpack", value)]),
    ``extra`` (the caller's own sections, [(name, kind, value)], kind ``msgpack`` or ``stream``),
    ``streams`` (name -> spooled builder of the labels since the last seal), ``format_minor``,
    and ``params_problem``: why the parameters must not be written (non-finite values), or None."""

    header: dict
    params: dict
    sections: list
    extra: list
    streams: dict
    format_minor: int = 0
    params_problem: str | None = None

    def refuse_bad_params(self) -> None:
        """Raise ConfigError when the parameters must not be written."""
        if self.params_problem:
            from ..errors import ConfigError
            raise ConfigError(self.params_problem)


class ExtraSections:
    """A writer's caller's own sections (augmentation records of an import, say): spooled streams
    and msgpack maps, checked against the reserved names and each other."""

    def __init__(self, folder: str, chunk_rows):
        self.folder = folder
        self._chunk_rows = chunk_rows
        self._sections: dict = {}

    def add_stream(self, name: str, dtype, width: int, chunk_rows: int | None = None) -> SpooledStreamBuilder:
        self._check_name(name)
        dtype = np.dtype(dtype).name
        b = SpooledStreamBuilder(dtype, width, chunk_rows=chunk_rows or self._chunk_rows(dtype, width),
                                 folder=self.folder)
        self._sections[name] = ("stream", b)
        return b

    def add_msgpack(self, name: str, obj) -> None:
        self._check_name(name)
        self._sections[name] = ("msgpack", obj)

    def _check_name(self, name):
        if name.startswith(("params/", "streams/")) or name in RESERVED_SECTIONS:
            raise ValueError(f"section name {name!r} is reserved")
        if name in self._sections:
            raise ValueError(f"duplicate section name {name!r}")

    def sections(self) -> list:
        """``[(name, kind, value)]`` in the order they were added."""
        return [(name, kind, obj) for name, (kind, obj) in self._sections.items()]

    def close(self) -> None:
        for kind, obj in self._sections.values():
            if kind == "stream":
                obj.close()


class FileOutput:
    """One container file."""

    def __init__(self, path: str):
        self.path = path

    def room(self, held: int) -> float:
        """Labels the current streams, which hold ``held``, may still take; at 0 the writer seals them."""
        return math.inf

    def seal(self, enc: Encoded, start: int, count: int) -> None:
        raise AssertionError("a single file is never sealed")

    def finish(self, enc: Encoded, start: int, count: int) -> None:
        enc.refuse_bad_params()
        with ContainerWriter(self.path) as writer:
            for name, arr in enc.params.items():
                writer.add_array("params/" + name, arr)
            for name, _, value in enc.sections:
                writer.add_msgpack(name, value)
            for name, builder in enc.streams.items():
                writer.add_stream("streams/" + name, builder)
            for name, kind, value in enc.extra:
                (writer.add_stream if kind == "stream" else writer.add_msgpack)(name, value)
            writer.commit(enc.header, minor=enc.format_minor)

    def abort(self) -> None:
        """Nothing to remove: ContainerWriter cleans up after itself."""


class ShardedOutput:
    """A sharded set written by one process: a shard every ``shard_rows`` labels."""

    def __init__(self, path: str, shard_rows: int):
        self.path = path
        self.shard_rows = shard_rows
        self._set = None
        self._entries: list = []

    def room(self, held: int) -> float:
        return self.shard_rows - held

    def seal(self, enc: Encoded, start: int, count: int) -> None:
        """Write labels ``[start, start+count)`` as the next shard (a temporary file until finish)."""
        from ..format.shards import ShardSetWriter
        enc.refuse_bad_params()
        if self._set is None:
            self._set = ShardSetWriter(self.path, enc.header, enc.params, minor=enc.format_minor)
        self._entries.append(self._set.write_shard(len(self._entries), start, count, enc.streams))

    def finish(self, enc: Encoded, start: int, count: int) -> None:
        if count or self._set is None:
            self.seal(enc, start, count)
        self._set.header = enc.header
        self._set.write_manifest(self._entries, enc.sections + enc.extra)
        self._set.publish()

    def abort(self) -> None:
        if self._set is not None:
            self._set.abort()   # removes the temporary files of a set that was not published


class TeamOutput:
    """Shard ``team.rank`` of a set written by every member of ``team``; member 0 writes the manifest.

    Before anything is renamed into place every member compares the parameters' hash and the
    finite-parameter check across the team, so the members stop together, with the same error,
    rather than one waiting for the others forever."""

    def __init__(self, path: str, team):
        self.path = path
        self.team = team
        self._set = None

    def room(self, held: int) -> float:
        return math.inf

    def seal(self, enc: Encoded, start: int, count: int) -> None:
        raise AssertionError("a team member writes one shard")

    def finish(self, enc: Encoded, start: int, count: int) -> None:
        from ..format.shards import ShardSetWriter, new_write_token, params_sha256
        from ..errors import ConfigError
        team = self.team
        problem = enc.params_problem
        verdicts = team.gather((problem, None if problem else params_sha256(enc.params)))
        problems = [p for p, _ in verdicts if p]
        if problems:
            raise ConfigError(problems[0])
        hashes = [h for _, h in verdicts]
        if len(set(hashes)) != 1:
            raise RuntimeError(f"ranks fitted different codecs (params sha256 {hashes}); "
                               "every rank must run the same torch build on the same kind of device")
        token = team.gather(new_write_token())[0]   # rank 0's, for every rank
        self._set = sset = ShardSetWriter(self.path, enc.header, enc.params, minor=enc.format_minor, token=token)
        entries = team.gather(sset.write_shard(team.rank, start, count, enc.streams))
        if team.rank == 0:
            sset.write_manifest(entries, enc.sections + enc.extra)
        team.barrier()
        sset.publish_shards()
        team.barrier()
        if team.rank == 0:
            sset.publish_manifest()
        team.barrier()

    def abort(self) -> None:
        if self._set is not None:
            self._set.abort()


__all__ = ["Encoded", "ExtraSections", "FileOutput", "ShardedOutput", "TeamOutput", "RESERVED_SECTIONS"]
