"""Small CNN with GroupNorm, which Opacus accepts (it rejects BatchNorm)."""

from __future__ import annotations

import torch
from torch import nn

from fedtrain.models.layers import make_activation

__all__ = ["ConvBlock", "SmallCNN"]


class ConvBlock(nn.Module):
    """``conv3x3 -> GroupNorm -> act -> maxpool2`` (pooling only while the map is >= 4 wide)."""

    def __init__(self, in_channels: int, out_channels: int, *, groups: int, activation: str, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(groups, out_channels)
        self.act = make_activation(activation)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class SmallCNN(nn.Module):
    """``hidden[0..L-1]`` convolution blocks, then ``flatten -> dropout -> head``."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: list[int],
        *,
        groups: int = 4,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_ch, height, width = input_shape
        blocks = []
        for ch in channels:
            pool = min(height, width) >= 4
            blocks.append(ConvBlock(in_ch, ch, groups=groups, activation=activation, pool=pool))
            in_ch = ch
            if pool:
                height, width = height // 2, width // 2
        self.hidden = nn.ModuleList(blocks)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(in_ch * height * width, num_classes)

    def features(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Output of the first ``depth`` convolution blocks (all of them by default)."""
        for block in self.hidden[:depth]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x).flatten(1)))
