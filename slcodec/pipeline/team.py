"""The processes that encode one label set together (:class:`Team`): the collectives the
encode pipeline needs, and nothing of how they are carried out.

The base class is a team of one process, so a single-process encode runs the same code as a
distributed one; :mod:`slcodec.distributed` supplies a team over ``torch.distributed``.
"""
from __future__ import annotations


class Team:
    """A team of ``size`` processes of which this is number ``rank``; member ``r`` encodes the
    contiguous labels :meth:`row_range` gives it and writes them as shard ``r`` of a sharded set.
    This base class is the team of one process."""

    rank: int = 0
    size: int = 1

    def gather(self, obj) -> list:
        """Every member's ``obj``, in rank order, on every member."""
        return [obj]

    def all_reduce_sum(self, tensor) -> None:
        """Replace ``tensor`` (a CPU torch tensor) in place by the sum of every member's."""

    def barrier(self) -> None:
        """Return once every member has called it."""

    def row_range(self, n: int) -> tuple[int, int]:
        """The labels ``[start, stop)`` of ``n`` that this member encodes."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size


__all__ = ["Team"]
