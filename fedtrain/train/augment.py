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

_STREAM = 0x6175_6D65  # separates the augmentations' stream from the call's other draws of the same seed


def augment_images(
    x: torch.Tensor, *, max_shift: float, max_rotation: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random shift (pixels) and rotation (degrees) of each image in ``x`` of shape ``(B, C, H, W)``."""
    b, _, h, w = x.shape
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(max_rotation)
    # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size.
    shift = int(max_shift)
    tx = torch.randint(-shift, shift + 1, (b,), generator=generator).to(x.dtype) * 2 / w
    ty = torch.randint(-shift, shift + 1, (b,), generator=generator).to(x.dtype) * 2 / h
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
    # Its own stream: drawing from torch's default generator would move the DP noise drawn after it.
    generator: torch.Generator | None = None

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
        copies = x.repeat_interleave(k, 0)
        xs = augment_images(copies, max_shift=self.max_shift, max_rotation=self.max_rotation, generator=self.generator)
        return self.inner(module, xs, y.repeat_interleave(k, 0))


def augmented(objective: Objective, settings: TrainConfig, *, seed: int = 0) -> Objective:
    """A supervised ``objective`` on augmented batches when ``augment`` is on, else ``objective`` itself.

    ``seed`` seeds the augmentations' own generator (the call's seed: data-independent, so it may be public).
    """
    if settings.augment == "none" or not objective.supervised:
        return objective
    rotation = settings.augment_rotation if settings.augment == "shift-rotate" else 0.0
    generator = torch.Generator().manual_seed(seed ^ _STREAM)
    return Augmented(objective, settings.augment_multiplicity, settings.augment_shift, rotation, generator)


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
