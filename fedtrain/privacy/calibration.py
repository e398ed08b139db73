"""Noise calibration: sigma for a whole run's planned steps, with errors that say what is reachable."""

from __future__ import annotations

import math

from fedtrain.dp_history import search_sigma
from fedtrain.errors import ConfigError
from fedtrain.privacy.accountant import epsilon_of

__all__ = ["MAX_SIGMA", "calibrate_noise", "smallest_epsilon"]

MAX_SIGMA = 1000.0  # beyond this the model learns nothing; Opacus gives up at 2000


Fixed = list[tuple[float, float, int]]  # releases at their own noise, e.g. dp-standard's (z, 1.0, 1)


def smallest_epsilon(
    delta: float, segments: list[tuple[float, int]], mechanism: str, fixed: Fixed | None = None
) -> float:
    """Epsilon the plan spends at the largest noise fedtrain allows (plus the ``fixed`` releases): the floor."""
    return epsilon_of(mechanism, [*(fixed or []), *((MAX_SIGMA, q, n) for q, n in segments)], delta)


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    segments: list[tuple[float, int]],
    mechanism: str,
    tolerance: float = 0.005,
    fixed: Fixed | None = None,
) -> float:
    """Smallest sigma (within ``tolerance`` in epsilon) whose planned steps spend at most ``target_epsilon``.

    ``segments`` lists ``(sample_rate, steps)`` for every phase of the run (pretraining and fine-tuning
    may sample at different rates); one sigma is used throughout, and the result never exceeds the target.
    ``fixed`` releases (``(sigma, q, steps)`` at their own noise) are composed with them.
    """
    fixed = list(fixed or [])
    if not target_epsilon > 0:
        raise ConfigError(f"dp-target-epsilon={target_epsilon} must be > 0")
    if math.isinf(target_epsilon):
        raise ConfigError("dp-target-epsilon=inf means no sample-level DP: set dp-level='none' instead")
    steps = sum(n for _, n in segments)
    floor = smallest_epsilon(delta, segments, mechanism, fixed)
    if target_epsilon <= floor:
        rates = ", ".join(f"{q:.4f}" for q, _ in segments)
        raise ConfigError(
            f"dp-target-epsilon={target_epsilon} is too small for {steps} steps at sampling rate {rates}: "
            f"the smallest epsilon reachable with this plan is about {floor:.3g}; raise the budget or plan fewer "
            "rounds or local epochs"
        )

    def spent(sigma: float) -> float:
        return epsilon_of(mechanism, [*fixed, *((sigma, q, n) for q, n in segments)], delta)

    return search_sigma(spent, target_epsilon, tolerance)
