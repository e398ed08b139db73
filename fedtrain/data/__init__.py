"""Embedded default data, loaders for user data, partitioners, data sources and experiment perturbations."""

from fedtrain.data.dataset import ArrayDataset, Normalizer, normalizer_from_config, normalizer_to_config
from fedtrain.data.federated import (
    ClientData,
    FederatedData,
    RawSplits,
    apply_class_keep,
    apply_label_noise,
    build_federated_data,
    raw_splits,
)
from fedtrain.data.loaders import load_dataset, load_digits
from fedtrain.data.partition import PARTITIONERS, partition
from fedtrain.data.source import (
    DataSource,
    DataSpec,
    FileSource,
    PartitionSource,
    ServerData,
    data_source,
    received_spec,
    server_data,
    spec_to_config,
)

__all__ = [
    "PARTITIONERS",
    "ArrayDataset",
    "ClientData",
    "DataSource",
    "DataSpec",
    "FederatedData",
    "FileSource",
    "Normalizer",
    "PartitionSource",
    "RawSplits",
    "ServerData",
    "apply_class_keep",
    "apply_label_noise",
    "build_federated_data",
    "data_source",
    "load_dataset",
    "load_digits",
    "normalizer_from_config",
    "normalizer_to_config",
    "partition",
    "raw_splits",
    "received_spec",
    "server_data",
    "spec_to_config",
]
