"""DP-suited defaults: under DP, the keys the user did not set take values that suit noisy training.

The generic defaults suit non-private training. Under sample-level DP the defaults are the linear recipe of
issue 17 (``LINEAR_DP_DEFAULTS``, with ``linear_dp_defaults`` adding what depends on the budget): a linear model,
plain SGD, the server's moving average of the iterates, normalisation inside the budget and the PRV accountant. On
digits it reaches 0.766 +- 0.034 test accuracy at epsilon 1, 0.895 +- 0.015 at epsilon 3 and 0.933 +- 0.006 at
epsilon 8 (seeds 0, 1, 2; benchmarks/results/privacy_utility.md, tuned on validation with other seeds, see
benchmarks/results/dp_tuning.md), against 0.856 +- 0.029 and 0.891 +- 0.031 at epsilon 3 and 8 for the MLP
recipe (``SAMPLE_DP_DEFAULTS``). The MLP recipe remains for the runs the linear recipe cannot serve: a model set
to something other than ``linear``, a ``pretrain`` stage (it trains the MLP's layers), a fixed
``dp-noise-multiplier`` (no target epsilon to pick by), or ``client-runtime=onnx`` (the gradient graphs cover the
MLP only). The keys the user set are kept.

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

from fedtrain.config.data_source import fitted_on_server_file
from fedtrain.config.dp_recipes import normalization_affordable
from fedtrain.config.schema import SECTIONS, RunConfig

__all__ = [
    "DP_DEFAULTS",
    "LINEAR_DP_DEFAULTS",
    "LINEAR_DP_LARGE_EPSILON",
    "LINEAR_DP_SMALL_EPSILON",
    "SAMPLE_DP_DEFAULTS",
    "SMALL_EPSILON",
    "apply_dp_defaults",
    "dp_default_changes",
    "format_dp_default_changes",
    "linear_dp_defaults",
]

# Under any DP level: read no private data outside the accountant by default.
DP_DEFAULTS: dict[str, Any] = {
    "normalize": "range",  # data-independent scaling (x / nominal maximum): costs no privacy
    "fraction-evaluate": 0.0,  # client evaluation would send unnoised metrics of private records
    "client-eval-fraction": 0.0,  # with no client evaluation, those records train instead
}

# Under sample-level DP (DP-SGD on clients) when the linear recipe does not apply (``_linear_recipe``): the MLP
# recipe tuned on validation.
SAMPLE_DP_DEFAULTS: dict[str, Any] = {
    "hidden-sizes": "128",  # one hidden layer: 128 beat 64, 256 and 128,64 on validation
    "activation": "tanh",  # bounded activations suit clipped, noisy gradients (Papernot et al. 2021)
    "batch-size": 16,  # more, smaller noisy steps (beat 32 at lr 0.1 on validation)
    "local-epochs": 1,
}

# Under sample-level DP otherwise: the linear recipe of issue 17, chosen on validation
# (benchmarks/results/dp_tuning.md, "Issue 17"; benchmarks/results/privacy_utility.md, row `linear-dpstd`): fewer
# parameters mean less noise per unit of signal, and the server evaluates and keeps the average of the iterates
# (post-processing, free in privacy). Centred inputs matter most: DP-SGD's noise on the weights, times an uncentred
# input, is a random offset of every class's logit; `dp-standard` estimates the means inside the budget. It needs
# simulated partitions and torch clients (``_dp_standard_allowed``), with or without SecAgg+; elsewhere the recipe
# takes `standard` fitted on the server's own file with node data and `server-data-path`, else `range`.
LINEAR_DP_DEFAULTS: dict[str, Any] = {
    "model": "linear",
    "optimizer": "sgd",
    "batch-size": 128,
    "local-epochs": 2,
    "learning-rate": 1.0,
    "server-averaging": "ema",
    "normalize": "dp-standard",
    # Privacy random variables (Gopi et al. 2021): a tighter bound on the same mechanism, so less noise for the
    # same epsilon (sigma about 7 % lower at epsilon 1); +1.9 validation points at epsilon 1, level at 3.
    "dp-accountant": "prv",
}
# What depends on the budget. Below SMALL_EPSILON: fewer rounds, and 30 % of the budget for the normalisation
# release (composed, it raises DP-SGD's sigma by about 6 %); at SMALL_EPSILON and above: 30 rounds and 10 %.
SMALL_EPSILON = 2.0
LINEAR_DP_SMALL_EPSILON: dict[str, Any] = {"num-rounds": 15, "normalize-dp-share": 0.3}
LINEAR_DP_LARGE_EPSILON: dict[str, Any] = {"num-rounds": 30, "normalize-dp-share": 0.1}
_DP_STANDARD_ONLY = ("normalize-dp-share",)

_MLP_ONLY = ("hidden-sizes", "activation")
MARKER = "dp-defaults-applied"
NONE_APPLIED = "none"


def linear_dp_defaults(epsilon: float) -> dict[str, Any]:
    """The linear recipe's keys at target ``epsilon`` (``LINEAR_DP_DEFAULTS`` and the budget's own keys).

    Examples
    --------
    >>> linear_dp_defaults(1.0)["num-rounds"], linear_dp_defaults(3.0)["normalize-dp-share"]
    (15, 0.1)
    """
    by_budget = LINEAR_DP_SMALL_EPSILON if epsilon < SMALL_EPSILON else LINEAR_DP_LARGE_EPSILON
    return {**LINEAR_DP_DEFAULTS, **by_budget}


def _linear_recipe(cfg: RunConfig, user_set: Set[str]) -> bool:
    """Whether the linear recipe applies (else the MLP recipe does).

    It needs sample-level DP with a target epsilon (no fixed sigma); ``model=linear``, or no model and no MLP-only
    key set; no layer-wise pretraining (which needs the MLP that the linear recipe replaces); and torch clients:
    the ONNX client runtime's gradient graphs cover the MLP only. A node whose own config sets
    ``client-runtime=onnx`` is not seen here; such a federation sets ``model=mlp``.
    """
    if "model" in user_set:
        free_model = cfg.model.model == "linear"
    else:  # an MLP-only key the user set (hidden-sizes, activation) chooses the MLP as surely as model=mlp does
        free_model = not any(key in user_set for key in _MLP_ONLY)
    free_model &= "pretrain" not in cfg.phases
    torch_clients = cfg.runtime.client_runtime != "onnx"
    return cfg.sample_dp and cfg.privacy.dp_noise_multiplier == 0 and free_model and torch_clients


def _dp_standard_allowed(cfg: RunConfig, share: float) -> bool:
    """Whether ``normalize=dp-standard`` can run with ``cfg`` and ``share`` (the needs check_dp_recipes enforces)."""
    return (
        normalization_affordable(share, cfg.privacy.dp_target_epsilon, cfg.privacy.dp_delta)
        and cfg.data.data_source == "partition"
        and cfg.privacy.dp_noise_seed != "os"
        and cfg.runtime.client_runtime != "onnx"
    )


def _table(cfg: RunConfig, user_set: Set[str] = frozenset()) -> dict[str, Any]:
    """The DP defaults that apply to ``cfg`` (empty without DP)."""
    if cfg.privacy.dp_level == "none":
        return {}
    table = dict(DP_DEFAULTS)
    if _linear_recipe(cfg, user_set):
        recipe = linear_dp_defaults(cfg.privacy.dp_target_epsilon)
        table.update(recipe)
        user_share = "normalize-dp-share" in user_set
        share = cfg.data.normalize_dp_share if user_share else recipe["normalize-dp-share"]
        if not _dp_standard_allowed(cfg, share):
            # standard on the server's own file reads no client record: +10 validation points at epsilon 1 on
            # digits' node files (benchmarks/results/dp_tuning.md); without such a file, range
            with_file = fitted_on_server_file(cfg) and bool(cfg.data.server_data_path)
            table["normalize"] = "standard" if with_file else DP_DEFAULTS["normalize"]
    elif cfg.sample_dp:
        table.update(SAMPLE_DP_DEFAULTS)
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
    linear = (*LINEAR_DP_DEFAULTS, *LINEAR_DP_SMALL_EPSILON, *LINEAR_DP_LARGE_EPSILON)
    return tuple(dict.fromkeys((*DP_DEFAULTS, *SAMPLE_DP_DEFAULTS, *linear)))


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
    >>> dp_default_changes(load_config(overrides="dp-level=sample"))["model"]
    'linear'
    """
    applied = cfg.privacy.dp_defaults_applied
    if applied in ("", NONE_APPLIED):
        return {}
    flat = cfg.to_flat()
    return {k: flat[k] for k in applied.split(",") if k in flat}


def format_dp_default_changes(changes: dict[str, Any]) -> str:
    """The log line: ``DP defaults applied (keys you did not set): model=linear, optimizer=sgd, ...``."""
    from fedtrain.config.loader import toml_value  # loader imports this module

    pairs = ", ".join(f"{k}={v if isinstance(v, str) else toml_value(v)}" for k, v in changes.items())
    return f"DP defaults applied (keys you did not set): {pairs}"
