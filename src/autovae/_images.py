"""The one image normaliser: tensors of any layout to (N, C, H, W) float images.

:func:`as_images` reshapes (flat ``(N, D)`` with an ``image_shape``, ``(N, H, W)`` as one
channel) and scales uint8 by 1/255; :func:`checked_images` also requires finite values in
[0, 1] and, when given, the exact ``image_shape`` (metrics must not silently clamp).
Loading raw arrays from files is :mod:`autovae.data`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["as_images", "checked_images"]


def _shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (2, 3) or any(s <= 0 for s in shape):
        raise ValueError(f"image_shape must be (C, H, W) or (H, W) of positive sizes, "
                         f"got {tuple(image_shape)}")
    return (1, *shape) if len(shape) == 2 else shape


def as_images(x: Any, image_shape: Sequence[int] | None = None, what: str = "images") -> Tensor:
    """Return images as ``(N, C, H, W)``; uint8 becomes float in [0, 1].

    ``image_shape`` is ``(C, H, W)`` or ``(H, W)`` (one channel); each item of ``x`` (any shape
    ``(N, ...)``, e.g. flat ``(N, D)``) is reshaped to it. Without it, ``x`` must already be
    ``(N, C, H, W)`` or be ``(N, H, W)`` (one channel).
    """
    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        x = x.float() / 255
    if image_shape is None:
        if x.dim() == 4:
            return x
        if x.dim() == 3:
            return x.unsqueeze(1)
        hint = "; flat images (N, D) need image_shape=(C, H, W)" if x.dim() == 2 else ""
        raise ValueError(f"{what} must be (N, C, H, W) or (N, H, W), got ndim {x.dim()} "
                         f"(shape {tuple(x.shape)}){hint}")
    shape = _shape(image_shape)
    if x.dim() < 2:
        raise ValueError(f"{what} need a leading batch dimension (N, ...), got ndim {x.dim()}")
    per_item = math.prod(x.shape[1:])
    if per_item != math.prod(shape):
        raise ValueError(f"{what}: each image has {per_item} values (shape "
                         f"{tuple(x.shape[1:])}) but image_shape {shape} needs "
                         f"{math.prod(shape)}")
    return x.reshape(x.shape[0], *shape)


def checked_images(x: Any, what: str, image_shape: Sequence[int] | None = None) -> Tensor:
    """:func:`as_images`, then refuse non-float dtypes, a different ``image_shape`` (flat
    ``(N, D)`` is reshaped only when D matches), and values that are not finite or not in
    [0, 1]. Messages name ``what``."""
    x = torch.as_tensor(x).detach()
    if x.dtype != torch.uint8 and not torch.is_floating_point(x):
        raise ValueError(f"{what}: dtype {x.dtype} is not float or uint8; give floats in [0, 1]")
    shape = _shape(image_shape) if image_shape is not None else None
    flat_match = shape is not None and x.dim() == 2 and x.shape[1] == math.prod(shape)
    x = as_images(x, shape if flat_match else None, what)
    if shape is not None and tuple(x.shape[1:]) != shape:
        raise ValueError(f"{what}: images are {tuple(x.shape[1:])} but the feature extractor "
                         f"takes {shape}; use the extractor of this dataset")
    if len(x) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: has NaN or infinite values; remove or replace them first")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{what}: values must be in [0, 1], got min {x.min().item():.4g} and max "
                         f"{x.max().item():.4g}; clamp them first (x.clamp(0, 1))")
    return x
