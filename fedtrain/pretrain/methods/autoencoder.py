"""Autoencoder pretraining: layer k is the encoder, an untied linear decoder reconstructs its input."""

from __future__ import annotations

import torch
from torch import nn

from fedtrain.config import RunConfig
from fedtrain.models.mlp import DenseBlock
from fedtrain.pretrain.methods.base import METHODS, PretrainMethod

__all__ = ["Autoencoder"]


@METHODS.register("autoencoder")
class Autoencoder(PretrainMethod):
    """Squared error of ``decoder(act(linear(v)))`` against ``v``, summed over features."""

    def __init__(self, block: DenseBlock, layer: int, cfg: RunConfig) -> None:
        super().__init__(block, layer, cfg)
        self.block = block
        self.head = nn.Linear(block.linear.out_features, block.linear.in_features)  # untied decoder

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        # The block's own activation: dropout off, a residual skip is not part of the encoder.
        return self.block.act(self.block.linear(v))

    def corrupt(self, v: torch.Tensor) -> torch.Tensor:
        """The encoder's input while training; the clean input here."""
        return v

    def loss(self, v: torch.Tensor) -> torch.Tensor:
        return ((self.head(self.encode(self.corrupt(v))) - v) ** 2).sum(1)

    def reconstruction_error(self, v: torch.Tensor) -> torch.Tensor:
        return ((self.head(self.encode(v)) - v) ** 2).sum(1)
