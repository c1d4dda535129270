"""Apply seeded augmentation parameters to image tensors, and relabel seeded views with a teacher.

A view ``(image i, augmentation a)`` of a :class:`~slcodec.augment.record.Policy` is built as
torchvision would: crop the box ``[top:top+height, left:left+width]`` of the source image,
resize it to ``policy.size`` (``torch.nn.functional.interpolate``, the policy's
interpolation, antialiased when downscaling with bilinear/bicubic), flip it horizontally when
``flip``; then, when the view is mixed, build the partner's base view the same way (partner
image, same augmentation index) and mix: mixup ``lam * own + (1 - lam) * partner``, cutmix
the partner's pixels pasted into the cut box.  Integer images are converted to float32
(values unchanged); normalise after augmenting (``transform``).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import check_int
from .record import MIX_CUTMIX, MIX_MIXUP, Policy, crop_params, mix_params


def _float(img: torch.Tensor) -> torch.Tensor:
    return img if img.is_floating_point() else img.to(torch.float32)


def resized_crop(images, top, left, height, width, size, interpolation: str = "bilinear",
                 antialias: bool = True) -> torch.Tensor:
    """Crop box ``j`` out of ``images[j]`` and resize it to ``size``: ``[B, C, size_h, size_w]``.

    ``images``: a tensor ``[B, C, H, W]`` or a sequence of ``[C, H_j, W_j]`` tensors (sizes may
    differ); the boxes are integer arrays of length B, in source pixels.
    """
    size = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    out = []
    kwargs = {"mode": interpolation}
    if interpolation in ("bilinear", "bicubic"):
        kwargs.update(align_corners=False, antialias=bool(antialias))
    for j in range(len(images)):
        t, l, h, w = int(top[j]), int(left[j]), int(height[j]), int(width[j])
        crop = _float(images[j])[..., t:t + h, l:l + w]
        if crop.shape[-2:] != (h, w) or h < 1 or w < 1:
            raise ValueError(f"crop box {(t, l, h, w)} is outside image {j} of size {tuple(images[j].shape[-2:])}")
        if (h, w) != size:
            crop = F.interpolate(crop.unsqueeze(0), size=size, **kwargs).squeeze(0)
        out.append(crop)
    if not out:
        c = images.shape[1] if isinstance(images, torch.Tensor) else 3
        return torch.empty((0, c) + size)
    return torch.stack(out)


def hflip(images: torch.Tensor, flip) -> torch.Tensor:
    """Flip ``images[j]`` ([B, C, H, W]) left-right where ``flip[j]`` is true."""
    flip = torch.as_tensor(np.asarray(flip, dtype=bool), device=images.device)
    if not bool(flip.any()):
        return images
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def mix(images: torch.Tensor, partners: torch.Tensor, kind, lam, cut_top, cut_left, cut_height,
        cut_width) -> torch.Tensor:
    """Mix base views with their partners' base views (both ``[B, C, H, W]``) per :func:`mix_params`."""
    kind = np.asarray(kind)
    out = images.clone()
    lam_t = torch.as_tensor(np.asarray(lam, dtype=np.float64), dtype=images.dtype, device=images.device)
    mu = torch.as_tensor(kind == MIX_MIXUP, device=images.device)
    if bool(mu.any()):
        l4 = lam_t.view(-1, 1, 1, 1)
        out = torch.where(mu.view(-1, 1, 1, 1), l4 * images + (1 - l4) * partners, out)
    for j in np.flatnonzero(kind == MIX_CUTMIX):
        t, l, h, w = int(cut_top[j]), int(cut_left[j]), int(cut_height[j]), int(cut_width[j])
        out[j, :, t:t + h, l:l + w] = partners[j, :, t:t + h, l:l + w]
    return out


def _fetch(images, i: int) -> torch.Tensor:
    item = images[i]
    if isinstance(item, (tuple, list)):
        item = item[0]
    if not isinstance(item, torch.Tensor):
        item = torch.as_tensor(np.asarray(item))
    return item


def build_views(images, image_idx, aug_idx, policy: Policy, seed: int, num_images: int | None = None,
                device=None) -> torch.Tensor:
    """The seeded views ``(image_idx[j], aug_idx[j])`` of ``images``: ``[B, C, *policy.size]``.

    ``images``: a tensor ``[N, C, H, W]`` or any map-style dataset whose items are image tensors
    ``[C, H, W]`` (or tuples starting with one).  ``num_images`` defaults to ``len(images)``
    (partners for mixing are drawn from that many images).  ``device``: where to crop and
    resize (default: where the images are).
    """
    image_idx = np.asarray(image_idx, dtype=np.int64).reshape(-1)
    aug_idx = np.broadcast_to(np.asarray(aug_idx, dtype=np.int64).reshape(-1), image_idx.shape)
    n_img = len(images) if num_images is None else int(num_images)
    m = mix_params(seed, image_idx, aug_idx, policy, n_img)
    needed = np.unique(np.concatenate([image_idx, m["partner"][m["mix"] > 0]]))
    src = {int(i): _fetch(images, int(i)) for i in needed}
    if device is not None:
        src = {i: t.to(device) for i, t in src.items()}

    def base(idx):
        sz = np.array([tuple(src[int(i)].shape[-2:]) for i in idx], dtype=np.int64).reshape(-1, 2)
        c = crop_params(seed, idx, aug_idx, policy, sz[:, 0], sz[:, 1])
        v = resized_crop([src[int(i)] for i in idx], c["top"], c["left"], c["height"], c["width"],
                         policy.size, policy.interpolation, policy.antialias)
        return hflip(v, c["flip"])

    views = base(image_idx)
    if np.any(m["mix"] > 0):
        partners = base(m["partner"])
        views = mix(views, partners, m["mix"], m["lam"], m["cut_top"], m["cut_left"], m["cut_height"],
                    m["cut_width"])
    return views


def relabel(teacher: Callable, images, policy: Policy, seed: int, augs_per_image: int, batch_size: int = 256,
            device="cpu", *, transform: Callable | None = None, images_range: Sequence[int] | None = None
            ) -> Iterator[torch.Tensor]:
    """Run ``teacher`` on the seeded views and yield its outputs, batch by batch, in label order.

    Labels come in the order of the ``.vqsl`` file: view ``a`` of image ``i`` is label
    ``i * augs_per_image + a`` (images in ``images_range``, default all).  ``transform`` (e.g.
    mean/std normalisation) is applied to each batch of views before the teacher.  Each yielded
    tensor is ``teacher(views).float()`` detached, on ``device``, ``[<= batch_size, C]``.
    Put the teacher in eval mode first.  Concatenate the batches (or feed them to a streaming
    writer) and store them with ``augment=slcodec.augment.record.augment_record(seed, policy)``::

        logits = torch.cat(list(relabel(teacher, images, policy, seed, 64, 256, "cuda"))).cpu()
        slcodec.encode(logits.view(len(images), 64, -1), "labels.vqsl",
                       augment=augment_record(seed, policy))
    """
    augs_per_image, batch_size = check_int(augs_per_image, "augs_per_image"), check_int(batch_size, "batch_size")
    imgs = np.arange(len(images)) if images_range is None else np.asarray(images_range, dtype=np.int64)
    flat = np.arange(imgs.size * augs_per_image, dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, flat.size, batch_size):
            f = flat[start:start + batch_size]
            views = build_views(images, imgs[f // augs_per_image], f % augs_per_image, policy, seed,
                                num_images=len(images), device=device)
            if transform is not None:
                views = transform(views)
            yield teacher(views).detach().float()


__all__ = ["resized_crop", "hflip", "mix", "build_views", "relabel"]
