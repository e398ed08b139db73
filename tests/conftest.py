"""Shared fixtures: small, fast configurations on the embedded digits data."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtrain.config import RunConfig, load_config

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
