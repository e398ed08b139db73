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
from fedtrain.registry import Registry

__all__ = ["STRATEGIES", "StrategyFactory", "build_strategy", "common_arguments"]

StrategyFactory = Callable[[RunConfig], fl.Strategy]

STRATEGIES = Registry[StrategyFactory]("strategy")


def common_arguments(cfg: RunConfig) -> dict[str, Any]:
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


@STRATEGIES.register("fedavg")
def _fedavg(c: RunConfig) -> fl.Strategy:
    return fl.FedAvg(**common_arguments(c))


@STRATEGIES.register("fedprox")
def _fedprox(c: RunConfig) -> fl.Strategy:
    return fl.FedProx(**common_arguments(c), proximal_mu=c.strategy.proximal_mu)


@STRATEGIES.register("fedadam")
def _fedadam(c: RunConfig) -> fl.Strategy:
    return fl.FedAdam(
        **common_arguments(c), eta=c.strategy.server_eta, eta_l=c.train.learning_rate, tau=c.strategy.server_tau
    )


@STRATEGIES.register("fedyogi")
def _fedyogi(c: RunConfig) -> fl.Strategy:
    return fl.FedYogi(
        **common_arguments(c), eta=c.strategy.server_eta, eta_l=c.train.learning_rate, tau=c.strategy.server_tau
    )


@STRATEGIES.register("fedavgm")
def _fedavgm(c: RunConfig) -> fl.Strategy:
    return fl.FedAvgM(
        **common_arguments(c),
        server_learning_rate=c.strategy.server_learning_rate,
        server_momentum=c.strategy.server_momentum,
    )


@STRATEGIES.register("fedmedian")
def _fedmedian(c: RunConfig) -> fl.Strategy:
    return fl.FedMedian(**common_arguments(c))


@STRATEGIES.register("fedtrimmedavg")
def _fedtrimmedavg(c: RunConfig) -> fl.Strategy:
    return fl.FedTrimmedAvg(**common_arguments(c), beta=c.strategy.trimmed_beta)


@STRATEGIES.register("krum")
def _krum(c: RunConfig) -> fl.Strategy:
    return fl.Krum(**common_arguments(c), num_malicious_nodes=c.strategy.krum_malicious)


def build_strategy(cfg: RunConfig) -> fl.Strategy:
    """Return the Flower strategy named by ``cfg.strategy.strategy``.

    Raises
    ------
    ConfigError
        For an unknown name (naming the choices).
    """
    return STRATEGIES.get(cfg.strategy.strategy)(cfg)
