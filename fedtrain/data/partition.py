"""Seeded partitioners: split sample indices among clients.

Each partitioner takes the training labels, the number of clients and a
``numpy.random.Generator`` and returns one index array per client; every sample is assigned
to exactly one client. These are written on numpy rather than taken from ``flwr-datasets``,
whose partitioners work on Hugging Face ``datasets`` objects (pulling in ``datasets`` and
``pyarrow``) while fedtrain keeps all data as in-memory arrays; the algorithms follow the
same definitions (Dirichlet label skew of Hsu et al. 2019, shards of McMahan et al. 2017).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedtrain.errors import ConfigError
from fedtrain.registry import Registry

__all__ = ["PARTITIONERS", "Partitioner", "dirichlet", "iid", "partition", "pathological", "quantity_skew"]

Partitioner = Callable[..., list[np.ndarray]]
"""``(labels, num_clients, rng, *, alpha, classes_per_client, quantity_alpha, min_size)`` -> index arrays.

A partitioner takes the keyword arguments it needs and ignores the others (``**_``).
"""

PARTITIONERS = Registry[Partitioner]("partitioner")

_MAX_TRIES = 100


@PARTITIONERS.register("iid")
def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator, **_: object) -> list[np.ndarray]:
    """Shuffle, then cut into near-equal parts."""
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_clients)]


def _check_min_size(parts: list[np.ndarray], min_size: int) -> bool:
    return min(len(p) for p in parts) >= min_size


@PARTITIONERS.register("dirichlet")
def dirichlet(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, alpha: float, min_size: int, **_: object
) -> list[np.ndarray]:
    """Label skew: each class is split among clients in proportions ~ Dirichlet(alpha).

    Draws are repeated until every client holds at least ``min_size`` samples.
    """
    for _try in range(_MAX_TRIES):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(idx)).astype(int)[:-1]
            for client, part in enumerate(np.split(idx, cuts)):
                buckets[client].append(part)
        parts = [np.sort(np.concatenate(b)) for b in buckets]
        if _check_min_size(parts, min_size):
            return parts
    raise ConfigError(
        f"dirichlet-alpha={alpha} with {num_clients} clients gave a client under min-partition-size={min_size} "
        f"in {_MAX_TRIES} draws; raise dirichlet-alpha, lower num-clients or lower min-partition-size"
    )


@PARTITIONERS.register("pathological")
def pathological(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, classes_per_client: int, **_: object
) -> list[np.ndarray]:
    """Each client holds ``classes_per_client`` classes; a class is shared evenly by its holders."""
    classes = np.unique(labels)
    if classes_per_client > len(classes):
        raise ConfigError(f"classes-per-client={classes_per_client} exceeds the {len(classes)} classes in the data")
    if num_clients * classes_per_client < len(classes):
        raise ConfigError(
            f"pathological partitioning with {num_clients} clients x {classes_per_client} classes cannot cover "
            f"{len(classes)} classes; raise classes-per-client or num-clients"
        )
    order = rng.permutation(classes)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for client in range(num_clients):
        for j in range(classes_per_client):
            holders[int(order[(client * classes_per_client + j) % len(classes)])].append(client)
    buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for cls, owners in holders.items():
        idx = rng.permutation(np.flatnonzero(labels == cls))
        for owner, part in zip(owners, np.array_split(idx, len(owners)), strict=True):
            buckets[owner].append(part)
    return [np.sort(np.concatenate(b)) if b else np.array([], dtype=int) for b in buckets]


@PARTITIONERS.register("quantity-skew")
def quantity_skew(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, quantity_alpha: float, min_size: int, **_: object
) -> list[np.ndarray]:
    """IID content, client sizes in proportions ~ Dirichlet(quantity_alpha)."""
    n = len(labels)
    if n < num_clients * min_size:
        raise ConfigError(f"{n} training samples cannot give {num_clients} clients min-partition-size={min_size} each")
    for _try in range(_MAX_TRIES):
        cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, quantity_alpha))) * n).astype(int)[:-1]
        parts = [np.sort(p) for p in np.split(rng.permutation(n), cuts)]
        if _check_min_size(parts, min_size):
            return parts
    raise ConfigError(
        f"quantity-alpha={quantity_alpha} gave a client under min-partition-size={min_size} in {_MAX_TRIES} draws; "
        "raise quantity-alpha or lower min-partition-size"
    )


def partition(
    name: str,
    labels: np.ndarray,
    num_clients: int,
    *,
    seed: int,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    quantity_alpha: float = 1.0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` among ``num_clients`` with the partitioner called ``name``.

    Raises
    ------
    ConfigError
        For an unknown name (naming the choices) or a split the data cannot give.
    """
    split = PARTITIONERS.get(name)
    if len(labels) < num_clients:
        raise ConfigError(f"{len(labels)} training samples cannot be split among num-clients={num_clients}")
    rng = np.random.default_rng(seed)
    return split(
        labels,
        num_clients,
        rng,
        alpha=alpha,
        classes_per_client=classes_per_client,
        quantity_alpha=quantity_alpha,
        min_size=min_size,
    )
