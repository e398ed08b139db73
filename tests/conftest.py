"""Shared fixtures: small, fast configurations on the embedded digits data."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

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
