"""DP-suited defaults: under DP, the keys the user did not set take values that suit noisy training.

The generic defaults suit non-private training; under sample-level DP they reach about 0.71 test accuracy
on digits at epsilon 3, the values below 0.856 +- 0.029 (seeds 0, 1, 2; tuned on validation with other
seeds, see benchmarks/results/dp_tuning.md). Below epsilon 2 the recipe is a linear model instead
(``SMALL_EPSILON_DP_DEFAULTS``, issue 17; benchmarks/results/privacy_utility.md). The keys the user set are kept.

"Set" means: named in the config file or the overrides, or given in ``base`` with a value other than the
generic default. ``flwr run`` passes the whole app table as the run config, so a base value equal to the
generic default cannot be told apart from an unset key and counts as unset.

The resolved config records the keys that took a DP default in ``dp-defaults-applied`` (``none`` when no
key did). A config that holds it is final: loading it again, as the server and every client do, changes
nothing, so all processes resolve to the same config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Set
from typing import Any

from fedtrain.config.dp_recipes import gaussian_epsilon_floor
from fedtrain.config.schema import SECTIONS, RunConfig

__all__ = [
    "DP_DEFAULTS",
    "SAMPLE_DP_DEFAULTS",
    "SMALL_EPSILON",
    "SMALL_EPSILON_DP_DEFAULTS",
    "apply_dp_defaults",
    "dp_default_changes",
    "format_dp_default_changes",
]

# Under any DP level: read no private data outside the accountant by default.
DP_DEFAULTS: dict[str, Any] = {
    "normalize": "range",  # data-independent scaling (x / nominal maximum): costs no privacy
    "fraction-evaluate": 0.0,  # client evaluation would send unnoised metrics of private records
    "client-eval-fraction": 0.0,  # with no client evaluation, those records train instead
}

# Under sample-level DP (DP-SGD on clients) in addition: the recipe tuned on validation.
SAMPLE_DP_DEFAULTS: dict[str, Any] = {
    "hidden-sizes": "128",  # one hidden layer: 128 beat 64, 256 and 128,64 on validation
    "activation": "tanh",  # bounded activations suit clipped, noisy gradients (Papernot et al. 2021)
    "batch-size": 16,  # more, smaller noisy steps (beat 32 at lr 0.1 on validation)
    "local-epochs": 1,
}

# Under sample-level DP at a small budget (dp-target-epsilon < SMALL_EPSILON) instead: the linear recipe of
# issue 17, chosen on validation (benchmarks/results/dp_tuning.md, "Issue 17"): fewer parameters mean less noise
# per unit of signal, and the server evaluates and keeps the average of the iterates (post-processing, free in
# privacy). Centred inputs matter most: DP-SGD's noise on the weights, times an uncentred input, is a random offset
# of every class's logit; `dp-standard` estimates the means inside the budget (30 % of it for the release alone,
# which composed raises DP-SGD's sigma by about 6 %). It needs simulated partitions and torch clients without
# SecAgg+ (``_dp_standard_allowed``); elsewhere the recipe keeps `range`.
SMALL_EPSILON = 2.0
SMALL_EPSILON_DP_DEFAULTS: dict[str, Any] = {
    "model": "linear",
    "optimizer": "sgd",
    "batch-size": 128,
    "local-epochs": 2,
    "learning-rate": 1.0,
    "num-rounds": 15,
    "server-averaging": "ema",
    "normalize": "dp-standard",
    "normalize-dp-share": 0.3,
}
_DP_STANDARD_ONLY = ("normalize-dp-share",)

_MLP_ONLY = ("hidden-sizes", "activation")
MARKER = "dp-defaults-applied"
NONE_APPLIED = "none"


def _small_budget(cfg: RunConfig, user_set: Set[str]) -> bool:
    """Whether the small-budget recipe applies.

    It needs a sample-level target below SMALL_EPSILON, a linear or unset model, and no layer-wise pretraining
    (which needs the MLP that the linear recipe replaces).
    """
    pc = cfg.privacy
    small = pc.dp_target_epsilon < SMALL_EPSILON and pc.dp_noise_multiplier == 0
    free_model = ("model" not in user_set or cfg.model.model == "linear") and "pretrain" not in cfg.phases
    return cfg.sample_dp and small and free_model


def _dp_standard_allowed(cfg: RunConfig, share: float) -> bool:
    """Whether ``normalize=dp-standard`` can run with ``cfg`` and ``share`` (the needs check_dp_recipes enforces)."""
    return (
        share * cfg.privacy.dp_target_epsilon > gaussian_epsilon_floor(cfg.privacy.dp_delta)
        and cfg.data.data_source == "partition"
        and not cfg.secagg.secure_aggregation
        and cfg.privacy.dp_noise_seed != "os"
        and cfg.runtime.client_runtime != "onnx"
    )


def _table(cfg: RunConfig, user_set: Set[str] = frozenset()) -> dict[str, Any]:
    """The DP defaults that apply to ``cfg`` (empty without DP)."""
    if cfg.privacy.dp_level == "none":
        return {}
    table = dict(DP_DEFAULTS)
    if cfg.sample_dp:
        table.update(SAMPLE_DP_DEFAULTS)
    if _small_budget(cfg, user_set):
        table.update(SMALL_EPSILON_DP_DEFAULTS)
        user_share = "normalize-dp-share" in user_set
        share = cfg.data.normalize_dp_share if user_share else SMALL_EPSILON_DP_DEFAULTS["normalize-dp-share"]
        if not _dp_standard_allowed(cfg, share):
            table["normalize"] = DP_DEFAULTS["normalize"]
    normalize = cfg.data.normalize if "normalize" in user_set else table.get("normalize", cfg.data.normalize)
    if normalize != "dp-standard":
        for key in _DP_STANDARD_ONLY:
            table.pop(key, None)
    model = cfg.model.model if "model" in user_set else table.get("model", cfg.model.model)
    if model != "mlp":
        for key in _MLP_ONLY:
            table.pop(key, None)
    return table


def table_keys() -> tuple[str, ...]:
    """Every key that can take a DP default."""
    return tuple(dict.fromkeys((*DP_DEFAULTS, *SAMPLE_DP_DEFAULTS, *SMALL_EPSILON_DP_DEFAULTS)))


def _with_flat(cfg: RunConfig, changes: dict[str, Any]) -> RunConfig:
    """Return ``cfg`` with some kebab-case keys changed."""
    per_section: dict[str, dict[str, Any]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            if key in changes:
                per_section.setdefault(section, {})[f.name] = changes[key]
    return cfg.replace(**per_section)


def apply_dp_defaults(cfg: RunConfig, user_set: Set[str]) -> RunConfig:
    """Give the keys not in ``user_set`` their DP-suited defaults, once.

    Parameters
    ----------
    cfg
        The config with every unset key at its generic default.
    user_set
        Keys the user set (see the module docstring).

    Returns
    -------
    RunConfig
        ``cfg`` itself without DP, with ``dp-defaults=false`` or when already resolved; otherwise a copy
        with the DP defaults applied and ``dp-defaults-applied`` naming the changed keys.
    """
    pc = cfg.privacy
    if pc.dp_defaults_applied or pc.dp_level == "none" or not pc.dp_defaults:
        return cfg
    flat = cfg.to_flat()
    changes = {k: v for k, v in _table(cfg, user_set).items() if k not in user_set and flat[k] != v}
    if "client-eval-fraction" in changes and changes.get("fraction-evaluate", flat["fraction-evaluate"]) > 0:
        # The user kept client evaluation on: it needs its evaluation share.
        del changes["client-eval-fraction"]
    changes[MARKER] = ",".join(changes) or NONE_APPLIED
    return _with_flat(cfg, changes)


def dp_default_changes(cfg: RunConfig) -> dict[str, Any]:
    """The keys that took a DP default in this resolved config, with their values (empty when none).

    Examples
    --------
    >>> from fedtrain.config import load_config
    >>> dp_default_changes(load_config(overrides="dp-level=sample"))["activation"]
    'tanh'
    """
    applied = cfg.privacy.dp_defaults_applied
    if applied in ("", NONE_APPLIED):
        return {}
    flat = cfg.to_flat()
    return {k: flat[k] for k in applied.split(",") if k in flat}


def format_dp_default_changes(changes: dict[str, Any]) -> str:
    """The log line: ``DP defaults applied (keys you did not set): hidden-sizes=128, activation=tanh``."""
    from fedtrain.config.loader import toml_value  # loader imports this module

    pairs = ", ".join(f"{k}={v if isinstance(v, str) else toml_value(v)}" for k, v in changes.items())
    return f"DP defaults applied (keys you did not set): {pairs}"
