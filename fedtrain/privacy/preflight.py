"""Checks of a DP plan against the data and the model, before any round runs."""

from __future__ import annotations

import math
from collections.abc import Callable

from fedtrain.config import RunConfig
from fedtrain.data import ClientData, FederatedData
from fedtrain.errors import ConfigError
from fedtrain.privacy.calibration import smallest_epsilon
from fedtrain.privacy.dp_normalize import normalization_segments
from fedtrain.privacy.user_level import sampled_clients

__all__ = ["check_privacy_plan", "user_dp_signal_to_noise", "warn_weak_user_dp"]


def check_privacy_plan(
    cfg: RunConfig, data: FederatedData, planned: Callable[[ClientData], list[tuple[float, int]]]
) -> None:
    """Refuse a delta that is not below 1/records, or a budget no noise level can meet.

    ``planned`` gives a client's ``(sample_rate, steps)`` segments over the whole plan.
    """
    if not cfg.sample_dp:
        return
    pc = cfg.privacy
    sizes = [len(c.train.y) for c in data.clients]
    n_min = min(sizes)
    if pc.dp_delta >= 1.0 / n_min:
        suggest = 10.0 ** math.floor(math.log10(1.0 / (10 * max(sizes))))
        raise ConfigError(
            f"dp-delta={pc.dp_delta:g} is not below 1/(records per client): the smallest client has {n_min} records "
            f"(1/n = {1 / n_min:.3g}); a delta that large lets a mechanism leak whole records. Use dp-delta={suggest:g}"
        )
    if pc.dp_noise_multiplier > 0:
        return
    for pid, client in enumerate(data.clients):
        segments = planned(client)
        floor = smallest_epsilon(pc.dp_delta, segments, pc.dp_accountant, normalization_segments(cfg))
        if pc.dp_target_epsilon <= floor:
            steps = sum(n for _, n in segments)
            raise ConfigError(
                f"dp-target-epsilon={pc.dp_target_epsilon} is too small for client {pid}'s plan ({steps} steps): "
                f"the smallest epsilon reachable is about {floor:.3g}; raise the budget, or plan fewer rounds or "
                "local epochs"
            )


def user_dp_signal_to_noise(cfg: RunConfig, num_parameters: int) -> float:
    """Norm of the largest averaged update (the clipping norm C) over the norm of the noise added to it.

    Flower adds noise of std ``z * C / K`` to every coordinate of the average of ``K`` updates, so its
    norm is about ``z * C * sqrt(d) / K``: the ratio is ``K / (z * sqrt(d))``, whatever C is.
    """
    z = cfg.privacy.dp_user_noise_multiplier
    if not cfg.user_dp or z <= 0:
        return math.inf
    return sampled_clients(cfg) / (z * math.sqrt(num_parameters))


def warn_weak_user_dp(cfg: RunConfig, num_parameters: int, *, threshold: float = 0.5) -> str | None:
    """A warning when user-level noise will swamp the updates (the audit saw accuracy at chance), else None."""
    ratio = user_dp_signal_to_noise(cfg, num_parameters)
    if ratio >= threshold:
        return None
    k, z = sampled_clients(cfg), cfg.privacy.dp_user_noise_multiplier
    return (
        f"user-level DP: the noise on each round's average (about {1 / ratio:.1f}x the largest possible update, "
        f"from {k} clients per round, dp-user-noise-multiplier={z:g} and {num_parameters} parameters) will "
        f"likely swamp training; use many more clients per round (>= {math.ceil(threshold * z * num_parameters**0.5)}"
        "), a smaller model, or see docs/privacy.md for settings that learn"
    )
