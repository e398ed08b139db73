"""Where data comes from: a client's :class:`DataSource` and the server's :class:`ServerData`.

In a simulation (``data-source=partition``) every process derives the whole federation's data
from the seed; a client takes the partitioner's partition and the server the central splits,
exactly as :func:`~fedtrain.data.federated.build_federated_data` makes them. On a real device
(``data-path`` in the node config) a client reads only its own file, and with
``data-source=node`` the server reads no client data at all: classes, input shape and the
normaliser come from the server's own file (``server-data-path``) or from config keys.

What the federation agrees on (:class:`DataSpec`: classes, input shape, normaliser) is decided
by the server and travels with every train and evaluate config (:func:`spec_to_config`), so a
node scales its records with the federation's normaliser and never fits its own unless
``normalize-local=true`` says so.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedtrain import wire
from fedtrain.config import DataConfig, PartitionConfig, RunConfig
from fedtrain.config.data_source import parse_classes, parse_input_shape
from fedtrain.data.cache import cached
from fedtrain.data.dataset import ArrayDataset, Normalizer, normalizer_from_config, normalizer_to_config
from fedtrain.data.federated import (
    ClientData,
    FederatedData,
    _split,
    build_federated_data,
    client_split,
    normalize_noise_of,
    scale_client,
)
from fedtrain.data.loaders import load_dataset
from fedtrain.errors import ConfigError, DataError
from fedtrain.logging import get_logger

__all__ = [
    "DataSource",
    "DataSpec",
    "FileSource",
    "PartitionSource",
    "ServerData",
    "data_source",
    "partition_id",
    "received_spec",
    "server_data",
    "spec_from_config",
    "spec_to_config",
]

log = get_logger()

DATA_PATH_KEY = "data-path"  # node config: this node's own data file
DATA_FORMAT_KEY = "data-format"  # node config: its format, when the suffix does not tell


@dataclass(frozen=True)
class DataSpec:
    """What every node of a federation must agree on: label names, input shape and input scaling."""

    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    normalizer: Normalizer


def spec_to_config(spec: DataSpec) -> dict[str, Any]:
    """``spec`` as ConfigRecord entries (scalars and lists of scalars), for every train and evaluate config."""
    return {
        wire.DATA_CLASSES: list(spec.classes),
        wire.DATA_INPUT_SHAPE: list(spec.input_shape),
        **normalizer_to_config(spec.normalizer),
    }


def spec_from_config(config: Mapping[str, Any]) -> DataSpec | None:
    """The spec a train or evaluate config carries, or None when the server sent none."""
    norm = normalizer_from_config(config)
    if norm is None or wire.DATA_CLASSES not in config or wire.DATA_INPUT_SHAPE not in config:
        return None
    shape = tuple(int(d) for d in config[wire.DATA_INPUT_SHAPE])
    return DataSpec(tuple(str(c) for c in config[wire.DATA_CLASSES]), shape, norm)


def partition_id(node_config: Mapping[str, Any], cfg: RunConfig) -> int:
    """This node's partition id (its index among the clients), checked against ``num-clients``."""
    if "partition-id" not in node_config:
        if DATA_PATH_KEY in node_config:
            raise ConfigError(
                "this SuperNode has a data-path but no partition-id (0..num-clients-1) in its node config; the id "
                'names the client in the privacy ledger and seeds its split: --node-config "data-path=FILE '
                'partition-id=N" (fedtrain split prints these lines)'
            )
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


class DataSource(ABC):
    """Where one client's records come from; :meth:`client_data` gives them scaled as the federation agreed."""

    def __init__(self, cfg: RunConfig, pid: int) -> None:
        self.cfg = cfg
        self.partition_id = pid

    @abstractmethod
    def client_data(self, spec: DataSpec) -> ClientData:
        """Training records, local evaluation share and labelled part, scaled by the spec's normaliser."""

    @abstractmethod
    def describe(self) -> str:
        """Where the records come from, for log lines."""


