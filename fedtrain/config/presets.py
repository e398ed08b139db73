"""Named starting points for ``fedtrain run``: a preset is a base under the config file and the overrides.

``main`` is the main job, what ``fedtrain run`` with no config runs: greedy layer-wise pretraining, fine-tuning
under sample-level DP at epsilon 3, SecAgg+ on every round, and an fp32 and an int8 ONNX model for a device.
Every key it depends on is pinned here, so a later change of a generic or DP default does not change it.

The budget split was chosen on validation with tuning seeds 11-13 (``benchmarks/main_job.py --tune``): at the
same epsilon, 5 pretraining rounds then 30 fine-tuning rounds with the server's moving average (validation
accuracy of the final model 0.856) against fine-tuning alone (0.861). Pretraining buys nothing measurable at
this budget with all labels and costs 5 of the 35 rounds' DP-SGD steps; the report says so. On report seeds
0-4 the preset's final test accuracy is 0.848 +- 0.031 (fine-tuning alone 0.858 +- 0.024), every seed >= 0.80,
in under a minute on 2 cores (``benchmarks/results/main_job.md``).
"""

from __future__ import annotations

from typing import Any

from fedtrain.errors import ConfigError

__all__ = ["PRESETS", "preset"]

MAIN_JOB: dict[str, Any] = {
    "plan": "pretrain,finetune,export",
    "pretrain-rounds": 5,
    "num-rounds": 30,
    "dp-level": "sample",
    "dp-target-epsilon": 3.0,
    "secure-aggregation": True,
    "server-averaging": "ema",
    # the MLP DP recipe of fedtrain.config.dp_defaults (SAMPLE_DP_DEFAULTS) as measured for this preset; model is
    # pinned so that plan=finetune,export (no pretrain stage) keeps the MLP instead of the linear DP default
    "model": "mlp",
    "hidden-sizes": "128",
    "activation": "tanh",
    "batch-size": 16,
    "local-epochs": 1,
    "normalize": "range",
    "fraction-evaluate": 0.0,
    "client-eval-fraction": 0.0,
    "export-formats": "fp32,int8-static",
}

# What pretraining bought in the main preset, measured on report seeds (benchmarks/results/main_job.md).
MAIN_JOB_PRETRAINING_EFFECT = (
    "Measured for this recipe on seeds 0-4 (benchmarks/results/main_job.md): final test accuracy 0.848 +- 0.031 "
    "with pretraining against 0.858 +- 0.024 for fine-tuning alone at the same epsilon. With every label and "
    "epsilon 3, pretraining buys no accuracy (-1.0 point, within the spread over seeds): its DP-SGD steps come out "
    "of the fine-tuning budget. It shows the whole path; plan=finetune,export drops it."
)

PRESETS: dict[str, dict[str, Any]] = {"main": MAIN_JOB, "none": {}}


def preset(name: str) -> dict[str, Any]:
    """The keys of preset ``name`` (a copy); ``none`` is the generic defaults."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
