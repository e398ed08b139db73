"""Checks of the DP-recipe keys (issue 17) that a single key's range cannot express."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedtrain.config.schema import RunConfig

__all__ = ["check_dp_recipes", "gaussian_epsilon", "normalization_noise", "normalization_segments"]

# fedtrain.privacy.accountant.RDP_ORDERS (config sits below privacy). Plain floats: the config package must import
# without numpy (fedtrain.deploy's CLI runs on machines that have only the standard library and flwr's extras).
_ORDERS = tuple(float(a) for a in range(2, 257))


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Epsilon of one Gaussian release (sensitivity 1, std ``noise_multiplier``) by RDP, as fedtrain's accountant.

    RDP of order a is ``a / (2 z^2)`` exactly; the conversion is Opacus' (Balle et al. 2020) at the same orders,
    so this equals ``epsilon_of("rdp", [(z, 1.0, 1)], delta)`` (tests/test_dp_recipes_accounting.py).
    """
    log_delta = math.log(delta)
    return min(
        a / (2 * noise_multiplier**2) - (log_delta + math.log(a)) / (a - 1) + math.log((a - 1) / a) for a in _ORDERS
    )


@functools.lru_cache(maxsize=32)
def normalization_noise(share: float, target_epsilon: float, delta: float) -> float:
    """Smallest noise multiplier whose single Gaussian release spends at most ``share * target_epsilon``."""
    goal = share * target_epsilon
    low, high = 0.0, 1.0
    while gaussian_epsilon(high, delta) > goal:
        low, high = high, 2 * high
    while high - low > 1e-7 * high:
        mid = (low + high) / 2
        low, high = (mid, high) if gaussian_epsilon(mid, delta) > goal else (low, mid)
    return high


def normalization_segments(cfg: RunConfig) -> list[tuple[float, float, int]]:
    """The ``(z, 1.0, 1)`` release ``normalize=dp-standard`` makes before any DP-SGD step; empty otherwise.

    It is the first segment of every client's accountant (see fedtrain.privacy.dp_normalize).
    """
    pc = cfg.privacy
    if cfg.data.normalize != "dp-standard" or not cfg.sample_dp or math.isinf(pc.dp_target_epsilon):
        return []
    return [(normalization_noise(cfg.data.normalize_dp_share, pc.dp_target_epsilon, pc.dp_delta), 1.0, 1)]


def check_dp_recipes(cfg: RunConfig) -> list[str]:
    """``normalize=dp-standard`` needs sample-level DP with a finite budget, simulated partitions, no SecAgg+."""
    problems: list[str] = []
    if cfg.data.normalize != "dp-standard":
        return problems
    why = "normalize='dp-standard' spends part of each client's sample-level budget"
    if not cfg.sample_dp or math.isinf(cfg.privacy.dp_target_epsilon) or cfg.privacy.dp_noise_multiplier > 0:
        problems.append(
            f"{why}, so it needs dp-level='sample' or 'both' with a finite dp-target-epsilon and no fixed "
            "dp-noise-multiplier; without DP use normalize='standard'"
        )
    if cfg.data.data_source != "partition":
        problems.append(
            f"{why}; with data-source=node the release would need its own protocol round, which fedtrain does not "
            "have yet: use normalize='range' (reads no data)"
        )
    if cfg.secagg.secure_aggregation:
        problems.append(f"{why}; it is not yet combined with secure-aggregation=true: use normalize='range'")
    return problems
