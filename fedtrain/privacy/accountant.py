"""One privacy accountant per client for the whole run.

The accountant is Opacus' (``rdp`` or ``prv``) over a compact history of
``(noise_multiplier, sample_rate, steps)`` segments. It lives in the client's
``Context.state`` between rounds and is rebuilt from the server's checkpoint on resume, so
epsilon composes over every phase and round of a run, never per round.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fedtrain.registry import Registry

__all__ = ["ACCOUNTANTS", "RDP_ORDERS", "Accountant", "ClientAccountant", "epsilon_of"]

Accountant = Callable[[list[tuple[float, float, int]], float], float]
"""``(history, delta) -> epsilon`` of a history of ``(noise_multiplier, sample_rate, steps)`` segments."""

ACCOUNTANTS = Registry[Accountant]("dp-accountant")

# Whole-number RDP orders. At these orders Opacus and Google's dp-accounting agree to ~1e-13;
# dropping fractional orders makes epsilon at most about 1% larger (conservative).
RDP_ORDERS: tuple[float, ...] = tuple(float(a) for a in range(2, 257))


@contextmanager
def _loose_orders_ok() -> Iterator[None]:
    # At an extreme order the bound is valid but loose (conservative); calibration's search
    # passes through such noise levels on purpose.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        yield


@ACCOUNTANTS.register("rdp")
def _rdp(history: list[tuple[float, float, int]], delta: float) -> float:
    """Renyi DP (Mironov 2017) at :data:`RDP_ORDERS`."""
    from fedtrain.privacy.opacus_api import RDPAccountant  # Opacus only when an epsilon is asked for

    acc = RDPAccountant()
    acc.history = list(history)
    with _loose_orders_ok():
        return float(acc.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))


@ACCOUNTANTS.register("prv")
def _prv(history: list[tuple[float, float, int]], delta: float) -> float:
    """Privacy random variables (Gopi et al. 2021): tighter than RDP, slower with many segments."""
    from fedtrain.privacy.opacus_api import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(history)
    with _loose_orders_ok():
        return float(acc.get_epsilon(delta=delta))


@dataclass
class ClientAccountant:
    """History of one client's DP-SGD steps and the epsilon they spend."""

    mechanism: str
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        ACCOUNTANTS.get(self.mechanism)  # a ConfigError naming the choices

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

    def state_dict(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "sigma": [float(a) for a, _, _ in self.history],
            "q": [float(b) for _, b, _ in self.history],
            "steps": [int(c) for _, _, c in self.history],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ClientAccountant:
        return cls(str(state["mechanism"]), list(zip(state["sigma"], state["q"], state["steps"], strict=True)))


def epsilon_of(mechanism: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of a history of Poisson-subsampled Gaussian steps, by the accountant ``mechanism``.

    Raises
    ------
    ConfigError
        For an unknown accountant name (naming the choices).
    """
    return ACCOUNTANTS.get(mechanism)([(float(s), float(q), int(n)) for s, q, n in history], delta)
