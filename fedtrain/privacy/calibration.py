"""Noise calibration: sigma for a whole run's planned steps, with errors that say what is reachable."""

from __future__ import annotations

import math

from opacus.accountants.utils import get_noise_multiplier

from fedtrain.errors import ConfigError
from fedtrain.privacy.accountant import RDP_ORDERS, epsilon_of

__all__ = ["MAX_SIGMA", "calibrate_noise", "smallest_epsilon"]

MAX_SIGMA = 1000.0  # beyond this the model learns nothing; Opacus gives up at 2000


def smallest_epsilon(delta: float, sample_rate: float, steps: int, mechanism: str) -> float:
    """Epsilon the plan spends at the largest noise fedtrain allows: the floor of any budget."""
    return epsilon_of(mechanism, [(MAX_SIGMA, sample_rate, steps)], delta)


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, mechanism: str) -> float:
    """Smallest sigma whose ``steps`` steps at ``sample_rate`` spend at most ``target_epsilon``."""
    if not target_epsilon > 0:
        raise ConfigError(f"dp-target-epsilon={target_epsilon} must be > 0")
    if math.isinf(target_epsilon):
        raise ConfigError("dp-target-epsilon=inf means no sample-level DP: set dp-level='none' instead")
    floor = smallest_epsilon(delta, sample_rate, steps, mechanism)
    if target_epsilon <= floor:
        raise ConfigError(
            f"dp-target-epsilon={target_epsilon} is too small for {steps} steps at sampling rate {sample_rate:.4f}: "
            f"the smallest epsilon reachable with this plan is about {floor:.3g}; raise the budget or plan fewer "
            "rounds or local epochs"
        )
    kwargs = {"alphas": list(RDP_ORDERS)} if mechanism == "rdp" else {}
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps,
                accountant=mechanism, epsilon_tolerance=0.005, **kwargs,
            )
        )  # fmt: skip
    except ValueError as err:
        raise ConfigError(f"cannot calibrate noise for dp-target-epsilon={target_epsilon}: {err}") from None
