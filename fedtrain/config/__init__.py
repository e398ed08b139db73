"""Run configuration: typed defaults, TOML files, ``key=value`` overrides and validation."""

from fedtrain.config.dp_defaults import dp_default_changes, format_dp_default_changes
from fedtrain.config.loader import (
    KNOWN_STAGES,
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
    ExportConfig,
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
    "KNOWN_STAGES",
    "DataConfig",
    "ExportConfig",
    "ModelConfig",
    "OutputConfig",
    "PartitionConfig",
    "PretrainConfig",
    "PrivacyConfig",
    "RunConfig",
    "RuntimeConfig",
    "StrategyConfig",
    "TrainConfig",
    "dp_default_changes",
    "dump_toml",
    "flat_keys",
    "format_dp_default_changes",
    "load_config",
    "parse_class_keep",
    "parse_int_list",
    "parse_overrides",
    "toml_value",
]
