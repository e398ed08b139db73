"""Differential privacy: per-client DP-SGD (Opacus) with whole-run accounting, and user-level DP."""

from fedtrain.privacy import _quiet_opacus  # noqa: F401  (first: undoes an Opacus import side effect)
from fedtrain.privacy.accountant import ACCOUNTANTS, RDP_ORDERS, ClientAccountant, epsilon_of
from fedtrain.privacy.calibration import calibrate_noise, smallest_epsilon
from fedtrain.privacy.dp_sgd import DPPlan, check_model, choose_grad_sample_mode, dp_train_local, plan_steps

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
