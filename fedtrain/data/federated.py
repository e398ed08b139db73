"""Turn a config into the data of one simulated federation.

Central splits (test, validation) stay with the server; the training split is perturbed for
experiments (label noise, class imbalance), partitioned among clients, and each client keeps
a small local evaluation share. Everything is derived from the seed, so every process (the
server, any client, a Ray actor) rebuilds exactly the same arrays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedtrain.config import DataConfig, PartitionConfig, RunConfig, parse_class_keep
from fedtrain.data.dataset import ArrayDataset, Normalizer
from fedtrain.data.loaders import load_dataset, load_digits
from fedtrain.data.partition import partition
from fedtrain.errors import DataError

__all__ = [
    "ClientData",
    "FederatedData",
    "RawSplits",
    "apply_class_keep",
    "apply_label_noise",
    "build_federated_data",
    "client_split",
    "normalize_noise_of",
    "raw_splits",
    "save_npz",
    "scale_client",
    "write_node_files",
]


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
    from sklearn.model_selection import train_test_split  # here, not at the top: a second of every client start

    try:
        return train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as err:
        raise DataError(f"cannot split {len(idx)} samples with fraction {fraction}: {err}") from None


@dataclass(frozen=True)
class RawSplits:
    """The run's splits before normalisation: what the server keeps and what each client gets.

    ``train`` is the perturbed training split (label noise, class imbalance) and ``parts`` the
    partitioner's indices into it, one array per client. ``fedtrain split`` writes these raw
    values, so scaling stays the federation's job.
    """

    full: ArrayDataset
    test: ArrayDataset
    val: ArrayDataset | None
    train: ArrayDataset
    parts: tuple[np.ndarray, ...]


@functools.lru_cache(maxsize=2)
def raw_splits(data: DataConfig, part: PartitionConfig, seed: int) -> RawSplits:
    """Load, split, perturb and partition the data, without scaling (cached per process)."""
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
    noisy = apply_label_noise(train.y, data.label_noise, full.num_classes, rng)
    train = ArrayDataset(train.x, noisy, full.classes, full.max_value)
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
    val = rest.subset(val_idx) if val_idx is not None else None
    return RawSplits(full, full.subset(test_idx), val, train, tuple(parts))


def client_split(local: ArrayDataset, part: PartitionConfig, seed: int, cid: int) -> ClientData:
    """Carve one client's evaluation share and labelled part out of its records (seeded by ``cid``).

    Used for a simulated partition and for a node's own file alike, so both split the same way.
    """
    n = len(local.y)
    n_eval = max(1, round(part.client_eval_fraction * n)) if part.client_eval_fraction > 0 else 0
    local_eval = None
    if n_eval and n - n_eval >= 1:
        order = np.random.default_rng(seed + 1000 + cid).permutation(n)
        local, local_eval = local.subset(np.sort(order[n_eval:])), local.subset(np.sort(order[:n_eval]))
    n_lab = max(1, round(part.labeled_fraction * len(local.y)))
    keep = np.sort(np.random.default_rng(seed + 2000 + cid).permutation(len(local.y))[:n_lab])
    return ClientData(local, local_eval, local.subset(keep))


def scale_client(client: ClientData, norm: Normalizer) -> ClientData:
    """``client`` with every part scaled by ``norm``."""

    def scaled(ds: ArrayDataset) -> ArrayDataset:
        return ArrayDataset(norm(ds.x), ds.y, ds.classes)

    return ClientData(scaled(client.train), scaled(client.eval) if client.eval else None, scaled(client.labeled))


def _dp_standard(raw: RawSplits, data: DataConfig, seed: int, noise_multiplier: float) -> Normalizer:
    """The z-score from every client's noisy clipped sums (``normalize=dp-standard``)."""
    from fedtrain.data.dp_normalize import dp_standard_statistics

    if raw.full.max_value is None:
        raise DataError("normalize='dp-standard' needs a format with a known value range (digits, IDX, images)")
    if noise_multiplier <= 0:
        raise DataError("normalize='dp-standard' needs sample-level DP with a finite dp-target-epsilon")
    parts = [raw.train.x[idx] for idx in raw.parts]
    shift, scale = dp_standard_statistics(parts, raw.full.max_value, clip=data.normalize_dp_clip,
                                          noise_multiplier=noise_multiplier, seed=seed)  # fmt: skip
    return Normalizer("dp-standard", shift, scale, 5.0)


