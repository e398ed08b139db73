"""The trainable part of one pretraining phase: layer k plus its decoder or visible bias.

:class:`LayerObjective` wraps the model: lower layers run frozen under ``no_grad``, layer k
(and its decoder or RBM visible bias) are trainable, and ``forward(x)`` returns a per-sample
loss of shape ``(B,)``. Reconstruction losses are summed over features, not averaged: averaging
would shrink every per-sample gradient by the feature count, and with DP-SGD's fixed clipping
norm the noise would drown the signal.
"""

from __future__ import annotations

import torch
from torch import nn

from fedtrain.config import RunConfig
from fedtrain.models import MLP
from fedtrain.pretrain.rbm import RBM

__all__ = ["AUX_PREFIX", "METHODS", "LayerObjective", "visible_type"]

AUX_PREFIX = "pretrain_aux."  # array keys of the decoder / visible bias, dropped after the phase
METHODS = ("autoencoder", "denoising", "rbm")


def visible_type(cfg: RunConfig, layer: int) -> str:
    """RBM visible units for ``layer``: from ``normalize`` at the input, from ``activation`` above."""
    if cfg.pretrain.rbm_visible != "auto":
        return cfg.pretrain.rbm_visible
    if layer == 0:
        return "bernoulli" if cfg.data.normalize in ("minmax", "range") else "gaussian"
    return "bernoulli" if cfg.model.activation == "sigmoid" else "gaussian"


class LayerObjective(nn.Module):
    """Per-sample pretraining loss of hidden layer ``layer`` of ``model``."""

    def __init__(self, model: MLP, layer: int, cfg: RunConfig) -> None:
        super().__init__()
        self.model, self.layer = model, layer
        self.method = cfg.pretrain.pretrain_method
        self.corruption, self.k = cfg.pretrain.corruption, cfg.pretrain.rbm_k
        block = model.hidden[layer]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in block.parameters():
            p.requires_grad_(True)
        if self.method == "rbm":
            self.aux: nn.Module = RBM(block.linear, visible_type(cfg, layer))
        else:
            self.aux = nn.Linear(block.linear.out_features, block.linear.in_features)  # untied decoder

    def aux_state(self) -> dict[str, torch.Tensor]:
        """Decoder / visible-bias arrays under :data:`AUX_PREFIX` (the RBM's shared weights excluded)."""
        own = {k: v for k, v in self.aux.state_dict().items() if not k.startswith("linear.")}
        return {AUX_PREFIX + k: v for k, v in own.items()}

    def load_aux_state(self, arrays: dict[str, torch.Tensor]) -> None:
        own = {k[len(AUX_PREFIX) :]: v for k, v in arrays.items() if k.startswith(AUX_PREFIX)}
        if own:
            self.aux.load_state_dict(own, strict=False)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Features of the frozen layers below, ``(B, nv)``."""
        with torch.no_grad():
            return self.model.features(x, depth=self.layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.inputs(x)
        if self.method == "rbm":
            return self.aux(v, self.aux.gibbs(v, self.k))
        source = v
        if self.method == "denoising":
            source = v * (torch.rand_like(v) >= self.corruption)  # masking noise
        # The block's own activation: dropout off, a residual skip is not part of the encoder.
        code = self.model.hidden[self.layer].act(self.model.hidden[self.layer].linear(source))
        return ((self.aux(code) - v) ** 2).sum(1)

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample squared reconstruction error of clean inputs (all methods), ``(B,)``."""
        v = self.inputs(x)
        if self.method == "rbm":
            return self.aux.reconstruction_error(v)
        code = self.model.hidden[self.layer].act(self.model.hidden[self.layer].linear(v))
        return ((self.aux(code) - v) ** 2).sum(1)
