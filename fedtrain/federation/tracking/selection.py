"""Model selection and early stopping, on validation only (never on the test split)."""

from __future__ import annotations

from fedtrain.config import RunConfig
from fedtrain.federation.run_state import BestRound, RunState

__all__ = ["ModelSelector"]


class ModelSelector:
    """Keeps the best round in ``state`` and counts rounds without validation gain.

    With a validation split the best round has the highest validation accuracy; without one it is the
    latest supervised round and early stopping is off.
    """

    def __init__(self, cfg: RunConfig, state: RunState, *, has_val: bool) -> None:
        self.patience = cfg.strategy.early_stopping_patience
        self.min_delta = cfg.strategy.early_stopping_min_delta
        self.state, self.has_val = state, has_val

    def observe(self, global_round: int, phase: str, accuracy: float | None, val_accuracy: float | None) -> bool:
        """Update the best round; True when this round became the best."""
        s = self.state
        best = BestRound(round=global_round, accuracy=accuracy, val_accuracy=val_accuracy, phase=phase)
        if val_accuracy is None:
            s.best = best
            return True
        improved = val_accuracy > s.best_val + self.min_delta
        became_best = val_accuracy > s.best_val
        if became_best:
            s.best, s.best_val = best, val_accuracy
        s.bad_rounds = 0 if improved else s.bad_rounds + 1
        return became_best

    def stop_reason(self) -> str | None:
        """Why to stop early, or None."""
        if self.has_val and self.patience and self.state.bad_rounds >= self.patience:
            return f"early stopping: no validation gain above {self.min_delta} for {self.patience} rounds"
        return None