def build_federated_data(
    data: DataConfig, part: PartitionConfig, seed: int, normalize_noise: float = 0.0
) -> FederatedData:
    """Load, split, perturb, normalise and partition the data (cached per process).

    ``normalize_noise`` is the noise multiplier of ``normalize=dp-standard``'s release
    (:func:`fedtrain.privacy.dp_normalize.normalization_segments`); other methods ignore it.
    """
    return _build_federated_data(data, part, seed, normalize_noise if data.normalize == "dp-standard" else 0.0)


def normalize_noise_of(cfg: RunConfig) -> float:
    """The ``normalize_noise`` argument of :func:`build_federated_data` for ``cfg`` (0 unless ``dp-standard``)."""
    from fedtrain.config.dp_recipes import normalization_segments

    segments = normalization_segments(cfg)
    return segments[0][0] if segments else 0.0


@functools.lru_cache(maxsize=4)
def _build_federated_data(data: DataConfig, part: PartitionConfig, seed: int, normalize_noise: float) -> FederatedData:
    raw = raw_splits(data, part, seed)
    classes = raw.full.classes
    if data.normalize == "dp-standard":
        norm = _dp_standard(raw, data, seed, normalize_noise)
    else:
        norm = Normalizer.fit(raw.train.x, data.normalize, raw.full.max_value)

    def scaled(ds: ArrayDataset) -> ArrayDataset:
        return ArrayDataset(norm(ds.x), ds.y, classes, raw.full.max_value)  # the raw format's range, for export

    test = scaled(raw.test)
    val = scaled(raw.val) if raw.val is not None else test
    clients = [client_split(scaled(raw.train.subset(idx)), part, seed, cid) for cid, idx in enumerate(raw.parts)]
    return FederatedData(test, val, tuple(clients), norm, classes)


def save_npz(path: Path, ds: ArrayDataset) -> None:
    """Write ``ds`` raw (x, y as indices into classes, classes, and max_value when the format has one)."""
    arrays: dict[str, np.ndarray] = {
        "x": ds.x.astype(np.float32),
        "y": ds.y.astype(np.int64),
        "classes": np.array(ds.classes, dtype=str),
    }
    if ds.max_value is not None:
        arrays["max_value"] = np.array(ds.max_value, dtype=np.float64)
    with path.open("wb") as fh:  # a file handle: np.savez would append .npz to a name without it
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types ** as its allow_pickle flag


def write_node_files(cfg: RunConfig, out_dir: str | Path, *, server_test: bool, overwrite: bool) -> list[Path]:
    """Write each client's partition to ``out_dir/client-<i>.npz`` (and the test split to ``server-test.npz``).

    Values are raw (unscaled): the federation decides the normaliser and sends it with the model.
    Returns the files written, clients first.
    """
    out = Path(out_dir).expanduser()
    raw = raw_splits(cfg.data, cfg.partition, cfg.runtime.seed)
    targets = [out / f"client-{i}.npz" for i in range(len(raw.parts))]
    if server_test:
        targets.append(out / "server-test.npz")
    existing = [p.name for p in targets if p.exists()]
    if existing and not overwrite:
        raise DataError(f"{out}: {existing[0]} (and {len(existing) - 1} more) already exist; pass --force to replace")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; give a folder for the node files")
    out.mkdir(parents=True, exist_ok=True)
    train = raw.train
    for path, idx in zip(targets, raw.parts, strict=False):
        save_npz(path, train.subset(idx))  # the partition's order, so a node's split equals the simulated one
    if server_test:
        save_npz(targets[-1], raw.test)
    return targets
