"""DP-SGD for many clients of a linear-layer model without per-sample gradients (ghost clipping, stacked).

Under DP-SGD, :mod:`fedtrain.train.batched` needs each client's sum of clipped per-sample gradients. For a
model made of linear layers and parameter-free activations (the MLP and the linear model), a sample's
weight gradient in a layer is ``delta_i a_i^T`` (``a_i`` the layer's input, ``delta_i`` the gradient of the
sample's loss at the layer's output), whose norm is ``|delta_i| |a_i|``. One backward pass to the layers'
outputs gives every ``delta_i`` (the samples' losses are independent), and the clipped sum is one batched
matmul, ``(f * delta)^T a``. Same clipping as Opacus' per-sample norms (its ``ghost`` mode; Li et al. 2022),
without the ``(K, B, parameters)`` tensor that ``vmap(grad)`` writes: at 100 clients of a 17k-parameter
MLP that tensor is about 190 MB a step. ``fedtrain.export.gradient_graph`` does the same for one client
inside an ONNX graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vmap

from fedtrain.config import TrainConfig
from fedtrain.models import MLP, LinearModel
from fedtrain.models.mlp import DenseBlock
from fedtrain.train.functional import per_sample_loss

__all__ = ["DenseLayout", "StepFn", "dense_layout", "ghost_private_step"]

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class DenseLayout:
    """The model as a chain: ``(linear prefix, activation, residual)`` per hidden block, then the head."""

    blocks: tuple[tuple[str, nn.Module, bool], ...]
    head: str


def dense_layout(module: nn.Module) -> DenseLayout | None:
    """The layout of an MLP or linear model whose only parameters are its linear layers' (None otherwise).

    None for a CNN, for a learnable activation (PReLU's slope is not a linear layer's) and for dropout (the
    exchange refuses dropout; a forward here draws no masks).
    """
    if isinstance(module, LinearModel):
        return DenseLayout((), "head.")
    if not isinstance(module, MLP):
        return None
    blocks: list[tuple[str, nn.Module, bool]] = []
    for j, block in enumerate(module.hidden):
        if not isinstance(block, DenseBlock) or not isinstance(block.drop, nn.Identity):
            return None
        if any(True for _ in block.act.parameters()):
            return None
        blocks.append((f"hidden.{j}.linear.", block.act, bool(block.residual)))
    return DenseLayout(tuple(blocks), "head.")


Layer = tuple[str, torch.Tensor, torch.Tensor]  # (parameter prefix, the layer's input, its output)


def _linear(params: Params, prefix: str, h: torch.Tensor, layers: list[Layer]) -> torch.Tensor:
    """``h`` (K, B, in) through layer ``prefix``: stacked (K, out, in) weights, or one shared frozen weight."""
    w, b = params[prefix + "weight"], params[prefix + "bias"]
    if w.dim() == 2:  # frozen (freeze-depth): the same weights for every client, no gradient wanted
        return torch.nn.functional.linear(h, w, b)
    z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
    layers.append((prefix, h, z))
    return z


def _forward(layout: DenseLayout, params: Params, x: torch.Tensor) -> tuple[torch.Tensor, list[Layer]]:
    """Logits ``(K, B, C)`` and each trainable layer's input and output, as ``MLP.forward`` computes them."""
    layers: list[Layer] = []
    h = x.flatten(2)
    for prefix, act, residual in layout.blocks:
        out = act(_linear(params, prefix, h, layers))
        h = h + out if residual else out
    return _linear(params, layout.head, h, layers), layers


StepFn = Callable[[Params, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[Params, torch.Tensor]]


def ghost_private_step(layout: DenseLayout, fixed: Params, cfg: TrainConfig, max_grad_norm: float) -> StepFn:
    """``step(params, x, y, mask, class_weight) -> (clipped sums, batch loss)``, per client.

    The same contract as ``fedtrain.train.batched``'s per-sample step: each sample's gradient is scaled as
    Opacus' hooks see it (the mean loss's backprops times the batch size), clipped to ``max_grad_norm`` over
    the trainable parameters, and summed over the client's real (unmasked) samples.
    """
    losses = vmap(lambda logits, y, w: per_sample_loss(logits, y, w, cfg))

    def step(
        p: Params, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, w: torch.Tensor
    ) -> tuple[Params, torch.Tensor]:
        leaves = {n: t.detach().requires_grad_(True) for n, t in p.items()}
        logits, layers = _forward(layout, {**leaves, **fixed}, x)
        v, d = losses(logits, y, w)  # (K, B) each
        deltas = torch.autograd.grad(v.sum(), [z for _, _, z in layers])
        den = (d.detach() * m).sum(1).clamp_min(1e-12)
        scale = m * (m.sum(1) / den).unsqueeze(1)
        sq = torch.zeros_like(m)
        inputs = [a.detach() for _, a, _ in layers]
        for a, delta in zip(inputs, deltas, strict=True):
            dd = delta.square().sum(2)
            sq = sq + dd * a.square().sum(2) + dd  # weight and bias of a trainable layer
        factor = (max_grad_norm / (scale * sq.sqrt() + 1e-6)).clamp(max=1.0) * scale
        sums: Params = {}
        for (prefix, _, _), a, delta in zip(layers, inputs, deltas, strict=True):
            fd = delta * factor.unsqueeze(2)
            sums[prefix + "weight"] = torch.bmm(fd.transpose(1, 2), a)
            sums[prefix + "bias"] = fd.sum(1)
        return {n: sums[n] for n in p}, (v.detach() * m).sum(1) / den

    return step
