"""Turn a config into the data of one simulated federation.

Central splits (test, validation) stay with the server; the training split is perturbed for
experiments (label noise, class imbalance), partitioned among clients, and each client keeps
a small local evaluation share. Everything is derived from the seed, so every process (the
server, any client, a Ray actor) rebuilds exactly the same arrays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from fedtrain.config import DataConfig, PartitionConfig, parse_class_keep
from fedtrain.data.dataset import ArrayDataset, Normalizer
from fedtrain.data.loaders import load_dataset, load_digits
from fedtrain.data.partition import partition
from fedtrain.errors import DataError

__all__ = ["ClientData", "FederatedData", "apply_class_keep", "apply_label_noise", "build_federated_data"]


@dataclass(frozen=True)
class ClientData:
    """One client's local data (already normalised).

    ``train`` is everything the client trains on (pretraining uses it all); ``labeled`` is the part
    whose labels fine-tuning may use (``labeled-fraction``); ``eval`` is the local evaluation share.
    """

    train: ArrayDataset
    eval: ArrayDataset | None
    labeled: ArrayDataset


@dataclass(frozen=True)
class FederatedData:
    """Everything the server and the clients of one run need."""

    test: ArrayDataset
    val: ArrayDataset
    clients: tuple[ClientData, ...]
    normalizer: Normalizer
    classes: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.test.input_shape

    def label_counts(self) -> np.ndarray:
        """Training samples per (client, class), shape ``(num_clients, num_classes)``."""
        k = len(self.classes)
        return np.stack([np.bincount(c.train.y, minlength=k) for c in self.clients])


def apply_label_noise(y: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Replace a share ``rate`` of labels by a different, uniformly drawn class."""
    if rate <= 0:
        return y
    y = y.copy()
    flip = rng.random(len(y)) < rate
    y[flip] = (y[flip] + rng.integers(1, num_classes, flip.sum())) % num_classes
    return y


def apply_class_keep(y: np.ndarray, keep: dict[int, float], rng: np.random.Generator) -> np.ndarray:
    """Return the indices that survive keeping a share ``keep[c]`` of each class ``c``."""
    mask = np.ones(len(y), dtype=bool)
    for cls, ratio in keep.items():
        idx = np.flatnonzero(y == cls)
        if len(idx) == 0:
            raise DataError(f"class-keep names class {cls}, which the data does not have")
        drop = rng.permutation(idx)[max(1, round(ratio * len(idx))) :]
        mask[drop] = False
    return np.flatnonzero(mask)


def _split(ds: ArrayDataset, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified index split; falls back to a plain split when a class is too rare."""
    idx = np.arange(len(ds.y))
    counts = np.bincount(ds.y)
    stratify = ds.y if counts[counts > 0].min() >= 2 else None
    try:
        return train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as err:
        raise DataError(f"cannot split {len(idx)} samples with fraction {fraction}: {err}") from None


@functools.lru_cache(maxsize=4)
def build_federated_data(data: DataConfig, part: PartitionConfig, seed: int) -> FederatedData:
    """Load, split, perturb, normalise and partition the data (cached per process)."""
    full = (
        load_digits() if data.dataset == "digits" else load_dataset(data.data_path, data.data_format, data.label_column)
    )
    rng = np.random.default_rng(seed)
    rest_idx, test_idx = _split(full, data.test_fraction, seed)
    rest = full.subset(rest_idx)
    if data.val_fraction > 0:
        train_idx, val_idx = _split(rest, data.val_fraction, seed + 1)
    else:
        train_idx, val_idx = np.arange(len(rest.y)), None
    train = rest.subset(train_idx)
    keep = parse_class_keep(data.class_keep)
    if keep:
        train = train.subset(apply_class_keep(train.y, keep, rng))
    train = ArrayDataset(train.x, apply_label_noise(train.y, data.label_noise, full.num_classes, rng), full.classes)

    norm = Normalizer.fit(train.x, data.normalize, full.max_value)

    def scaled(ds: ArrayDataset) -> ArrayDataset:
        return ArrayDataset(norm(ds.x), ds.y, full.classes)

    test = scaled(full.subset(test_idx))
    val = scaled(rest.subset(val_idx)) if val_idx is not None else test
    parts = partition(
        part.partitioner,
        train.y,
        part.num_clients,
        seed=seed,
        alpha=part.dirichlet_alpha,
        classes_per_client=part.classes_per_client,
        quantity_alpha=part.quantity_alpha,
        min_size=part.min_partition_size,
    )
    clients = []
    for cid, idx in enumerate(parts):
        local = scaled(train.subset(idx))
        n_eval = max(1, round(part.client_eval_fraction * len(idx))) if part.client_eval_fraction > 0 else 0
        local_eval = None
        if n_eval and len(idx) - n_eval >= 1:
            order = np.random.default_rng(seed + 1000 + cid).permutation(len(idx))
            local, local_eval = local.subset(np.sort(order[n_eval:])), local.subset(np.sort(order[:n_eval]))
        n_lab = max(1, round(part.labeled_fraction * len(local.y)))
        keep = np.sort(np.random.default_rng(seed + 2000 + cid).permutation(len(local.y))[:n_lab])
        clients.append(ClientData(local, local_eval, local.subset(keep)))
    return FederatedData(test, val, tuple(clients), norm, full.classes)
