"""Shared fixtures: small, fast configurations on the embedded digits data."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from flwr.app import Message

from fedtrain.config import RunConfig, load_config
from fedtrain.logging import get_logger

SMALL = {
    "num-clients": 3,
    "num-rounds": 2,
    "min-clients": 2,
    "hidden-sizes": "32",
    "local-epochs": 1,
    "progress": False,
    "report": False,
}


@pytest.fixture
def small_config(tmp_path: Path):
    """Return a factory of validated small configs writing under ``tmp_path``."""

    def make(**overrides: object) -> RunConfig:
        values = {**SMALL, "out-dir": str(tmp_path / "runs")}
        values.update({k.replace("_", "-"): v for k, v in overrides.items()})
        return load_config(overrides=values)

    return make


@pytest.fixture(autouse=True, scope="session")
def _own_data_cache(tmp_path_factory):
    """Parsed node files are cached under FEDTRAIN_CACHE_DIR: the tests keep theirs out of the home folder."""
    import os

    os.environ.setdefault("FEDTRAIN_CACHE_DIR", str(tmp_path_factory.mktemp("fedtrain-cache")))


@pytest.fixture
def fedtrain_log() -> Iterator[list[str]]:
    """Every message fedtrain's logger emits during the test, in order."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    get_logger().addHandler(handler)
    yield lines
    get_logger().removeHandler(handler)


@pytest.fixture(scope="session")
def train_messages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The first train message of a 1-round in-process run on node-local data (one npz per node, as deployed), with
    its node's Context, pickled: without and with DP."""
    from fedtrain.cli import main as fedtrain_main
    from fedtrain.config import load_config
    from fedtrain.federation import build_client_app
    from fedtrain.runtime import run_inprocess
    from fedtrain.runtime.grid import InProcessGrid

    work = tmp_path_factory.mktemp("messages")
    fedtrain_main(["split", str(work / "nodes"), "--run-config", "num-clients=2", "--server-test"])
    nodes = [{"data-path": str(work / "nodes" / f"client-{i}.npz")} for i in range(2)]
    recorded: dict[str, Path] = {}

    class Recording(InProcessGrid):
        name = ""

        def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
            messages = list(messages)
            for m in messages:
                if m.metadata.message_type.startswith("train") and self.name not in recorded:
                    recorded[self.name] = work / f"{self.name}.pkl"
                    recorded[self.name].write_bytes(pickle.dumps((m, self.contexts[m.metadata.dst_node_id])))
            return super().push_messages(messages)

    for name, dp in (("plain", {}), ("dp", {"dp-level": "sample"})):
        cfg = load_config(overrides={"num-clients": 2, "num-rounds": 1, "data-source": "node", "normalize": "range",
                                     "server-data-path": str(work / "nodes" / "server-test.npz"),
                                     "fraction-evaluate": 0.0, "progress": False, "report": False,
                                     "out-dir": str(work / "runs"), **dp})  # fmt: skip
        grid = Recording(build_client_app(), 2, cfg.to_flat(), node_configs=nodes)
        grid.name = name
        run_inprocess(cfg, grid=grid)
    return recorded