class PartitionSource(DataSource):
    """Simulation: the partitioner's partition ``partition-id`` of the data every process rebuilds from the seed."""

    def client_data(self, spec: DataSpec) -> ClientData:
        fd = build_federated_data(
            self.cfg.data, self.cfg.partition, self.cfg.runtime.seed, normalize_noise_of(self.cfg)
        )
        if spec.classes != fd.classes or spec.input_shape != fd.input_shape:
            raise DataError(
                f"the server's data ({len(spec.classes)} classes, inputs {spec.input_shape}) differs from this "
                f"simulation's ({len(fd.classes)} classes, inputs {fd.input_shape}); do server and clients share "
                "one run config?"
            )
        # Already scaled by the pooled normaliser, which is the one the server sends.
        return fd.clients[self.partition_id]

    def describe(self) -> str:
        return f"partition {self.partition_id} of the simulated federation"


class FileSource(DataSource):
    """Deployment: the node's own file, split into training, local evaluation and labelled records.

    The split is :func:`~fedtrain.data.federated.client_split` with this node's partition id, the
    same as a simulated partition's; the records are scaled by the normaliser the server sends.
    """

    def __init__(self, cfg: RunConfig, pid: int, path: str | Path, data_format: str = "auto") -> None:
        super().__init__(cfg, pid)
        self.path = Path(path).expanduser().resolve()
        self.data_format = data_format

    def raw(self, spec: DataSpec) -> ClientData:
        """The node's records mapped onto the federation's classes, before scaling."""
        if not self.path.exists():
            raise DataError(
                f"data-path {str(self.path)!r} in this node's config does not exist; point it at this device's "
                'data file (e.g. one written by `fedtrain split`): --node-config "data-path=FILE partition-id=N"'
            )
        stamp = self.path.stat().st_mtime_ns
        cfg = self.cfg
        return _node_records(
            str(self.path), self.data_format, cfg.data.label_column, stamp, spec.classes, spec.input_shape,
            cfg.partition, cfg.runtime.seed, self.partition_id,
        )  # fmt: skip

    def client_data(self, spec: DataSpec) -> ClientData:
        raw = self.raw(spec)
        norm = spec.normalizer
        if self.cfg.data.normalize_local:  # opt-in: statistics of this node's own training records
            max_value = raw.train.max_value or self.cfg.data.input_max or None
            norm = Normalizer.fit(raw.train.x, self.cfg.data.normalize, max_value)
        if tuple(np.shape(norm.shift)) not in (spec.input_shape, ()):
            raise DataError(
                f"the server's normaliser has shape {np.shape(norm.shift)} but inputs have shape {spec.input_shape}"
            )
        return scale_client(raw, norm)

    def describe(self) -> str:
        return f"node file {self.path}"


def _onto_classes(ds: ArrayDataset, classes: tuple[str, ...], where: str) -> ArrayDataset:
    """Relabel ``ds`` by class name onto the federation's ``classes`` (a node may hold only some of them)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in ds.classes if c not in index]
    if unknown:
        raise DataError(
            f"{where}: classes {unknown[:10]} are not among the federation's {list(classes)[:20]}; relabel the file, "
            "or (data-source=node) set classes to the full list"
        )
    mapping = np.array([index[c] for c in ds.classes], dtype=np.int64)
    return ArrayDataset(ds.x, mapping[ds.y], classes, ds.max_value)


@functools.lru_cache(maxsize=8)
def _node_records(
    path: str,
    data_format: str,
    label_column: str,
    stamp: int,  # the file's mtime: a rewritten file is read again
    classes: tuple[str, ...],
    input_shape: tuple[int, ...],
    part: PartitionConfig,
    seed: int,
    pid: int,
) -> ClientData:
    parsed = cached(Path(path), f"{data_format}\0{label_column}",
                    lambda: load_dataset(path, data_format, label_column, min_classes=1))  # fmt: skip
    ds = _onto_classes(parsed, classes, path)
    if ds.input_shape != input_shape:
        raise DataError(
            f"{path}: inputs have shape {ds.input_shape} but the federation's model takes {input_shape}; write the "
            "node files from the same data set as the server's (fedtrain split)"
        )
    return client_split(ds, part, seed, pid)


def data_source(cfg: RunConfig, node_config: Mapping[str, Any]) -> DataSource:
    """The node's own file when its node config has ``data-path``, else its simulated partition."""
    path = str(node_config.get(DATA_PATH_KEY, "")).strip()
    if path:
        return FileSource(cfg, partition_id(node_config, cfg), path, str(node_config.get(DATA_FORMAT_KEY, "auto")))
    if cfg.data.data_source == "node":
        raise DataError(
            "data-source=node but this node has no data-path in its node config; start it with "
            '--node-config "data-path=FILE partition-id=N" (fedtrain split prints these lines)'
        )
    return PartitionSource(cfg, partition_id(node_config, cfg))


