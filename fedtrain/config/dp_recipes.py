"""Checks of the DP-recipe keys (issue 17) that a single key's range cannot express."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedtrain.config.schema import RunConfig

__all__ = ["check_dp_recipes"]


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
