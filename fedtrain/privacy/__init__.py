"""Differential privacy: per-client DP-SGD (Opacus) with whole-run accounting, and user-level DP.

Names load on first use, and Opacus only with them (:mod:`fedtrain.privacy.opacus_api`): a deployed client
starts a fresh process per message, and one without DP should not import Opacus.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedtrain.privacy.accountant import ACCOUNTANTS, RDP_ORDERS, ClientAccountant, epsilon_of
    from fedtrain.privacy.calibration import calibrate_noise, smallest_epsilon
    from fedtrain.privacy.dp_sgd import DPPlan, check_model, choose_grad_sample_mode, dp_train_local, plan_steps

_WHERE = {
    **dict.fromkeys(("ACCOUNTANTS", "RDP_ORDERS", "ClientAccountant", "epsilon_of"), "accountant"),
    **dict.fromkeys(("calibrate_noise", "smallest_epsilon"), "calibration"),
    **dict.fromkeys(("DPPlan", "check_model", "choose_grad_sample_mode", "dp_train_local", "plan_steps"), "dp_sgd"),
}

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "ClientAccountant",
    "DPPlan",
    "calibrate_noise",
    "check_model",
    "choose_grad_sample_mode",
    "dp_train_local",
    "epsilon_of",
    "plan_steps",
    "smallest_epsilon",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
