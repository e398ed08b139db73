"""Loss and penalty terms of local training.

Supervised losses are registered by name (``loss``); each is an ``nn.Module`` over
``(logits, labels)`` whose ``reduction`` attribute (``mean``, ``sum`` or ``none``) is read at
call time, because Opacus' ghost clipping switches it to ``none`` to get per-sample losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from fedtrain.config import TrainConfig
from fedtrain.errors import ConfigError
from fedtrain.registry import Registry

__all__ = [
    "LOSSES",
    "GeneralizedCrossEntropy",
    "LossFactory",
    "build_criterion",
    "class_weight_vector",
    "l1_penalty",
    "proximal_term",
]

LossFactory = Callable[[TrainConfig, torch.Tensor | None], nn.Module]
"""``(cfg, class_weight) -> criterion``; ``class_weight`` is ``(num_classes,)`` or None."""

LOSSES = Registry[LossFactory]("loss")


class GeneralizedCrossEntropy(nn.Module):
    """Generalized cross-entropy ``(1 - p_y^q) / q`` (Zhang & Sabuncu 2018, arXiv:1805.07836).

    A noise-robust loss for noisy labels: ``q -> 0`` is cross-entropy, ``q = 1`` is the mean
    absolute error of the softmax. Its gradient is cross-entropy's weighted by ``p_y^q``, so
    samples the model finds implausible (often mislabelled ones) pull less. With label
    smoothing the target is soft and the loss is ``sum_c t_c (1 - p_c^q) / q``; with class
    weights each sample is weighed by its class, and ``mean`` divides by the summed weights
    (as ``nn.CrossEntropyLoss`` does).
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        q: float = 0.7,
        *,
        weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if not 0.0 < q <= 1.0:
            raise ConfigError(f"gce-q={q} must be in (0, 1]; 0.7 is the paper's default")
        self.q, self.label_smoothing, self.reduction = q, label_smoothing, reduction
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # p^q computed as exp(q log p): stable for tiny probabilities.
        per_class = (1.0 - torch.exp(self.q * F.log_softmax(logits, dim=1))) / self.q
        k = logits.shape[1]
        soft = F.one_hot(target, k).to(logits.dtype)
        if self.label_smoothing > 0:
            soft = soft * (1.0 - self.label_smoothing) + self.label_smoothing / k
        loss = (soft * per_class).sum(1)
        w = self.weight[target] if self.weight is not None else None
        if w is not None:
            loss = loss * w
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.sum() / w.sum() if w is not None else loss.mean()


@LOSSES.register("cross-entropy")
def _cross_entropy(cfg: TrainConfig, weight: torch.Tensor | None) -> nn.Module:
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


@LOSSES.register("gce")
def _gce(cfg: TrainConfig, weight: torch.Tensor | None) -> nn.Module:
    return GeneralizedCrossEntropy(cfg.gce_q, weight=weight, label_smoothing=cfg.label_smoothing)


def class_weight_vector(cfg: TrainConfig, labels: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """``balanced`` class weights ``n / (k * count_c)`` over the classes the client holds, else None.

    Classes the client does not hold get weight 1 (they never appear in its loss).
    """
    if cfg.class_weights != "balanced":
        return None
    present = np.unique(labels)
    w = np.ones(num_classes, dtype=np.float32)
    from sklearn.utils.class_weight import compute_class_weight  # only for class-weights=balanced

    w[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.from_numpy(w)


def build_criterion(cfg: TrainConfig, labels: np.ndarray, num_classes: int) -> nn.Module:
    """The loss ``cfg.loss`` with ``cfg``'s label smoothing and class weights.

    Raises
    ------
    ConfigError
        For an unknown loss name (naming the choices).
    """
    factory = LOSSES.get(cfg.loss)
    return factory(cfg, class_weight_vector(cfg, labels, num_classes))


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of absolute weights (biases and norm parameters excluded)."""
    return cast(
        torch.Tensor,
        sum(
            p.abs().sum()
            for n, p in model.named_parameters()
            if p.requires_grad and n.endswith("weight") and p.dim() > 1
        ),
    )


def proximal_term(model: nn.Module, global_params: list[torch.Tensor]) -> torch.Tensor:
    """FedProx's ``1/2 * |w - w_global|^2`` (Li et al. 2020, arXiv:1812.06127); the caller scales by mu."""
    return cast(
        torch.Tensor, 0.5 * sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))
    )
