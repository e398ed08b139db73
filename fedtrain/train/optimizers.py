"""Local optimizers by name (torch.optim underneath).

Gradient descent's three forms are the same ``sgd`` optimizer with a different batch size:
full batch (``batch-size=0``), single sample (``batch-size=1``) and mini-batch (anything else).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from fedtrain.config import TrainConfig

__all__ = ["OPTIMIZERS", "build_optimizer"]

_Factory = Callable[[Iterable[nn.Parameter], float, TrainConfig], torch.optim.Optimizer]

OPTIMIZERS: dict[str, _Factory] = {
    "sgd": lambda p, lr, c: torch.optim.SGD(p, lr=lr, weight_decay=c.weight_decay),
    "momentum": lambda p, lr, c: torch.optim.SGD(p, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "nesterov": lambda p, lr, c: torch.optim.SGD(
        p, lr=lr, momentum=c.momentum, nesterov=True, weight_decay=c.weight_decay
    ),
    "adagrad": lambda p, lr, c: torch.optim.Adagrad(p, lr=lr, weight_decay=c.weight_decay),
    "rmsprop": lambda p, lr, c: torch.optim.RMSprop(p, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adam": lambda p, lr, c: torch.optim.Adam(p, lr=lr, weight_decay=c.weight_decay),
    "adamw": lambda p, lr, c: torch.optim.AdamW(p, lr=lr, weight_decay=c.weight_decay),
}


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """Return the optimizer ``cfg.optimizer`` over ``params`` at learning rate ``lr``."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if cfg.optimizer == "nesterov" and cfg.momentum == 0:
        raise ValueError("optimizer='nesterov' needs momentum > 0; set momentum=0.9")
    return OPTIMIZERS[cfg.optimizer](params, lr, cfg)
