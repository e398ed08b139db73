"""Flower strategies by name, configured from the run config.

These are Flower's own Message-API classes (``flwr.serverapp.strategy``); fedtrain only maps
config keys to their arguments. FedProx's proximal term is applied by fedtrain's clients,
which read ``proximal-mu`` from the train config the strategy sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp import strategy as fl

from fedtrain.config import RunConfig

__all__ = ["STRATEGIES", "build_strategy"]


def _common(cfg: RunConfig) -> dict[str, Any]:
    s = cfg.strategy
    n = cfg.partition.num_clients
    return {
        "fraction_train": s.fraction_train,
        "fraction_evaluate": s.fraction_evaluate,
        "min_train_nodes": min(s.min_clients, n),
        "min_evaluate_nodes": min(s.min_clients, n),
        "min_available_nodes": min(s.min_clients, n),
        # User-level DP accounting needs equal client weights (clients send dp-weight = 1).
        "weighted_by_key": "dp-weight" if cfg.user_dp else "num-examples",
    }


STRATEGIES: dict[str, Callable[[RunConfig], fl.Strategy]] = {
    "fedavg": lambda c: fl.FedAvg(**_common(c)),
    "fedprox": lambda c: fl.FedProx(**_common(c), proximal_mu=c.strategy.proximal_mu),
    "fedadam": lambda c: fl.FedAdam(
        **_common(c), eta=c.strategy.server_eta, eta_l=c.train.learning_rate, tau=c.strategy.server_tau
    ),
    "fedyogi": lambda c: fl.FedYogi(
        **_common(c), eta=c.strategy.server_eta, eta_l=c.train.learning_rate, tau=c.strategy.server_tau
    ),
    "fedavgm": lambda c: fl.FedAvgM(
        **_common(c), server_learning_rate=c.strategy.server_learning_rate, server_momentum=c.strategy.server_momentum
    ),
    "fedmedian": lambda c: fl.FedMedian(**_common(c)),
    "fedtrimmedavg": lambda c: fl.FedTrimmedAvg(**_common(c), beta=c.strategy.trimmed_beta),
    "krum": lambda c: fl.Krum(**_common(c), num_malicious_nodes=c.strategy.krum_malicious),
}


def build_strategy(cfg: RunConfig) -> fl.Strategy:
    """Return the Flower strategy named by ``cfg.strategy.strategy``."""
    name = cfg.strategy.strategy
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](cfg)
