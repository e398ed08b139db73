"""Multinomial logistic regression: the model with the fewest parameters, which suits DP-SGD at small epsilon."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LinearModel"]


class LinearModel(nn.Module):
    """``flatten -> head``: one affine map from the inputs to the class logits.

    Under DP-SGD the noise added to each step has the same norm per coordinate whatever the model, so a
    model with fewer parameters keeps more signal per unit of noise (Tramer & Boneh 2021 found linear
    models on good features beat deep ones at small epsilon).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))
