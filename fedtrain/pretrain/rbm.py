"""Restricted Boltzmann machine on top of one hidden layer, trained with contrastive divergence.

The RBM shares its weight and hidden bias with the MLP's ``hidden[k].linear`` (W: ``(nh, nv)``,
c: ``(nh,)``); the visible bias b lives in ``visible`` (``nn.Linear(nv, 1, bias=False)``, so
Opacus has a per-sample gradient rule for it). CD-k is written as the per-sample surrogate
``F(v0) - F(vk)`` with ``vk`` from k Gibbs steps (no gradient), F the free energy, whose
gradient is exactly the CD-k estimate; so DP-SGD clips true per-sample gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from fedtrain.errors import ConfigError

__all__ = ["RBM"]


class RBM(nn.Module):
    """Bernoulli hidden units over ``bernoulli`` or unit-variance ``gaussian`` visible units."""

    def __init__(self, linear: nn.Linear, visible: str) -> None:
        super().__init__()
        if visible not in ("bernoulli", "gaussian"):
            raise ConfigError(f"rbm-visible={visible!r}: visible units must be 'bernoulli' or 'gaussian'")
        self.linear = linear  # shared with the MLP layer being pretrained
        self.visible = nn.Linear(linear.in_features, 1, bias=False)
        nn.init.zeros_(self.visible.weight)
        self.visible_type = visible

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) per sample, shape ``(B,)``."""
        hidden_term = F.softplus(self.linear(v)).sum(1)
        vis = self.visible(v).squeeze(1)  # v . b
        if self.visible_type == "gaussian":
            return 0.5 * (v**2).sum(1) - vis - hidden_term
        return -vis - hidden_term

    @torch.no_grad()
    def gibbs(self, v: torch.Tensor, k: int) -> torch.Tensor:
        """Run ``k`` steps of block Gibbs sampling from ``v`` and return the visible sample."""
        b = self.visible.weight.squeeze(0)
        for _ in range(k):
            h = torch.bernoulli(torch.sigmoid(self.linear(v)))
            mean = h @ self.linear.weight + b
            v = (
                torch.bernoulli(torch.sigmoid(mean))
                if self.visible_type == "bernoulli"
                else mean + torch.randn_like(mean)
            )
        return v

    def forward(self, v0: torch.Tensor, vk: torch.Tensor) -> torch.Tensor:
        """Per-sample CD surrogate ``F(v0) - F(vk)``, shape ``(B,)``."""
        return self.free_energy(v0) - self.free_energy(vk)

    @torch.no_grad()
    def reconstruction_error(self, v: torch.Tensor) -> torch.Tensor:
        """Per-sample squared error of the mean-field reconstruction (for monitoring)."""
        h = torch.sigmoid(self.linear(v))
        mean = h @ self.linear.weight + self.visible.weight.squeeze(0)
        recon = torch.sigmoid(mean) if self.visible_type == "bernoulli" else mean
        return ((recon - v) ** 2).sum(1)
