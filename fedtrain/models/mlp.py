"""Multi-layer perceptron whose hidden layers are addressable one by one."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from fedtrain.models.layers import make_activation

__all__ = ["MLP", "DenseBlock"]


class DenseBlock(nn.Module):
    """``dropout(act(linear(x)))``, plus ``x`` when ``residual`` and the widths match."""

    def __init__(self, in_features: int, out_features: int, *, activation: str, dropout: float, residual: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.residual = residual and in_features == out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.act(self.linear(x)))
        return x + out if self.residual else out


class MLP(nn.Module):
    """``flatten -> hidden[0] -> ... -> hidden[L-1] -> head``.

    ``hidden[k]`` is the unit that greedy layer-wise pretraining trains, freezes and stacks.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden_sizes: list[int],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        widths = [math.prod(input_shape), *hidden_sizes]
        self.hidden = nn.ModuleList(
            DenseBlock(a, b, activation=activation, dropout=dropout, residual=residual)
            for a, b in itertools.pairwise(widths)
        )
        self.head = nn.Linear(widths[-1], num_classes)

    def features(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Output of the first ``depth`` hidden layers (all of them by default)."""
        h = x.flatten(1)
        for block in self.hidden[:depth]:
            h = block(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
