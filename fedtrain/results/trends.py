"""Spot a training loss that diverges: rising round after round, or not finite.

DP training is noisy, so one or two rises mean nothing. A *rising episode* is ``rises``
strict rises in a row that also leave the loss at least ``margin`` (relative) above the
phase's minimum so far; it is reported once, when it starts, and ends at the first round
whose loss does not rise. A non-finite loss (NaN, inf) is reported once per run of such rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["LossAlert", "LossWatch"]


@dataclass(frozen=True)
class LossAlert:
    """One divergence episode of ``phase``, from ``first_round`` to ``last_round`` (so far)."""

    phase: str
    kind: str  # "rising" | "non-finite"
    first_round: int  # the round the rise started from; the bad round when non-finite
    last_round: int
    first_loss: float
    last_loss: float
    rises: int  # consecutive rises (0 when non-finite)
    minimum: float  # the phase's lowest finite loss so far (NaN if none yet)
    quantity: str = "training loss"  # what was watched, for the message

    def message(self) -> str:
        """One line naming phase, rounds and losses."""
        if self.kind == "non-finite":
            return f"phase {self.phase}: {self.quantity} is {self.last_loss} in round {self.last_round} (not finite)"
        return (
            f"phase {self.phase}: {self.quantity} rose {self.rises} rounds in a row, rounds {self.first_round}-"
            f"{self.last_round}: {self.first_loss:.4g} -> {self.last_loss:.4g} (phase minimum {self.minimum:.4g}); "
            "training may be diverging"
        )


class LossWatch:
    """Watch one phase's training loss; the state is a plain dict, so it can go into a checkpoint.

    Parameters
    ----------
    state
        Mutable dict kept by the caller (empty for a new phase); updated in place.
    phase
        Phase name used in alerts.
    rises
        Strict consecutive rises that make an episode.
    margin
        How far above the phase minimum (relative) the loss must be, so that noise around a
        converged loss does not count.
    """

    def __init__(self, state: dict[str, Any], phase: str, *, rises: int = 3, margin: float = 0.2) -> None:
        self.state, self.phase, self.rises, self.margin = state, phase, rises, margin
        state.setdefault("start", None)  # [round, loss] the current rise started from
        state.setdefault("last", None)  # [round, loss] of the latest finite loss
        state.setdefault("count", 0)  # strict rises since "start"
        state.setdefault("minimum", None)
        state.setdefault("rising", False)  # inside a reported rising episode
        state.setdefault("non_finite", False)  # inside a reported non-finite run

    def observe(self, round_: int, loss: float | None, quantity: str = "training loss") -> LossAlert | None:
        """Record round ``round_``'s loss (``quantity`` names it); return an alert when a new episode starts."""
        s = self.state
        if loss is None:  # no client trained: nothing to judge
            return None
        if not math.isfinite(loss):
            was, s["non_finite"] = s["non_finite"], True
            s["start"], s["last"], s["count"], s["rising"] = None, None, 0, False  # no rise runs across it
            minimum = math.nan if s["minimum"] is None else s["minimum"]
            if was:
                return None
            return LossAlert(self.phase, "non-finite", round_, round_, loss, loss, 0, minimum, quantity)
        s["non_finite"] = False
        if s["last"] is not None and loss > s["last"][1]:
            s["count"] += 1
        else:  # the rise is broken (or never began); this round may start a new one
            s["start"], s["count"], s["rising"] = [round_, loss], 0, False
        s["last"] = [round_, loss]
        s["minimum"] = loss if s["minimum"] is None else min(s["minimum"], loss)
        minimum = s["minimum"]
        high = loss - minimum >= self.margin * max(abs(minimum), 1e-12)
        if s["rising"] or s["count"] < self.rises or not high:
            return None
        s["rising"] = True
        (first_round, first_loss) = s["start"]
        return LossAlert(self.phase, "rising", first_round, round_, first_loss, loss, s["count"], minimum, quantity)
