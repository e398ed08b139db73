"""Learning-rate schedules over server rounds.

In federated training the natural clock is the server round: the server computes the
learning rate of round ``r`` (1-based) and sends it to every client in the train config, so
all clients of a round use the same rate however many local steps they take.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedtrain.config import TrainConfig

__all__ = ["SCHEDULES", "learning_rate"]

# Each maps (round, total_rounds, cfg) to a multiplier of the base learning rate.
SCHEDULES: dict[str, Callable[[int, int, TrainConfig], float]] = {
    "constant": lambda r, n, c: 1.0,
    "step": lambda r, n, c: c.lr_gamma ** ((r - 1) // c.lr_step_rounds),
    "exponential": lambda r, n, c: c.lr_gamma ** (r - 1),
    "cosine": lambda r, n, c: 0.5 * (1.0 + math.cos(math.pi * (r - 1) / max(n, 1))),
    "warmup": lambda r, n, c: min(1.0, r / (c.warmup_rounds + 1)),
}


def learning_rate(cfg: TrainConfig, server_round: int, total_rounds: int) -> float:
    """Learning rate for ``server_round`` (1-based) of ``total_rounds``."""
    if cfg.lr_schedule not in SCHEDULES:
        raise ValueError(f"unknown lr-schedule {cfg.lr_schedule!r}; choose one of {', '.join(SCHEDULES)}")
    return cfg.learning_rate * SCHEDULES[cfg.lr_schedule](server_round, total_rounds, cfg)
