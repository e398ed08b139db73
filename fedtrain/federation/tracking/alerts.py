"""Warnings a user must not miss: kept once per run for summary.json, and the loss watch."""

from __future__ import annotations

from typing import Any

from fedtrain.federation.rounds import RoundOutcome
from fedtrain.federation.run_state import RunState
from fedtrain.logging import get_logger
from fedtrain.results.trends import LossWatch

__all__ = ["LossMonitor", "RunWarnings"]

log = get_logger()


class RunWarnings:
    """Logs a warning and keeps it in the run state (once per run, across ``--resume``)."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def warn(self, message: str) -> None:
        if message not in self.state.warnings:
            log.warning("%s", message)
            self.state.warnings.append(message)


class LossMonitor:
    """Warns when a stage's loss keeps rising or is not finite.

    The clients' training loss when they report it; under DP they keep it to themselves, so the server
    watches its own central loss instead (validation, else test: a warning selects nothing).
    """

    def __init__(self, state: RunState, warnings: RunWarnings, *, has_val: bool) -> None:
        self.watch, self.warnings, self.has_val = state.loss_watch, warnings, has_val

    def observe(self, outcome: RoundOutcome, record: dict[str, Any]) -> None:
        watch = self.watch
        if watch.get("phase") != outcome.phase:  # a new stage: its loss is on a new scale
            watch.clear()
            watch["phase"] = outcome.phase
        quantity, loss = "training loss", outcome.train_loss
        if loss is None:
            name = "recon_error" if not outcome.supervised else "val_loss" if self.has_val else "test_loss"
            quantity, loss = f"central {name.replace('_', ' ')}", record.get(name)
        if loss is None:  # the server holds no data to watch
            return
        alert = LossWatch(watch.setdefault("state", {}), outcome.phase).observe(outcome.phase_round, loss, quantity)
        if alert is not None:
            self.warnings.warn(alert.message())
