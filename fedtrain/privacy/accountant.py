"""One privacy accountant per client for the whole run.

The accountant is Opacus' (``rdp`` or ``prv``) over a compact history of
``(noise_multiplier, sample_rate, steps)`` segments. It lives in the client's
``Context.state`` between rounds and is rebuilt from the server's checkpoint on resume, so
epsilon composes over every phase and round of a run, never per round.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from fedtrain.dp_history import DPHistory
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


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(sigma: float, q: float) -> np.ndarray:
    """RDP of one Poisson-subsampled Gaussian step at every order of :data:`RDP_ORDERS`, vectorised.

    The sum Opacus' ``_compute_log_a_for_int_alpha`` runs term by term (Mironov et al. 2019, section 3.3),
    ``log A_a = logsumexp_i [log C(a, i) + i log q + (a - i) log(1 - q) + (i^2 - i) / (2 sigma^2)]``, for all
    orders at once: the same value to ~1e-13, a thousand times faster. Every round asks for epsilons (each
    client's projection, the ledger's audit, sigma's calibration), so this dominated a DP run's time.
    """
    # Imported here: a deployed client imports this module for every message.
    from scipy.special import gammaln, logsumexp  # type: ignore[import-untyped]

    orders = np.asarray(RDP_ORDERS)
    if q == 0:
        return np.zeros_like(orders)
    if sigma == 0:
        return np.full_like(orders, np.inf)
    if q == 1.0:
        return orders / (2 * sigma**2)
    i = np.arange(int(orders.max()) + 1, dtype=np.float64)[None, :]
    a = orders[:, None]
    with np.errstate(invalid="ignore"):
        terms = (
            gammaln(a + 1) - gammaln(i + 1) - gammaln(a - i + 1)
            + i * math.log(q) + (a - i) * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
        )  # fmt: skip
    terms = np.where(i <= a, terms, -np.inf)
    out: np.ndarray = logsumexp(terms, axis=1) / (orders - 1)
    return out


def rdp_curve(history: list[tuple[float, float, int]]) -> np.ndarray:
    """The RDP of a ``(sigma, q, steps)`` history at every order of :data:`RDP_ORDERS` (composition adds them)."""
    curve = np.zeros(len(RDP_ORDERS))
    for sigma, q, steps in history:
        curve = curve + _rdp_per_step(float(sigma), float(q)) * steps
    return curve


def epsilon_from_rdp(curve: np.ndarray, delta: float) -> float:
    """Epsilon of an RDP curve at :data:`RDP_ORDERS`, converted as Opacus does (Balle et al. 2020)."""
    from fedtrain.privacy.opacus_api import rdp_privacy_spent  # Opacus only when an epsilon is asked for

    with _loose_orders_ok():
        eps, _ = rdp_privacy_spent(orders=list(RDP_ORDERS), rdp=curve, delta=delta)
    return float(eps)


@ACCOUNTANTS.register("rdp")
def _rdp(history: list[tuple[float, float, int]], delta: float) -> float:
    """Renyi DP (Mironov 2017) at :data:`RDP_ORDERS`, converted as Opacus does (Balle et al. 2020)."""
    return epsilon_from_rdp(rdp_curve(history), delta)


# Opacus' PRVAccountant.get_epsilon defaults: the error of epsilon, and delta's error as a share of delta.
PRV_EPS_ERROR = 0.01
PRV_DELTA_ERROR_SHARE = 1e-3
# A domain half-width above which Opacus' slower bound is worth computing (the recipe's histories stay below 8).
_WIDE_DOMAIN = 12.0


def prv_domain_size(history: list[tuple[float, float, int]], eps_error: float, delta_error: float) -> float:
    """Half-width of the privacy-loss domain the PRV is discretised on (Gopi et al. 2021, remark 5.6).

    Opacus' ``compute_safe_domain_size`` with fedtrain's vectorised RDP: any valid RDP bound serves, and
    Opacus' per-order loop over fractional orders took 95 % of a PRV epsilon's time (0.6 s of each call). At
    small sigma whole orders from 2 give a much wider (still valid) domain than Opacus' orders below 2, and the
    grid grows with it; there Opacus' own bound is used when it is smaller.
    """
    total = sum(steps for _, _, steps in history)
    size = epsilon_from_rdp(rdp_curve(history), delta_error / 4)
    for sigma, q, _ in history:
        size = max(size, epsilon_from_rdp(rdp_curve([(sigma, q, 1)]), delta_error / (8 * total)))
    size = max(size, eps_error) + 3
    if size > _WIDE_DOMAIN:
        from fedtrain.privacy import opacus_api as op

        with _loose_orders_ok():
            prvs = [op.PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
            theirs = op.compute_safe_domain_size(prvs, [n for _, _, n in history], eps_error, delta_error)
        size = min(size, float(theirs))
    return size


@ACCOUNTANTS.register("prv")
def _prv(history: list[tuple[float, float, int]], delta: float) -> float:
    """Privacy random variables (Gopi et al. 2021): the upper end of Opacus' PRV estimate, or RDP's if lower.

    Both are valid bounds on the same mechanism; PRV's error margin (0.01 in epsilon) can put it above RDP
    at very small epsilon.
    """
    kept = tuple((s, q, n) for s, q, n in history if n > 0)
    return _prv_cached(kept, delta) if kept else 0.0


@functools.lru_cache(maxsize=1024)
def _prv_cached(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    # The steps of Opacus' PRVAccountant.get_epsilon, with the domain from prv_domain_size; then RDP's if lower.
    from fedtrain.privacy import opacus_api as op

    eps_error, delta_error = PRV_EPS_ERROR, delta * PRV_DELTA_ERROR_SHARE
    steps = [n for _, _, n in history]
    size = prv_domain_size(list(history), eps_error, delta_error)
    mesh = eps_error / math.sqrt(sum(steps) * math.log(12 / delta_error) / 2)
    domain = op.Domain.create_aligned(-size, size, mesh)
    with _loose_orders_ok(), np.errstate(divide="ignore"):  # log(1 - q) at q = 1 is masked out by Opacus
        prvs = [op.PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
        truncated = [op.TruncatedPrivacyRandomVariable(p, domain.t_min, domain.t_max) for p in prvs]
        composed = op.compose_heterogeneous(dprvs=[op.discretize(t, domain) for t in truncated],
                                            num_self_compositions=steps)  # fmt: skip
        _, _, upper = composed.compute_epsilon(delta, delta_error, eps_error)
    return min(float(upper), _rdp(list(history), delta))


@dataclass
class ClientAccountant(DPHistory):
    """History of one client's DP-SGD steps and the epsilon they spend, by the accountant ``mechanism``."""

    def __post_init__(self) -> None:
        ACCOUNTANTS.get(self.mechanism)  # a ConfigError naming the choices

    def spent(self, history: list[tuple[float, float, int]], delta: float) -> float:
        return epsilon_of(self.mechanism, history, delta)


def epsilon_of(mechanism: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of a history of Poisson-subsampled Gaussian steps, by the accountant ``mechanism``.

    Raises
    ------
    ConfigError
        For an unknown accountant name (naming the choices).
    """
    return ACCOUNTANTS.get(mechanism)([(float(s), float(q), int(n)) for s, q, n in history], delta)
