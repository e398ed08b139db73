"""Loss and penalty terms of local training."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from fedtrain.config import TrainConfig

__all__ = ["build_criterion", "l1_penalty", "proximal_term"]


def build_criterion(cfg: TrainConfig, labels: np.ndarray, num_classes: int) -> nn.Module:
    """Cross-entropy with optional label smoothing and ``balanced`` class weights.

    Balanced weights are ``n / (k * count_c)`` over the classes the client holds; classes it
    does not hold get weight 1 (they never appear in its loss).
    """
    weight = None
    if cfg.class_weights == "balanced":
        present = np.unique(labels)
        w = np.ones(num_classes, dtype=np.float32)
        w[present] = compute_class_weight("balanced", classes=present, y=labels)
        weight = torch.from_numpy(w)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of absolute weights (biases and norm parameters excluded)."""
    return sum(
        p.abs().sum() for n, p in model.named_parameters() if p.requires_grad and n.endswith("weight") and p.dim() > 1
    )


def proximal_term(model: nn.Module, global_params: list[torch.Tensor]) -> torch.Tensor:
    """FedProx's ``1/2 * |w - w_global|^2`` (Li et al. 2020, arXiv:1812.06127); the caller scales by mu."""
    return 0.5 * sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))
