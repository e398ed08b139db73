"""What one federated round produced: the record every bookkeeping part reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord

__all__ = ["RoundOutcome"]


@dataclass
class RoundOutcome:
    """What one federated round produced."""

    phase: str
    phase_round: int
    phase_rounds: int
    global_round: int
    arrays: ArrayRecord
    lr: float
    train_loss: float | None
    client_eval_loss: float | None
    client_eval_accuracy: float | None
    clients_trained: int
    clients_evaluated: int
    failures: list[str]
    seconds: float
    declined: int = 0  # clients that refused the round (privacy budget)
    supervised: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific central metrics
    strategy_state: dict[str, Any] = field(default_factory=dict)  # server optimizer moments, for the checkpoint
