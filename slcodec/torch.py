"""PyTorch integration: train a student on a ``.vqsl`` file with an ordinary DataLoader.

About five new lines in a training loop::

    from slcodec.torch import LabelDataset, LabelDecoder, kl_div_loss

    data = LabelDataset(images, "labels.vqsl")             # images: [N, 3, H, W] or a dataset
    decode = LabelDecoder("labels.vqsl", device="cuda", temperature=T)
    loader = DataLoader(data, batch_size=100, shuffle=True, num_workers=8)
    for epoch in range(epochs):
        data.set_epoch(epoch)                                # before iterating the loader
        for views, label_idx in loader:
            probs = decode(label_idx)                        # the batch's labels, decoded at once on the GPU
            loss = kl_div_loss(student(views.cuda()), probs, T)

Mapping: item ``i`` of epoch ``e`` is view ``a = e % A`` of image ``i`` (``A`` augmentations
per image in the file), i.e. label ``i * A + a``; when the file's ``augment`` section is
seeded, the image returned is exactly that view (crop, flip, mix regenerated from the seed,
:mod:`slcodec.augment`), so the label belongs to the pixels the student sees.  A file without
seeded views is refused unless the caller says where the views come from (``seed`` and
``policy``, ``view_fn`` or ``augment=False``): its raw images would otherwise be paired with
labels of views nobody can rebuild.  Any batch size, any sampler/shuffling and any
``num_workers``, persistent or not, work: the epoch lives in a one-element shared-memory
tensor that the workers (forked or spawned) read at each item, so ``set_epoch`` between
epochs reaches workers that outlive an iterator; the dataset holds only the file's path and
opens nothing; decoders open the file (memory-mapped) lazily in each process and reopen after
a fork.  ``(epoch, i)`` tuples from your own sampler also select a view.  Nothing in PyTorch
is patched.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from .pipeline import reader as api
from .augment.record import Policy, parse_record
from .augment.views import _fetch, _float, build_views, hflip, mix, relabel, resized_crop
from .errors import ConfigError


class _LazyReader:
    """A :class:`slcodec.Reader` opened on first use in each process (reopened after a fork)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._reader = None
        self._pid = None

    def get(self) -> "api.Reader":
        pid = os.getpid()
        if self._reader is None or self._pid != pid:
            # After a fork the parent's reader is dropped, not closed: its mapping is the parent's too.
            self._reader = api.open(self.path)
            self._pid = pid
        return self._reader

    def close(self):
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        self._reader = None

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


def read_layout(path, augs_per_image: int | None = None):
    """(images, augmentations per image, augment record or None) of a ``.vqsl`` file."""
    with api.open(path) as r:
        shape = r.shape
        record = r.container.read_msgpack("augment") if "augment" in r.container.sections else None
    if len(shape) == 3:
        if augs_per_image not in (None, shape[1]):
            raise ValueError(f"{path}: holds {shape[1]} augmentations per image, not {augs_per_image}")
        return shape[0], shape[1], record
    if augs_per_image is None:
        raise ValueError(f"{path}: labels are [N, C]; pass augs_per_image")
    if augs_per_image < 1 or shape[0] % augs_per_image:
        raise ValueError(f"{path}: {shape[0]} labels are not a multiple of augs_per_image={augs_per_image}")
    return shape[0] // augs_per_image, augs_per_image, record


def _check_image_layout(shape, what: str) -> None:
    """Refuse image shapes that would be cropped along the wrong axes ([H, W, C] and the like)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3:
        raise ValueError(f"{what} has shape {list(shape)}; an image must be [C, H, W]")
    # A channel count above 4 next to a last axis of 1, 3 or 4 is an [H, W, C] image: cropping it
    # would cut along W and C and still return a tensor, so this is refused rather than guessed.
    if shape[0] > 4 and shape[2] <= 4:
        raise ValueError(f"{what} has shape {list(shape)}, which looks channels-last [H, W, C]; "
                         "images must be [C, H, W] (e.g. images.permute(0, 3, 1, 2) for a batch)")


def _check_images(images, path: str):
    """``images`` as a tensor or map-style dataset, with its layout and dtype checked."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images for {path} have shape {list(images.shape)}; expected [N, C, H, W]")
        if images.dtype == torch.bool or images.is_complex():
            raise ValueError(f"images for {path} have dtype {images.dtype}; expected a real or integer dtype")
        _check_image_layout(images.shape[1:], f"each image of images {list(images.shape)} for {path}")
    elif len(images):
        first = _fetch(images, 0)
        _check_image_layout(first.shape, f"image 0 of the dataset given for {path}")
    return images


