"""Checks of a DP plan against the data, before any round runs."""

from __future__ import annotations

import math

from fedtrain.config import RunConfig
from fedtrain.data import FederatedData
from fedtrain.errors import ConfigError
from fedtrain.privacy.calibration import smallest_epsilon
from fedtrain.privacy.client_privacy import planned_segments

__all__ = ["check_privacy_plan"]


def check_privacy_plan(cfg: RunConfig, data: FederatedData) -> None:
    """Refuse a delta that is not below 1/records, or a budget no noise level can meet."""
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
        segments = planned_segments(cfg, len(client.train.y), len(client.labeled.y))
        floor = smallest_epsilon(pc.dp_delta, segments, pc.dp_accountant)
        if pc.dp_target_epsilon <= floor:
            steps = sum(n for _, n in segments)
            raise ConfigError(
                f"dp-target-epsilon={pc.dp_target_epsilon} is too small for client {pid}'s plan ({steps} steps): "
                f"the smallest epsilon reachable is about {floor:.3g}; raise the budget, or plan fewer rounds or "
                "local epochs"
            )
