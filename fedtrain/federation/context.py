"""Read fedtrain's config from a Flower ``Context``'s run config, validated once per process."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from fedtrain.config import RunConfig, load_config

__all__ = ["config_from_run_config"]


@functools.lru_cache(maxsize=8)
def _cached_config(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    return load_config(base=dict(items))


def config_from_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Validate Flower's run config (defaults from pyproject plus overrides) into a RunConfig."""
    return _cached_config(tuple(sorted(run_config.items())))
