"""Learning-rate schedules over server rounds.

In federated training the natural clock is the server round: the server computes the
learning rate of round ``r`` (1-based) and sends it to every client in the train config, so
all clients of a round use the same rate however many local steps they take.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedtrain.config import TrainConfig
from fedtrain.registry import Registry

__all__ = ["SCHEDULES", "Schedule", "learning_rate"]

Schedule = Callable[[int, int, TrainConfig], float]
"""``(round, total_rounds, cfg) -> multiplier`` of the base learning rate (round is 1-based)."""

SCHEDULES = Registry[Schedule]("lr-schedule")


@SCHEDULES.register("constant")
def _constant(r: int, n: int, cfg: TrainConfig) -> float:
    return 1.0


@SCHEDULES.register("step")
def _step(r: int, n: int, cfg: TrainConfig) -> float:
    return cfg.lr_gamma ** ((r - 1) // cfg.lr_step_rounds)


@SCHEDULES.register("exponential")
def _exponential(r: int, n: int, cfg: TrainConfig) -> float:
    return cfg.lr_gamma ** (r - 1)


@SCHEDULES.register("cosine")
def _cosine(r: int, n: int, cfg: TrainConfig) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * (r - 1) / max(n, 1)))


@SCHEDULES.register("warmup")
def _warmup(r: int, n: int, cfg: TrainConfig) -> float:
    return min(1.0, r / (cfg.warmup_rounds + 1))


def learning_rate(cfg: TrainConfig, server_round: int, total_rounds: int) -> float:
    """Learning rate for ``server_round`` (1-based) of ``total_rounds``."""
    return cfg.learning_rate * SCHEDULES.get(cfg.lr_schedule)(server_round, total_rounds, cfg)
