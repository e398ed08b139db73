"""The device's privacy accountant: Google's dp-accounting, with the torch client's orders and history.

The torch client's ``fedtrain.privacy.accountant.ClientAccountant`` asks Opacus' RDP accountant for epsilon
at the whole-number orders :data:`~fedtrain.privacy.accountant.RDP_ORDERS`; this one asks dp-accounting's
``RdpAccountant`` (Poisson-subsampled Gaussian, add-or-remove-one) at the same orders and converts with the same
bound, so both give the same epsilon (``tests/test_edge_train.py`` checks 1e-9). The history, its state in
``Context.state`` and the calibration of sigma are the torch client's, so a device and a torch client of one
federation spend their budgets alike and the server audits both the same way. ``prv`` is Opacus-only: refused.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedtrain.dp_history import DPHistory, search_sigma
from fedtrain.edge.errors import EdgeModelError

__all__ = ["RDP_ORDERS", "EdgeAccountant", "calibrate_noise", "rdp_epsilon"]

# The torch client's (fedtrain.privacy.accountant.RDP_ORDERS and calibration.MAX_SIGMA; equal, tested): the device
# layer imports nothing of fedtrain but its errors.
RDP_ORDERS: tuple[float, ...] = tuple(float(a) for a in range(2, 257))
MAX_SIGMA = 1000.0


@functools.lru_cache(maxsize=4096)
def _rdp_of_one_step(sigma: float, q: float) -> np.ndarray:
    """RDP at every order of one Poisson-subsampled Gaussian step: dp-accounting's, composed once and kept.

    Composing ``count`` steps is ``count`` times this vector in dp-accounting (``RdpAccountant.compose``), so
    caching it per ``(sigma, q)`` gives the same figures without recomputing the orders' series (seconds on a
    small device) for every projection and every step of the calibration's search.
    """
    from dp_accounting import dp_event  # type: ignore[import-untyped, unused-ignore]  # no py.typed marker
    from dp_accounting.rdp import rdp_privacy_accountant as rdp  # type: ignore[import-untyped, unused-ignore]

    acc = rdp.RdpAccountant(list(RDP_ORDERS), rdp.NeighborRel.ADD_OR_REMOVE_ONE)
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), 1)
    vector: np.ndarray = np.array(acc._rdp, dtype=np.float64)  # the accountant's RDP at its orders
    vector.setflags(write=False)
    return vector


def rdp_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of ``(sigma, q, steps)`` segments of Poisson-subsampled Gaussian steps, by dp-accounting's RDP.

    What ``RdpAccountant.compose`` of each segment then ``get_epsilon(delta)`` gives, from cached vectors.
    """
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    total = np.zeros(len(RDP_ORDERS), dtype=np.float64)
    for sigma, q, steps in history:
        if steps > 0:
            total += int(steps) * _rdp_of_one_step(float(sigma), float(q))
    return float(rdp.compute_epsilon(list(RDP_ORDERS), total, delta)[0])


@dataclass
class EdgeAccountant(DPHistory):
    """One device's DP-SGD history and its epsilon.

    ``fedtrain.privacy.accountant.ClientAccountant``'s history, merging and state, with dp-accounting's epsilon.
    """

    def __post_init__(self) -> None:
        if self.mechanism != "rdp":
            raise EdgeModelError(
                f"dp-accountant={self.mechanism!r}: the ONNX client accounts with dp-accounting's RDP only (PRV is "
                "Opacus'); set dp-accountant='rdp' or client-runtime='torch'"
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
