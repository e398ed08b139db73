"""Read fedtrain's config and data from a Flower ``Context``, with per-process caching."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from fedtrain.config import RunConfig, load_config
from fedtrain.data import FederatedData, build_federated_data
from fedtrain.data.source import partition_id  # re-exported: the check now lives with the data sources

__all__ = ["config_from_run_config", "federated_data", "partition_id"]


@functools.lru_cache(maxsize=8)
def _cached_config(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    return load_config(base=dict(items))


def config_from_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Validate Flower's run config (defaults from pyproject plus overrides) into a RunConfig."""
    return _cached_config(tuple(sorted(run_config.items())))


def federated_data(cfg: RunConfig) -> FederatedData:
    """The whole simulated federation's data (``data-source=partition``); built once per process from the seed."""
    return build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)
