"""Checks of the DP-recipe keys (issue 17) that a single key's range cannot express."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedtrain.config.schema import RunConfig

__all__ = [
    "check_dp_recipes",
    "gaussian_epsilon",
    "gaussian_epsilon_floor",
    "normalization_affordable",
    "normalization_noise",
    "normalization_segments",
]

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


def gaussian_epsilon_floor(delta: float) -> float:
    """The epsilon :func:`gaussian_epsilon` tends to as the noise grows: no finite noise reaches it or below.

    The RDP term ``a / (2 z^2)`` vanishes; what the conversion to (epsilon, delta) adds at the largest order stays.
    """
    log_delta = math.log(delta)
    return min(-(log_delta + math.log(a)) / (a - 1) + math.log((a - 1) / a) for a in _ORDERS)


def normalization_affordable(share: float, target_epsilon: float, delta: float) -> bool:
    """Whether ``share * target_epsilon`` buys one accounted Gaussian release (is above the floor)."""
    return share * target_epsilon > gaussian_epsilon_floor(delta)


@functools.lru_cache(maxsize=32)
def normalization_noise(share: float, target_epsilon: float, delta: float) -> float:
    """Smallest noise multiplier whose single Gaussian release spends at most ``share * target_epsilon``.

    Raises ValueError when that budget is at or below :func:`gaussian_epsilon_floor` (check_dp_recipes refuses
    such configs first, with the keys to change).
    """
    goal = share * target_epsilon
    if not normalization_affordable(share, target_epsilon, delta):
        floor = gaussian_epsilon_floor(delta)
        raise ValueError(f"no noise multiplier spends only {goal:.3g}: accounted Gaussian releases need > {floor:.3g}")
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


def _check_augment(cfg: RunConfig) -> list[str]:
    """Augmentation keys that would be ignored, or fail only once clients train."""
    tc, problems = cfg.train, []
    if tc.augment_multiplicity > 1 and tc.augment == "none":
        problems.append(
            f"augment-multiplicity={tc.augment_multiplicity} has nothing to multiply with augment='none': set "
            "augment='shift' or 'shift-rotate', or augment-multiplicity=1"
        )
    if tc.augment != "none" and cfg.sample_dp and cfg.privacy.dp_grad_sample_mode in ("ew", "ghost"):
        problems.append(
            f"augment={tc.augment!r} under DP-SGD needs per-sample gradients of the augmented batch: set "
            f"dp-grad-sample-mode='hooks' (or 'auto'), not {cfg.privacy.dp_grad_sample_mode!r}"
        )
    return problems


def check_dp_recipes(cfg: RunConfig) -> list[str]:
    """Cross-key rules of the recipe keys: augmentation, and the needs of ``normalize=dp-standard``.

    dp-standard needs sample-level DP with a finite budget, simulated partitions, noise from ``seed`` and torch
    clients. SecAgg+ is no obstacle: the server uses only the sum of the clients' releases, which is what a SecAgg+
    round over them would give it, and each release is accounted on its own client.
    """
    problems = _check_augment(cfg)
    if cfg.data.normalize != "dp-standard":
        return problems
    why = "normalize='dp-standard' spends part of each client's sample-level budget"
    if not cfg.sample_dp or math.isinf(cfg.privacy.dp_target_epsilon) or cfg.privacy.dp_noise_multiplier > 0:
        problems.append(
            f"{why}, so it needs dp-level='sample' or 'both' with a finite dp-target-epsilon and no fixed "
            "dp-noise-multiplier; without DP use normalize='standard'"
        )
    pc, share = cfg.privacy, cfg.data.normalize_dp_share
    finite = cfg.sample_dp and not math.isinf(pc.dp_target_epsilon)
    if finite and not normalization_affordable(share, pc.dp_target_epsilon, pc.dp_delta):
        problems.append(
            f"{why}: normalize-dp-share * dp-target-epsilon = {share * pc.dp_target_epsilon:.3g}, but one accounted "
            f"Gaussian release at dp-delta={pc.dp_delta:g} costs more than {gaussian_epsilon_floor(pc.dp_delta):.3g} "
            "whatever its noise: raise normalize-dp-share or "
            "dp-target-epsilon, or use normalize='range' (spends nothing)"
        )
    if cfg.data.data_source != "partition":
        problems.append(
            f"{why}; with data-source=node the release would need its own protocol round, which fedtrain does not "
            "have yet: use normalize='range' (reads no data)"
        )
    if cfg.privacy.dp_noise_seed == "os":
        problems.append(
            f"{why}; its noise is drawn from `seed` so that every process derives the same normaliser, which "
            "dp-noise-seed='os' promises not to do: use normalize='range', or dp-noise-seed='run'"
        )
    if cfg.runtime.client_runtime == "onnx":
        problems.append(
            f"{why}; the ONNX client's accountant does not record the release yet: use normalize='range' or "
            "client-runtime='torch'"
        )
    return problems