class LabelDataset(Dataset):
    """Pairs images with the labels of a ``.vqsl`` file: item -> ``(view, label index)``.

    ``images``: a tensor ``[N, C, H, W]`` or numpy array of that shape (channels first; any
    real or integer dtype), or any map-style dataset whose item ``i`` is an image tensor or
    array ``[C, H, W]`` (or a tuple starting with one; sizes may differ between images).
    ``N`` must be the file's image count.  Integer images become float32 with their values
    unchanged (uint8 stays 0..255): normalise in ``transform``, which is applied to each view.
    Channels-last images are refused, not guessed.

    Where view ``a`` of image ``i`` comes from, exactly one of:

    * the file's seeded ``augment`` section (the default; ``seed``/``policy``, if given, must
      equal the file's);
    * ``seed`` and ``policy``, for a file without seeded views whose labels were made with them;
    * ``view_fn(image, image_index, view_index) -> view``, for a file without seeded views
      (for example one imported with explicit per-view records): ``image`` is item
      ``image_index`` of ``images`` as stored (a ``[C, H, W]`` tensor), the result is returned
      as the view.  Use a module-level function when workers are spawned (it is pickled);
    * ``augment=False``: the images as they are, whatever the file holds (for labels made on
      unaugmented images, or a pipeline building the views itself from
      :func:`slcodec.augment.record.view_params`).

    A file without seeded views and none of the last three is refused with a ValueError: the
    raw image would be paired with the label of a view nobody can rebuild.  ``views`` says in
    words which source is used (worth logging next to a run's results).

    The epoch set by :meth:`set_epoch` is shared with the loader's worker processes (a shared
    memory tensor), persistent or not; set it between epochs, not while iterating.
    """

    def __init__(self, images, path, *, augs_per_image: int | None = None, transform=None,
                 policy: Policy | dict | None = None, seed: int | None = None, augment: bool = True,
                 view_fn=None, epoch: int = 0):
        self.path = os.fspath(path)
        self.images = _check_images(images, self.path)
        self.num_images, self.augs_per_image, record = read_layout(self.path, augs_per_image)
        if len(self.images) != self.num_images:
            raise ValueError(f"{self.path} holds labels for {self.num_images} images, got {len(self.images)} images")
        if isinstance(policy, dict):
            policy = Policy.from_dict(policy)
        if view_fn is not None and not callable(view_fn):
            raise ValueError(f"view_fn must be callable(image, image_index, view_index), got {type(view_fn).__name__}")
        self.policy, self.seed, self.view_fn = None, None, None
        if not augment:
            if policy is not None or seed is not None or view_fn is not None:
                raise ValueError("augment=False returns the images as they are; it takes no seed, policy or view_fn")
            self.views = "the images as they are (augment=False)"
        else:
            self._choose_views(record, policy, seed, view_fn)
        self.transform = transform
        # One int64 in shared memory: forked workers inherit the mapping and spawned or
        # persistent ones receive it through torch's multiprocessing pickler, so set_epoch
        # reaches every worker; a plain pickle copies the value.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.epoch = epoch

    def _choose_views(self, record, policy, seed, view_fn) -> None:
        try:
            parsed = parse_record(record)
            missing = None
        except ConfigError as exc:
            parsed, missing = None, str(exc)
        if parsed is not None:
            if (policy is not None and policy != parsed[1]) or (seed is not None and seed != parsed[0]):
                raise ValueError(f"{self.path}: its labels belong to seed {parsed[0]} and policy "
                                 f"{parsed[1].to_dict()}; a different seed or policy would mismatch them")
            if view_fn is not None:
                raise ValueError(f"{self.path}: its views are regenerated from its seeded augmentation record; "
                                 "a view_fn would replace them (pass augment=False to build them yourself)")
            self.seed, self.policy = parsed
            self.views = f"seeded views from the file (seed {self.seed}, policy {self.policy.to_dict()})"
            return
        if view_fn is not None:
            if policy is not None or seed is not None:
                raise ValueError("pass either view_fn or seed and policy, not both")
            self.view_fn = view_fn
            name = getattr(view_fn, "__qualname__", None) or type(view_fn).__name__
            self.views = f"views from view_fn {getattr(view_fn, '__module__', '?')}.{name}"
            return
        if policy is not None or seed is not None:
            if policy is None or seed is None:
                raise ValueError("pass both seed and policy to augment a file without seeded views")
            self.seed, self.policy = int(seed), policy
            self.views = f"seeded views from the caller (seed {self.seed}, policy {self.policy.to_dict()})"
            return
        what = missing or "has no seeded augmentation record (augment mode 'none')"
        raise ValueError(
            f"{self.path}: {what}, so LabelDataset cannot build the view each label belongs to; pass seed= and policy= "
            "if the labels were made with that seeded policy, view_fn=fn(image, image_index, view_index) to "
            "build the views yourself, or augment=False if the labels belong to the images as they are")

    @property
    def epoch(self) -> int:
        """The epoch whose views the dataset yields (shared with the loader's workers)."""
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(int(value))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose views the next loader iterator yields (call it between epochs)."""
        self.epoch = epoch

    def label_index(self, epoch: int, image) -> np.ndarray:
        """Flat label index of image(s) ``image`` at ``epoch``: ``image * A + epoch % A``."""
        return np.asarray(image, dtype=np.int64) * self.augs_per_image + int(epoch) % self.augs_per_image

    def __len__(self):
        return self.num_images

    def __getitem__(self, idx):
        epoch, i = idx if isinstance(idx, tuple) else (self.epoch, idx)
        i = int(i)
        if not 0 <= i < self.num_images:
            raise IndexError(f"image {i} out of range for {self.num_images} images")
        a = int(epoch) % self.augs_per_image
        if self.policy is not None:
            view = build_views(self.images, [i], [a], self.policy, self.seed, num_images=self.num_images)[0]
        elif self.view_fn is not None:
            view = self.view_fn(_fetch(self.images, i), i, a)
        else:
            view = _float(_fetch(self.images, i))
        if self.transform is not None:
            view = self.transform(view)
        return view, i * self.augs_per_image + a


class LabelDecoder:
    """Decode a batch of flat label indices at once: ``decoder(idx) -> [B, C]`` float32 on ``device``.

    ``as_``/``temperature`` as :meth:`slcodec.Reader.decode`.  Use it in the training loop
    (decoding on the training device), or as ``collate_fn=LabelCollate(path)`` to decode in the
    loader's workers on the CPU.  Safe to pickle and to use in forked processes.
    """

    def __init__(self, path, device="cpu", as_: str = "probs", temperature: float | None = None):
        self._lazy = _LazyReader(path)
        self.device = device
        self.as_ = as_
        self.temperature = temperature

    @property
    def path(self):
        return self._lazy.path

    @property
    def reader(self) -> "api.Reader":
        return self._lazy.get()

    def __call__(self, indices) -> torch.Tensor:
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return self.reader.decode(idx, device=self.device, as_=self.as_, temperature=self.temperature)

    def close(self):
        self._lazy.close()


class LabelCollate:
    """``collate_fn`` that decodes the batch's labels in the worker: ``(views, labels, label_idx)``."""

    def __init__(self, path, as_: str = "probs", temperature: float | None = None):
        self.decoder = LabelDecoder(path, "cpu", as_, temperature)

    def __call__(self, batch):
        views, idx = default_collate(batch)
        return views, self.decoder(idx), idx


