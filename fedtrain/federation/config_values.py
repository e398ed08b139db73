"""Typed reads of the server's train and evaluate configs, for every client runtime (imports no torch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedtrain.errors import ConfigError, FedtrainError

__all__ = ["config_number"]


def config_number(
    config: Mapping[str, Any], key: str, default: float | None = None, *, error: type[FedtrainError] = ConfigError
) -> float:
    """A numeric entry of the server's config (the server always sends it; ``default`` for older servers).

    Raises ``error`` (a ConfigError; the ONNX runtime passes its own model error) for a missing or non-numeric
    entry.
    """
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"the server's config has {key}={value!r}, expected a number")
    return float(value)
