"""RBM pretraining: layer k's weight and bias are an RBM's, trained with contrastive divergence (CD-k)."""

from __future__ import annotations

import torch

from fedtrain.config import RunConfig
from fedtrain.models.mlp import DenseBlock
from fedtrain.pretrain.methods.base import METHODS, PretrainMethod
from fedtrain.pretrain.rbm import RBM

__all__ = ["RBMMethod", "visible_type"]


def visible_type(cfg: RunConfig, layer: int) -> str:
    """RBM visible units for ``layer``: from ``normalize`` at the input, from ``activation`` above."""
    if cfg.pretrain.rbm_visible != "auto":
        return cfg.pretrain.rbm_visible
    if layer == 0:
        return "bernoulli" if cfg.data.normalize in ("minmax", "range") else "gaussian"
    return "bernoulli" if cfg.model.activation == "sigmoid" else "gaussian"


@METHODS.register("rbm")
class RBMMethod(PretrainMethod):
    """The CD-k surrogate ``F(v) - F(v_k)`` of an :class:`~fedtrain.pretrain.rbm.RBM` on ``block.linear``.

    The head is the RBM; it holds the block's linear (shared weights), and its own array is the
    visible bias. The block is not registered here beside it, so its linear is reached once.
    """

    def __init__(self, block: DenseBlock, layer: int, cfg: RunConfig) -> None:
        super().__init__(block, layer, cfg)
        self.head: RBM = RBM(block.linear, visible_type(cfg, layer))
        self.k = cfg.pretrain.rbm_k

    def loss(self, v: torch.Tensor) -> torch.Tensor:
        return self.head(v, self.head.gibbs(v, self.k))

    def reconstruction_error(self, v: torch.Tensor) -> torch.Tensor:
        return self.head.reconstruction_error(v)
