"""Run configuration: typed defaults, TOML files, ``key=value`` overrides and validation."""

from fedtrain.config.loader import (
    KNOWN_PHASES,
    dump_toml,
    flat_keys,
    load_config,
    parse_class_keep,
    parse_int_list,
    parse_overrides,
    toml_value,
)
from fedtrain.config.schema import (
    DataConfig,
    ModelConfig,
    OutputConfig,
    PartitionConfig,
    PretrainConfig,
    PrivacyConfig,
    RunConfig,
    RuntimeConfig,
    StrategyConfig,
    TrainConfig,
)

__all__ = [
    "KNOWN_PHASES",
    "DataConfig",
    "ModelConfig",
    "OutputConfig",
    "PartitionConfig",
    "PretrainConfig",
    "PrivacyConfig",
    "RunConfig",
    "RuntimeConfig",
    "StrategyConfig",
    "TrainConfig",
    "dump_toml",
    "flat_keys",
    "load_config",
    "parse_class_keep",
    "parse_int_list",
    "parse_overrides",
    "toml_value",
]
