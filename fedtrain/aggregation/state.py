"""Checkpoint the server-side optimizer state of Flower's strategies, so that resume is exact.

FedAdam and FedYogi keep first and second moments (``m_t``, ``v_t``), FedAvgM a momentum vector;
without them a resumed run restarts the moments and drifts from the uncut run. Flower's strategies
have no ``state_dict``, so the attributes are read and written here, through any wrapper (Flower's DP
wrappers keep the wrapped strategy in ``.strategy``). Arrays are stored as tensors: checkpoints are
loaded with ``weights_only``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy

__all__ = ["STATEFUL_ATTRIBUTES", "load_strategy_state", "strategy_state"]

STATEFUL_ATTRIBUTES = ("m_t", "v_t", "momentum_vector")


def _innermost(strategy: Strategy) -> Strategy:
    while isinstance(wrapped := getattr(strategy, "strategy", None), Strategy):
        strategy = wrapped
    return strategy


def _to_stored(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_stored(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_stored(v) for v in value]
    return torch.from_numpy(np.array(value, copy=True))


def _from_stored(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _from_stored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_stored(v) for v in value]
    return value.numpy().copy()


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """The optimizer state of ``strategy`` (empty for stateless strategies such as FedAvg)."""
    inner = _innermost(strategy)
    return {a: _to_stored(getattr(inner, a)) for a in STATEFUL_ATTRIBUTES if getattr(inner, a, None) is not None}


def load_strategy_state(strategy: Strategy, state: dict[str, Any]) -> None:
    """Put back what :func:`strategy_state` saved."""
    inner = _innermost(strategy)
    for attr, value in state.items():
        if attr not in STATEFUL_ATTRIBUTES:
            raise KeyError(f"strategy state {attr!r} is not one fedtrain checkpoints")
        setattr(inner, attr, _from_stored(value))
