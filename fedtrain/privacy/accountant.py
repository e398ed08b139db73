"""One privacy accountant per client for the whole run.

The accountant is Opacus' (``rdp`` or ``prv``) over a compact history of
``(noise_multiplier, sample_rate, steps)`` segments. It lives in the client's
``Context.state`` between rounds and is rebuilt from the server's checkpoint on resume, so
epsilon composes over every phase and round of a run, never per round.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from opacus.accountants import create_accountant

from fedtrain.errors import ConfigError

__all__ = ["ACCOUNTANTS", "RDP_ORDERS", "ClientAccountant"]

ACCOUNTANTS = ("rdp", "prv")

# Whole-number RDP orders. At these orders Opacus and Google's dp-accounting agree to ~1e-13;
# dropping fractional orders makes epsilon at most about 1% larger (conservative).
RDP_ORDERS: tuple[float, ...] = tuple(float(a) for a in range(2, 257))


@dataclass
class ClientAccountant:
    """History of one client's DP-SGD steps and the epsilon they spend."""

    mechanism: str
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mechanism not in ACCOUNTANTS:
            raise ConfigError(f"dp-accountant={self.mechanism!r} is not one of {', '.join(ACCOUNTANTS)}")

    @property
    def steps(self) -> int:
        return sum(s for _, _, s in self.history)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Add ``steps`` DP-SGD steps; segments with the same (sigma, q) are merged (PRV slows with segments)."""
        if steps <= 0:
            return
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, n = self.history[-1]
            self.history[-1] = (sigma, q, n + steps)
        else:
            self.history.append((noise_multiplier, sample_rate, steps))

    def epsilon(self, delta: float, extra: tuple[float, float, int] | None = None) -> float:
        """Epsilon spent so far, or after ``extra`` more steps (a projection; nothing is recorded)."""
        history = list(self.history) + ([extra] if extra and extra[2] > 0 else [])
        if not history:
            return 0.0
        return epsilon_of(self.mechanism, history, delta)

    def state_dict(self) -> dict:
        return {
            "mechanism": self.mechanism,
            "sigma": [float(a) for a, _, _ in self.history],
            "q": [float(b) for _, b, _ in self.history],
            "steps": [int(c) for _, _, c in self.history],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> ClientAccountant:
        return cls(str(state["mechanism"]), list(zip(state["sigma"], state["q"], state["steps"], strict=True)))


def epsilon_of(mechanism: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of a history of Poisson-subsampled Gaussian steps."""
    acc = create_accountant(mechanism=mechanism)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    with warnings.catch_warnings():
        # At an extreme order the bound is valid but loose (conservative); calibration's search
        # passes through such noise levels on purpose.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        if mechanism == "rdp":
            return float(acc.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))
        return float(acc.get_epsilon(delta=delta))
