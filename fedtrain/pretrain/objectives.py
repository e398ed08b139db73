"""The trainable part of one pretraining phase: layer k plus its decoder or visible bias.

:class:`LayerObjective` wraps the model: lower layers run frozen under ``no_grad``, layer k
(and its decoder or RBM visible bias) are trainable, and ``forward(x)`` returns a per-sample
loss of shape ``(B,)``. What the loss is comes from the method named by ``pretrain-method``
(:data:`METHODS`, one file per method in :mod:`fedtrain.pretrain.methods`).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from fedtrain.config import RunConfig
from fedtrain.models import MLP
from fedtrain.models.mlp import DenseBlock
from fedtrain.pretrain.methods import METHODS, PretrainMethod, visible_type

__all__ = ["AUX_PREFIX", "METHODS", "LayerObjective", "visible_type"]

AUX_PREFIX = "pretrain_aux."  # array keys of the decoder / visible bias, dropped after the phase


class LayerObjective(nn.Module):
    """Per-sample pretraining loss of hidden layer ``layer`` of ``model``.

    Raises
    ------
    ConfigError
        For an unknown ``pretrain-method`` (naming the choices).
    """

    model: MLP

    def __init__(self, model: MLP, layer: int, cfg: RunConfig) -> None:
        super().__init__()
        method = METHODS.get(cfg.pretrain.pretrain_method)
        # Held, not registered: the method registers what it trains, so each trainable module is
        # reached once (Opacus would count the per-sample gradients of a shared module twice).
        object.__setattr__(self, "model", model)
        self.layer = layer
        block = cast(DenseBlock, model.hidden[layer])
        for p in model.parameters():
            p.requires_grad_(False)
        for p in block.parameters():
            p.requires_grad_(True)
        self.method: PretrainMethod = method(block, layer, cfg)

    def train(self, mode: bool = True) -> LayerObjective:
        """Set the mode of the method and of the wrapped model (its dropout shapes the inputs)."""
        super().train(mode)
        self.model.train(mode)
        return self

    def aux_state(self) -> dict[str, torch.Tensor]:
        """Decoder / visible-bias arrays under :data:`AUX_PREFIX` (the RBM's shared weights excluded)."""
        return {AUX_PREFIX + k: v for k, v in self.method.aux_state().items()}

    def load_aux_state(self, arrays: dict[str, torch.Tensor]) -> None:
        self.method.load_aux_state({k[len(AUX_PREFIX) :]: v for k, v in arrays.items() if k.startswith(AUX_PREFIX)})

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Features of the frozen layers below, ``(B, nv)``."""
        with torch.no_grad():
            return self.model.features(x, depth=self.layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.loss(self.inputs(x))

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample squared reconstruction error of clean inputs (all methods), ``(B,)``."""
        return self.method.reconstruction_error(self.inputs(x))
