"""Data augmentation for image-shaped inputs: small random shifts and rotations, with multiplicity.

``augment=shift`` moves each image by up to ``augment-shift`` pixels in each direction, ``shift-rotate``
also turns it by up to ``augment-rotation`` degrees (one affine resampling, border pixels repeated:
the course notes' augmentation for digits). ``augment-multiplicity`` k draws k augmentations of every
record in a batch. Without DP that is k times the batch; under DP-SGD the k per-sample gradients of one
record are averaged *before* clipping (:func:`fold_grad_samples`), so a record's influence is still one
clipped gradient and the accounting is unchanged (De et al. 2022, "augmentation multiplicity").
Draws come from torch's generator, which the local loop seeds for each call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional

from fedtrain.config import TrainConfig
from fedtrain.errors import ConfigError

if TYPE_CHECKING:
    from fedtrain.train.loop import Objective

__all__ = ["Augmented", "augment_images", "augmented", "fold_grad_samples"]


def augment_images(x: torch.Tensor, *, max_shift: float, max_rotation: float) -> torch.Tensor:
    """A random shift (pixels) and rotation (degrees) of each image in ``x`` of shape ``(B, C, H, W)``."""
    b, _, h, w = x.shape
    angle = (torch.rand(b) * 2 - 1) * math.radians(max_rotation)
    # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size.
    tx = torch.randint(-int(max_shift), int(max_shift) + 1, (b,)).to(x.dtype) * 2 / w
    ty = torch.randint(-int(max_shift), int(max_shift) + 1, (b,)).to(x.dtype) * 2 / h
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = functional.affine_grid(theta, list(x.shape), align_corners=False)
    return functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class Augmented:
    """An objective on ``k`` augmentations of every record of the batch: ``(B, ...) -> (B * k, ...)``.

    Row ``i * k + j`` is augmentation ``j`` of record ``i``, the order :func:`fold_grad_samples` expects.
    """

    inner: Objective
    multiplicity: int
    max_shift: float
    max_rotation: float

    @property
    def supervised(self) -> bool:
        return self.inner.supervised

    def __call__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError(
                f"augment needs image inputs of shape (channels, height, width); the data has shape "
                f"{tuple(x.shape[1:])}: use augment='none' for tabular data"
            )
        k = self.multiplicity
        xs = augment_images(x.repeat_interleave(k, 0), max_shift=self.max_shift, max_rotation=self.max_rotation)
        return self.inner(module, xs, y.repeat_interleave(k, 0))


def augmented(objective: Objective, settings: TrainConfig) -> Objective:
    """A supervised ``objective`` on augmented batches when ``augment`` is on, else ``objective`` itself."""
    if settings.augment == "none" or not objective.supervised:
        return objective
    rotation = settings.augment_rotation if settings.augment == "shift-rotate" else 0.0
    return Augmented(objective, settings.augment_multiplicity, settings.augment_shift, rotation)


def fold_grad_samples(params: list[nn.Parameter], multiplicity: int) -> None:
    """Average each record's ``multiplicity`` per-sample gradients (Opacus' ``grad_sample``) into one, in place.

    Called before the privacy engine clips: clipping then bounds each *record's* averaged gradient.
    """
    if multiplicity <= 1:
        return
    for p in params:
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            continue
        if isinstance(gs, list):  # several forward passes in one step: Opacus keeps a list
            gs = torch.cat(gs, 0)
        n = gs.shape[0]
        if n % multiplicity:
            raise RuntimeError(f"{n} per-sample gradients do not split into groups of {multiplicity}")
        p.grad_sample = gs.view(n // multiplicity, multiplicity, *gs.shape[1:]).mean(1)  # type: ignore[attr-defined]
