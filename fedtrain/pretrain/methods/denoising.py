"""Denoising autoencoder pretraining (Vincent et al. 2008): reconstruct the clean input from a corrupted one."""

from __future__ import annotations

import torch

from fedtrain.config import RunConfig
from fedtrain.models.mlp import DenseBlock
from fedtrain.pretrain.methods.autoencoder import Autoencoder
from fedtrain.pretrain.methods.base import METHODS

__all__ = ["DenoisingAutoencoder"]


@METHODS.register("denoising")
class DenoisingAutoencoder(Autoencoder):
    """An :class:`Autoencoder` whose training input has a share ``corruption`` of features set to zero."""

    def __init__(self, block: DenseBlock, layer: int, cfg: RunConfig) -> None:
        super().__init__(block, layer, cfg)
        self.corruption = cfg.pretrain.corruption

    def corrupt(self, v: torch.Tensor) -> torch.Tensor:
        return v * (torch.rand_like(v) >= self.corruption)  # masking noise
