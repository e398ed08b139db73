"""A client's sample-level DP across rounds: accountant in ``Context.state``, sigma fixed for the run.

The server never sees a client's data, but it does see (and checkpoints) each client's public
DP history (every ``(sigma, q, steps)`` segment) from its replies; on ``--resume`` it sends the
histories back in the train config (``dp-restore-history``, one JSON list per partition id), so a
restarted client keeps its spent budget over every stage it ran. What a client may spend over the
whole plan is computed by the federation (``fedtrain.federation.dp_plan``) and passed in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, Context

from fedtrain.config import RunConfig
from fedtrain.privacy.accountant import ClientAccountant
from fedtrain.privacy.calibration import calibrate_noise
from fedtrain.privacy.dp_normalize import normalization_segments
from fedtrain.privacy.dp_sgd import DPPlan
from fedtrain.wire import RESTORE_HISTORY

__all__ = [
    "STATE_KEY",
    "load_accountant",
    "noise_multiplier",
    "over_budget",
    "round_budget",
    "save_accountant",
]

STATE_KEY = "fedtrain-dp"


def load_accountant(
    context: Context, train_config: Mapping[str, Any], pid: int, mechanism: str, cfg: RunConfig | None = None
) -> ClientAccountant:
    """This client's accountant: from ``Context.state``, else from the server's restore entry, else new.

    A new accountant starts with the releases ``cfg`` made before training (``normalize=dp-standard``).
    """
    kept = context.state.get(STATE_KEY)  # not state.config_records: Flower builds that view anew on every read
    if isinstance(kept, ConfigRecord):
        return ClientAccountant.from_state_dict(dict(kept))
    acc = ClientAccountant(mechanism)
    restore = list(train_config.get(RESTORE_HISTORY, []))
    if pid < len(restore) and restore[pid]:
        for sigma, q, steps in json.loads(str(restore[pid])):
            acc.record(float(sigma), float(q), int(steps))
    elif cfg is not None:
        for sigma, q, steps in normalization_segments(cfg):  # the release made before any round (dp-standard)
            acc.record(sigma, q, steps)
    return acc


def save_accountant(context: Context, acc: ClientAccountant) -> None:
    context.state[STATE_KEY] = ConfigRecord(acc.state_dict())


def noise_multiplier(cfg: RunConfig, acc: ClientAccountant, planned: Sequence[tuple[float, int]]) -> float:
    """Sigma for this client: fixed by config, kept from earlier rounds, or calibrated once for the run.

    ``planned``: the ``(sample_rate, steps)`` segments the client may spend over the whole plan, after the
    releases made before training (:func:`~fedtrain.privacy.dp_normalize.normalization_segments`), which the
    calibration counts too.
    """
    if cfg.privacy.dp_noise_multiplier > 0:
        return cfg.privacy.dp_noise_multiplier
    fixed = normalization_segments(cfg)
    if len(acc.history) > len(fixed):  # DP-SGD steps after the fixed releases: their sigma is the run's
        return acc.history[-1][0]
    return calibrate_noise(
        target_epsilon=cfg.privacy.dp_target_epsilon,
        delta=cfg.privacy.dp_delta,
        segments=list(planned),
        mechanism=acc.mechanism,  # the accountant that will count it (the config's, for every client's own)
        fixed=fixed,
    )


def round_budget(
    cfg: RunConfig, acc: ClientAccountant, plan: DPPlan, planned: Sequence[tuple[float, int]]
) -> tuple[float, float, bool]:
    """Sigma, projected epsilon after one more local call (``plan``), and whether the call may go ahead."""
    sigma = noise_multiplier(cfg, acc, planned)
    projected = acc.epsilon(cfg.privacy.dp_delta, extra=(sigma, plan.sample_rate, plan.steps_per_call))
    return sigma, projected, not over_budget(cfg, projected)


def over_budget(cfg: RunConfig, projected_epsilon: float) -> bool:
    """Whether a round would take the client past its budget (a small tolerance absorbs rounding)."""
    target = cfg.privacy.dp_target_epsilon
    return not math.isinf(target) and projected_epsilon > target * (1 + 1e-9)