# --------------------------------------------------------------------------- losses
_KINDS = ("probs", "log_probs", "logits")


def _teacher_log_probs(teacher: torch.Tensor, T: float, kind: str):
    if kind == "logits":
        return F.log_softmax(teacher.float() / T, dim=1), True
    if kind == "log_probs":
        return teacher.float(), True
    if kind == "probs":
        return teacher.float(), False
    raise ValueError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")


def kl_div_loss(student_logits: torch.Tensor, teacher: torch.Tensor, T: float = 1.0, *, kind: str = "probs",
                scale: bool = True) -> torch.Tensor:
    """Knowledge-distillation loss ``T^2 * mean_b KL(p_b || q_b)``.

    ``q = softmax(student_logits / T)``; ``p`` is the teacher's distribution *at temperature T*:
    ``teacher`` holds probabilities (``kind="probs"``) or log-probabilities (``"log_probs"``)
    already at T - exactly what ``LabelDecoder(..., temperature=T)`` returns - or raw logits
    (``"logits"``, divided by T here).  The ``T^2`` factor (Hinton et al. 2015; ``scale=False``
    drops it) keeps gradient magnitudes comparable across temperatures.  Mean over the batch.
    """
    T = float(T)
    log_q = F.log_softmax(student_logits.float() / T, dim=1)
    target, log_target = _teacher_log_probs(teacher, T, kind)
    loss = F.kl_div(log_q, target, reduction="batchmean", log_target=log_target)
    return loss * (T * T) if scale else loss


def soft_cross_entropy(student_logits: torch.Tensor, teacher: torch.Tensor, T: float = 1.0, *,
                       kind: str = "probs", scale: bool = True) -> torch.Tensor:
    """``T^2 * mean_b sum_c -p log q`` with ``p``, ``q`` as in :func:`kl_div_loss`.

    Equals :func:`kl_div_loss` plus the teacher's entropy (a constant): the same gradients.
    """
    T = float(T)
    log_q = F.log_softmax(student_logits.float() / T, dim=1)
    target, is_log = _teacher_log_probs(teacher, T, kind)
    p = target.exp() if is_log else target
    loss = -(p * log_q).sum(dim=1).mean()
    return loss * (T * T) if scale else loss


__all__ = ["LabelDataset", "LabelDecoder", "LabelCollate", "read_layout", "kl_div_loss", "soft_cross_entropy",
           "build_views", "relabel", "resized_crop", "hflip", "mix"]
