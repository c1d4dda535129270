"""Whole-input statistics a codec asks for before its fit (:meth:`Codec.fit_statistics`).

A codec that conditions on the image of a label (``vq`` with ``image_bias``, ``imgprior``)
needs every image's mean log-probabilities over *all* its labels, not only over the fit
sample: one extra pass over the input, made here, in blocks, so the codecs and the writer
know nothing of how the input is read.  Ranks of a distributed encode each sum their own
rows; the sums are added across ranks before the mean is taken.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError

#: per-image mean log-probabilities ``[images, C]`` (float32), for ``[images, augmentations, C]`` sets
IMAGE_MEAN_LOG_PROBS = "image_mean_log_probs"
STATISTICS = (IMAGE_MEAN_LOG_PROBS,)


def image_log_prob_sums(reader, shape, source_kind: str, block_rows: int = 16384, start: int = 0,
                        stop: int | None = None):
    """Per-image sums ``[images, C]`` (float64 torch) of the log-probabilities of rows
    ``[start, stop)`` of ``reader`` (a :class:`~slcodec.pipeline.rows.RowReader` over
    ``[images * augmentations, C]`` rows)."""
    import torch
    images, augs = int(shape[0]), int(shape[1])
    stop = reader.n if stop is None else stop
    acc = torch.zeros((images, reader.classes), dtype=torch.float64)
    for lo in range(start, stop, block_rows):
        hi = min(stop, lo + block_rows)
        x = torch.from_numpy(reader.read(lo, hi)).double()
        if source_kind == "probs":
            x = torch.log(torch.clamp(x, min=1e-30))
        acc.index_add_(0, torch.arange(lo, hi) // augs, torch.log_softmax(x, dim=1))
    return acc


def image_mean_log_probs(reader, shape, source_kind: str, block_rows: int = 16384) -> np.ndarray:
    """Each image's mean log-probabilities ``[images, C]`` (float32) over all its labels, read
    from ``reader`` in blocks (what a :class:`slcodec.Writer` user hands to ``set_image_means``)."""
    return (image_log_prob_sums(reader, shape, source_kind, block_rows) / int(shape[1])).float().numpy()


def compute_fit_statistics(names, reader, shape, source_kind: str, block_rows: int, start: int, stop: int,
                           all_reduce_sum=None) -> dict:
    """The statistics ``names`` of the whole input (those that apply to a set of leading shape
    ``shape``), computed from rows ``[start, stop)`` of ``reader``; ``all_reduce_sum(tensor)`` adds partial sums across the processes of an encode
    in place (None: this process holds every row)."""
    out = {}
    for name in names:
        if name != IMAGE_MEAN_LOG_PROBS:
            raise ConfigError(f"unknown fit statistic {name!r} (known: {', '.join(STATISTICS)})")
        if shape is None or len(shape) != 2:
            continue   # a set without images has no image means: the codec's fit says what it needs
        sums = image_log_prob_sums(reader, shape, source_kind, block_rows, start, stop)
        if all_reduce_sum is not None:
            all_reduce_sum(sums)
        out[name] = (sums / int(shape[1])).float().numpy()
    return out


__all__ = ["IMAGE_MEAN_LOG_PROBS", "STATISTICS", "image_log_prob_sums", "image_mean_log_probs",
           "compute_fit_statistics"]
