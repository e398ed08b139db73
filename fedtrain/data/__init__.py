"""Embedded default data, loaders for user data, partitioners and experiment perturbations."""

from fedtrain.data.dataset import ArrayDataset, Normalizer
from fedtrain.data.federated import (
    ClientData,
    FederatedData,
    apply_class_keep,
    apply_label_noise,
    build_federated_data,
)
from fedtrain.data.loaders import load_dataset, load_digits
from fedtrain.data.partition import PARTITIONERS, partition

__all__ = [
    "PARTITIONERS",
    "ArrayDataset",
    "ClientData",
    "FederatedData",
    "Normalizer",
    "apply_class_keep",
    "apply_label_noise",
    "build_federated_data",
    "load_dataset",
    "load_digits",
    "partition",
]
