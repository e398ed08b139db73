"""The device's privacy accountant: RDP of the Poisson-subsampled Gaussian in numpy, the torch client's orders.

The torch client's ``fedtrain.privacy.accountant.ClientAccountant`` asks Opacus for epsilon at the whole-number
orders :data:`~fedtrain.privacy.accountant.RDP_ORDERS`. A device has neither Opacus nor scipy (Google's
dp-accounting, which this module used before, brings scipy: 143 MB on a device). At whole-number orders the RDP of
one Poisson-subsampled Gaussian step has an exact finite form (Mironov, Talwar and Zhang 2019, "Rényi Differential
Privacy of the Sampled Gaussian Mechanism", section 3.3: the binomial expansion of ``A_alpha``), so numpy and
``math`` compute it here; the RDP-to-DP conversion is dp-accounting's ``compute_epsilon`` (Balle et al. 2020),
written again in numpy. ``tests/test_edge_accountant.py`` checks the RDP against dp-accounting's and Opacus' at
every order over a grid of (sigma, q), and against 60-digit arithmetic; ``tests/test_edge_train.py`` checks the
epsilon against the torch client's. The history, its state in ``Context.state`` and the calibration of sigma are
the torch client's, so a device and a torch client of one federation spend their budgets alike and the server
audits both the same way. ``prv`` is Opacus-only: refused.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedtrain.dp_history import DPHistory, search_sigma
from fedtrain.edge.errors import EdgeModelError

__all__ = ["RDP_ORDERS", "EdgeAccountant", "calibrate_noise", "epsilon_from_rdp", "rdp_epsilon", "rdp_of_one_step"]

# The torch client's (fedtrain.privacy.accountant.RDP_ORDERS and calibration.MAX_SIGMA; equal, tested): the device
# layer imports nothing of fedtrain but its errors.
RDP_ORDERS: tuple[float, ...] = tuple(float(a) for a in range(2, 257))
MAX_SIGMA = 1000.0

_ALPHA = np.array(RDP_ORDERS, dtype=np.int64)  # whole numbers: the exact expansion below needs them
_ORDERS = _ALPHA.astype(np.float64)
_LOG_FACTORIAL = np.array([math.lgamma(k + 1.0) for k in range(int(_ALPHA.max()) + 1)])


def _log_sum_exp(terms: np.ndarray) -> np.ndarray:
    """``log(sum(exp(terms)))`` along the last axis, rows of ``-inf`` only giving ``-inf``."""
    top = terms.max(axis=-1)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):  # log(0) = -inf for an all-(-inf) row: wanted
        out: np.ndarray = safe + np.log(np.exp(terms - safe[..., None]).sum(axis=-1))
    return out


def _rdp_vector(sigma: float, q: float) -> np.ndarray:
    """RDP of one Poisson-subsampled Gaussian step (add-or-remove-one) at every order of :data:`RDP_ORDERS`.

    For a whole-number order ``a`` (Mironov et al. 2019, section 3.3, the expansion Opacus' and dp-accounting's
    ``_compute_log_a_int`` sum term by term)::

        A_a = sum_{i=0..a} C(a, i) q^i (1-q)^(a-i) exp((i^2 - i) / (2 sigma^2)),   RDP(a) = log(A_a) / (a - 1).

    The weights ``C(a, i) q^i (1-q)^(a-i)`` sum to 1, so ``A_a - 1`` is the sum over ``i >= 2`` of the weights times
    ``expm1((i^2 - i) / (2 sigma^2))``: every term positive, no cancellation. Summing that in log space and taking
    ``log1p`` keeps the relative precision where ``A_a`` is within rounding of 1 (tiny q, large sigma), where
    summing ``A_a`` itself, as the libraries do, leaves only rounding noise (about 1e-16 absolute). All orders at
    once: a (255, 255) array, well under a millisecond.
    """
    if not 0.0 <= q <= 1.0 or math.isnan(q):
        raise EdgeModelError(f"sampling rate q={q} must be in [0, 1]")
    if not sigma >= 0.0:
        raise EdgeModelError(f"noise multiplier sigma={sigma} must be >= 0")
    if q == 0.0:  # nothing of the record is used
        return np.zeros_like(_ORDERS)
    if sigma == 0.0:  # no noise: no privacy
        return np.full_like(_ORDERS, np.inf)
    if q == 1.0:  # the Gaussian mechanism itself
        return _ORDERS / (2.0 * sigma**2)
    a = _ALPHA[:, None]
    i = np.arange(2, int(_ALPHA.max()) + 1, dtype=np.int64)[None, :]
    inside = i <= a
    rest = np.where(inside, a - i, 0)
    exponent = (i * i - i) / (2.0 * sigma**2)  # > 0 for i >= 2
    # log(expm1(x)) = x + log(1 - exp(-x)): finite for the large x of small sigma, where expm1 itself overflows
    with np.errstate(over="ignore", divide="ignore"):  # sigma = inf: log(0) = -inf, an RDP of 0
        log_expm1 = exponent + np.log(-np.expm1(-exponent))
    log_weight = _LOG_FACTORIAL[a] - _LOG_FACTORIAL[i] - _LOG_FACTORIAL[rest]
    log_weight = log_weight + i * math.log(q) + rest * math.log1p(-q)
    log_a_minus_1 = _log_sum_exp(np.where(inside, log_weight + log_expm1, -np.inf))
    out: np.ndarray = np.logaddexp(0.0, log_a_minus_1) / (_ORDERS - 1.0)  # log1p(exp(.)), stable both ways
    return out


@functools.lru_cache(maxsize=4096)
def rdp_of_one_step(sigma: float, q: float) -> np.ndarray:
    """:func:`_rdp_vector`, kept per ``(sigma, q)`` (read-only): composing ``n`` steps is ``n`` times it.

    A projection, every step of the calibration's search and every round's epsilon ask for the same few
    ``(sigma, q)``; the cache makes each of them a multiply-add over 255 orders.
    """
    vector = _rdp_vector(float(sigma), float(q))
    vector.setflags(write=False)
    return vector


def epsilon_from_rdp(rdp: np.ndarray, delta: float) -> float:
    """Epsilon of an RDP curve at :data:`RDP_ORDERS`: dp-accounting's ``compute_epsilon``, in numpy.

    Per order, ``rdp + log1p(-1/a) - log(delta a) / (a - 1)`` (Balle et al. 2020, Theorem 21; Canonne et al.
    2020, Proposition 12; Opacus' conversion is the same expression), 0 where the KL bound already gives delta
    (``delta^2 + expm1(-rdp) > 0``) or the RDP is negative; the smallest over the orders, at least 0.
    """
    if not delta >= 0.0:
        raise EdgeModelError(f"delta={delta} must be >= 0")
    rdp = np.asarray(rdp, dtype=np.float64)
    if rdp.shape != _ORDERS.shape:
        raise EdgeModelError(f"an RDP curve has one value per order ({len(_ORDERS)}), got shape {rdp.shape}")
    if delta == 0.0:
        return 0.0 if bool(np.all(rdp == 0.0)) else math.inf
    with np.errstate(invalid="ignore", over="ignore"):
        eps = rdp + np.log1p(-1.0 / _ORDERS) - np.log(delta * _ORDERS) / (_ORDERS - 1.0)
        eps = np.where((rdp < 0.0) | (delta**2 + np.expm1(-rdp) > 0.0), 0.0, eps)
    return max(0.0, float(eps.min()))


def rdp_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of ``(sigma, q, steps)`` segments of Poisson-subsampled Gaussian steps (RDP adds up over steps)."""
    total = np.zeros(len(RDP_ORDERS), dtype=np.float64)
    for sigma, q, steps in history:
        if steps > 0:
            total += int(steps) * rdp_of_one_step(float(sigma), float(q))
    return epsilon_from_rdp(total, delta)


@dataclass
class EdgeAccountant(DPHistory):
    """One device's DP-SGD history and its epsilon.

    ``fedtrain.privacy.accountant.ClientAccountant``'s history, merging and state, with this module's epsilon.
    """

    def __post_init__(self) -> None:
        if self.mechanism != "rdp":
            raise EdgeModelError(
                f"dp-accountant={self.mechanism!r}: the ONNX client accounts with RDP only (PRV is Opacus'); set "
                "dp-accountant='rdp' or client-runtime='torch'"
            )

    def spent(self, history: list[tuple[float, float, int]], delta: float) -> float:
        return rdp_epsilon(history, delta)


def calibrate_noise(
    *, target_epsilon: float, delta: float, segments: list[tuple[float, int]], tolerance: float = 0.005
) -> float:
    """Sigma for the planned ``(q, steps)`` segments: :func:`fedtrain.privacy.calibration.calibrate_noise`'s search.

    Raises
    ------
    EdgeModelError
        When the target cannot be reached (as the torch client's calibration says).
    """
    if not target_epsilon > 0 or math.isinf(target_epsilon):
        raise EdgeModelError(f"dp-target-epsilon={target_epsilon} must be finite and > 0 for sample-level DP")

    def spent(sigma: float) -> float:
        return rdp_epsilon([(sigma, q, n) for q, n in segments], delta)

    floor = spent(MAX_SIGMA)
    if target_epsilon <= floor:
        raise EdgeModelError(
            f"dp-target-epsilon={target_epsilon} is too small for {sum(n for _, n in segments)} steps: the smallest "
            f"epsilon reachable with this plan is about {floor:.3g}; raise the budget or plan fewer rounds or epochs"
        )
    return search_sigma(spent, target_epsilon, tolerance)
