"""Local optimizers by name (torch.optim underneath).

Gradient descent's three forms are the same ``sgd`` optimizer with a different batch size:
full batch (``batch-size=0``), single sample (``batch-size=1``) and mini-batch (anything else).
The registry serves both ``optimizer`` and ``pretrain-optimizer``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from fedtrain.config import TrainConfig
from fedtrain.errors import ConfigError
from fedtrain.registry import Registry

__all__ = ["OPTIMIZERS", "OptimizerFactory", "build_optimizer"]

OptimizerFactory = Callable[[Iterable[nn.Parameter], float, TrainConfig], torch.optim.Optimizer]
"""``(params, lr, cfg) -> optimizer``; ``cfg`` carries ``momentum`` and ``weight-decay``."""

OPTIMIZERS = Registry[OptimizerFactory]("optimizer")


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("momentum")
def _momentum(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("nesterov")
def _nesterov(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.momentum == 0:  # the loader refuses this first; this guards direct callers
        raise ConfigError("optimizer='nesterov' needs momentum > 0; set momentum=0.9")
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adagrad")
def _adagrad(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("rmsprop")
def _rmsprop(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam")
def _adam(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """Return the optimizer ``cfg.optimizer`` over ``params`` at learning rate ``lr``.

    Raises
    ------
    ConfigError
        For an unknown name (naming the choices) or ``nesterov`` without momentum.
    """
    return OPTIMIZERS.get(cfg.optimizer)(params, lr, cfg)
