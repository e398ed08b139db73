"""A client's whole-run DP-SGD history and the search for sigma: one implementation for every client runtime.

The torch client (:class:`fedtrain.privacy.accountant.ClientAccountant`, Opacus' conversions) and the device
(:class:`fedtrain.edge.train.accountant.EdgeAccountant`, RDP in numpy) differ only in how a history becomes an
epsilon. What a history is, how it merges, how it is stored in ``Context.state`` and how sigma is searched for are
here, in plain Python, so that a device without torch imports the same code the server audits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["DPHistory", "Segment", "search_sigma"]

Segment = tuple[float, float, int]  # (noise multiplier sigma, sampling rate q, steps)
_H = TypeVar("_H", bound="DPHistory")


@dataclass
class DPHistory:
    """Segments of Poisson-subsampled Gaussian steps; a subclass says how they become an epsilon."""

    mechanism: str
    history: list[Segment] = field(default_factory=list)

    def spent(self, history: list[Segment], delta: float) -> float:
        """Epsilon of ``history`` (a non-empty list of segments) at ``delta``."""
        raise NotImplementedError

    @property
    def steps(self) -> int:
        return sum(s for _, _, s in self.history)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Add ``steps`` steps; a segment of the same (sigma, q) as the last is merged (PRV slows with segments)."""
        if steps <= 0:
            return
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, n = self.history[-1]
            self.history[-1] = (sigma, q, n + steps)
        else:
            self.history.append((noise_multiplier, sample_rate, steps))

    def epsilon(self, delta: float, extra: Segment | None = None) -> float:
        """Epsilon spent so far, or after ``extra`` more steps (a projection; nothing is recorded)."""
        history = list(self.history) + ([extra] if extra and extra[2] > 0 else [])
        return self.spent(history, delta) if history else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "sigma": [float(a) for a, _, _ in self.history],
            "q": [float(b) for _, b, _ in self.history],
            "steps": [int(c) for _, _, c in self.history],
        }

    @classmethod
    def from_state_dict(cls: type[_H], state: Mapping[str, Any]) -> _H:
        history = zip(state["sigma"], state["q"], state["steps"], strict=True)
        return cls(str(state["mechanism"]), [(float(s), float(q), int(n)) for s, q, n in history])


def search_sigma(spent: Callable[[float], float], target_epsilon: float, tolerance: float) -> float:
    """The smallest sigma (within ``tolerance`` in epsilon) with ``spent(sigma) <= target_epsilon``.

    ``spent`` falls as sigma grows; the caller has checked that the target is reachable. The result never
    exceeds the target.
    """
    low, high = 0.0, 1.0
    while spent(high) > target_epsilon:
        low, high = high, 2 * high
    while high - low > 1e-6 and target_epsilon - spent(high) > tolerance:
        mid = (low + high) / 2
        if spent(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high