@dataclass(frozen=True)
class ServerData:
    """What the server holds: central splits (None when it has no data), the normaliser, classes and input shape.

    ``federated`` is the whole simulated federation in ``data-source=partition`` (label counts, DP
    preflight over every client's size), and None in ``data-source=node``.
    """

    test: ArrayDataset | None
    val: ArrayDataset | None
    normalizer: Normalizer
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    federated: FederatedData | None = None

    @property
    def spec(self) -> DataSpec:
        return DataSpec(self.classes, self.input_shape, self.normalizer)


def server_data(cfg: RunConfig) -> ServerData:
    """The server's data: today's central splits in a simulation; in node mode only the server's own file."""
    if cfg.data.data_source == "partition":
        fd = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed, normalize_noise_of(cfg))
        return ServerData(fd.test, fd.val, fd.normalizer, fd.classes, fd.input_shape, fd)
    return _node_server_data(cfg.data, cfg.runtime.seed)


@functools.lru_cache(maxsize=4)
def _node_server_data(d: DataConfig, seed: int) -> ServerData:
    declared_classes, declared_shape = parse_classes(d.classes), parse_input_shape(d.input_shape)
    if not d.server_data_path:
        if not declared_classes or not declared_shape:
            raise ConfigError("data-source=node without server-data-path needs classes and input-shape")
        placeholder = np.zeros((1, *declared_shape), dtype=np.float32)  # range and none read no data
        method = "none" if d.normalize_local else d.normalize
        norm = Normalizer.fit(placeholder, method, d.input_max or None)
        log.info("data-source=node and no server-data-path: central evaluation is skipped")
        return ServerData(None, None, norm, declared_classes, declared_shape)
    path = d.server_data_path
    raw = load_dataset(path, "auto", d.label_column, min_classes=1)
    classes = declared_classes or raw.classes
    raw = _onto_classes(raw, classes, f"server-data-path {path}")
    if declared_shape and declared_shape != raw.input_shape:
        raise DataError(f"server-data-path {path}: inputs have shape {raw.input_shape} but input-shape={d.input_shape}")
    # The server's own records, no client data: standard/minmax are fitted on them.
    norm = Normalizer.fit(raw.x, d.normalize, raw.max_value or d.input_max or None)
    scaled = ArrayDataset(norm(raw.x), raw.y, classes, raw.max_value)
    if d.val_fraction > 0:
        test_idx, val_idx = _split(scaled, d.val_fraction, seed + 1)
        test, val = scaled.subset(np.sort(test_idx)), scaled.subset(np.sort(val_idx))
    else:
        test = val = scaled  # as in a simulation without a validation split
    return ServerData(test, val, norm, classes, raw.input_shape)


def received_spec(cfg: RunConfig, config: Mapping[str, Any] | None) -> DataSpec:
    """The spec in the server's message; in a simulation a server that sent none means today's data."""
    spec = spec_from_config(config) if config is not None else None
    if spec is not None:
        return spec
    if cfg.data.data_source == "node":
        raise DataError(
            "the server's message carries no data spec (classes, input shape, normaliser), which data-source=node "
            "needs; run server and clients of the same fedtrain version"
        )
    return server_data(cfg).spec
