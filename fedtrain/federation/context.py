"""Read fedtrain's config and data from a Flower ``Context``, with per-process caching."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from fedtrain.config import RunConfig, load_config
from fedtrain.data import FederatedData, build_federated_data
from fedtrain.errors import ConfigError

__all__ = ["config_from_run_config", "federated_data", "partition_id"]


@functools.lru_cache(maxsize=8)
def _cached_config(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    return load_config(base=dict(items))


def config_from_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Validate Flower's run config (defaults from pyproject plus overrides) into a RunConfig."""
    return _cached_config(tuple(sorted(run_config.items())))


def federated_data(cfg: RunConfig) -> FederatedData:
    """The run's data; built once per process from the seed."""
    return build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)


def partition_id(node_config: Mapping[str, Any], cfg: RunConfig) -> int:
    """This node's partition, checked against ``num-clients``."""
    if "partition-id" not in node_config:
        raise ConfigError(
            "this SuperNode has no partition-id in its node config; start it with "
            '--node-config "partition-id=0 num-partitions=N"'
        )
    pid = int(node_config["partition-id"])
    num = int(node_config.get("num-partitions", cfg.partition.num_clients))
    if num != cfg.partition.num_clients or not 0 <= pid < num:
        raise ConfigError(
            f"the federation has {num} partitions (SuperNodes) but num-clients={cfg.partition.num_clients}; "
            f'run with --federation-config "num-supernodes={cfg.partition.num_clients}" or set num-clients={num}'
        )
    return pid
