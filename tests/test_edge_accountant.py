"""The device's RDP accountant (numpy and math only) against dp-accounting's and Opacus', which a device lacks.

``fedtrain.edge.train.accountant`` computes the RDP of the Poisson-subsampled Gaussian at the whole-number orders
2..256 by the exact binomial expansion, and converts it to epsilon as dp-accounting's ``compute_epsilon`` does.
Here both libraries (installed in the dev venv only) are the references, and 60-digit arithmetic (mpmath) is the
arbiter where the two libraries' own float64 sums disagree.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import dp_event  # type: ignore[import-untyped, unused-ignore]
from dp_accounting.rdp import rdp_privacy_accountant as dpa  # type: ignore[import-untyped, unused-ignore]
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp

from fedtrain.edge.errors import EdgeModelError
from fedtrain.edge.train.accountant import (
    RDP_ORDERS,
    EdgeAccountant,
    epsilon_from_rdp,
    rdp_epsilon,
    rdp_of_one_step,
)

ROOT = Path(__file__).resolve().parents[1]
ORDERS = list(RDP_ORDERS)
SIGMAS = (0.5, 1.0, 4.0, 1000.0)  # 1000 is the calibration's ceiling (MAX_SIGMA)
RATES = (1e-9, 1e-5, 0.003, 0.1, 0.5, 0.999, 1.0)
REL = 1e-9
# Both libraries sum A_alpha itself in float64, so their RDP carries a rounding error of a few 1e-16 absolute (1e-14
# bounds what this grid shows, 3.6e-15); where the RDP is that small (tiny q, large sigma) the two disagree with
# each other by far more than 1e-9 relative (test below), and only an absolute floor can compare with both.
ABS = 1e-14


def _references(sigma: float, q: float) -> dict[str, np.ndarray]:
    return {
        "dp-accounting": np.asarray(dpa._compute_rdp_poisson_subsampled_gaussian(q, sigma, ORDERS), dtype=np.float64),
        "opacus": np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=ORDERS)),
    }


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("q", RATES)
def test_rdp_equals_dp_accountings_and_opacus_at_every_order(sigma: float, q: float) -> None:
    ours = rdp_of_one_step(sigma, q)
    assert ours.shape == (255,) and np.all(np.isfinite(ours)) and np.all(ours > 0)
    for name, ref in _references(sigma, q).items():
        err = np.abs(ours - ref)
        bad = err > REL * np.abs(ref) + ABS
        assert not bad.any(), (
            f"{name}, sigma={sigma}, q={q}: order {np.array(ORDERS)[bad][0]:.0f}, ours {ours[bad][0]!r}, "
            f"theirs {ref[bad][0]!r}"
        )
        big = np.abs(ref) > 1e-4  # where rounding is negligible: 1e-9 relative with no floor
        assert np.all(err[big] <= REL * np.abs(ref[big]))


def test_where_the_libraries_disagree_the_expansion_is_the_exact_value() -> None:
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 60

    def exact(sigma: float, q: float, a: int) -> float:
        qq, v = mp.mpf(q), mp.mpf(sigma) ** 2
        terms = (mp.binomial(a, i) * qq**i * (1 - qq) ** (a - i) * mp.exp((i * i - i) / (2 * v)) for i in range(a + 1))
        s = mp.fsum(terms)
        return float(mp.log(s) / (a - 1))

    # at q = 1e-9 the RDP is about 1e-18..1e-13: the libraries' sums keep only rounding noise of it
    lib = _references(1.0, 1e-9)
    assert np.max(np.abs(lib["dp-accounting"] - lib["opacus"]) / np.abs(lib["dp-accounting"])) > 1e-3
    for sigma, q in ((1.0, 1e-9), (1000.0, 1e-6), (0.5, 1e-3), (1000.0, 0.25), (0.5, 0.999), (4.0, 0.1)):
        ours = rdp_of_one_step(sigma, q)
        for a in (2, 3, 10, 64, 256):
            want = exact(sigma, q, a)
            assert abs(ours[a - 2] - want) <= 1e-12 * want, (sigma, q, a, ours[a - 2], want)


def test_the_edge_cases_are_the_libraries() -> None:
    orders = np.array(ORDERS)
    assert np.array_equal(rdp_of_one_step(1.0, 0.0), np.zeros(255))  # nothing sampled
    assert np.all(np.isinf(rdp_of_one_step(0.0, 0.01)))  # no noise
    assert np.allclose(rdp_of_one_step(2.0, 1.0), orders / 8.0, rtol=0, atol=0)  # the Gaussian mechanism
    assert np.array_equal(rdp_of_one_step(math.inf, 0.5), np.zeros(255))
    small = rdp_of_one_step(0.05, 0.3)  # exp((i^2 - i) / (2 sigma^2)) overflows float64: the log form does not
    ref = _references(0.05, 0.3)["dp-accounting"]
    assert np.all(np.isfinite(small)) and np.allclose(small, ref, rtol=REL, atol=0)
    for sigma, q in ((1.0, -0.1), (1.0, 1.5), (1.0, math.nan), (-1.0, 0.1), (math.nan, 0.1)):
        with pytest.raises(EdgeModelError):
            rdp_of_one_step(sigma, q)


def test_the_cache_returns_one_read_only_vector() -> None:
    first = rdp_of_one_step(1.3, 0.02)
    assert rdp_of_one_step(1.3, 0.02) is first and not first.flags.writeable
    with pytest.raises(ValueError):
        first[0] = 0.0


@pytest.mark.parametrize("delta", [1e-5, 1e-8, 0.3, 0.0])
def test_the_conversion_is_dp_accountings_compute_epsilon(delta: float) -> None:
    orders = np.array(ORDERS)
    curves = [
        500 * rdp_of_one_step(1.0, 0.01),
        rdp_of_one_step(0.7, 0.5),
        3 * rdp_of_one_step(1000.0, 1e-6),  # the KL branch: epsilon 0
        np.zeros(255),
        orders / 2.0,
        np.where(orders > 100, np.inf, orders / 50.0),
        np.full(255, np.inf),
    ]
    for curve in curves:
        want = float(dpa.compute_epsilon(ORDERS, list(curve), delta)[0])
        got = epsilon_from_rdp(curve, delta)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12) or (math.isinf(got) and math.isinf(want))
    with pytest.raises(EdgeModelError, match="delta"):
        epsilon_from_rdp(np.zeros(255), -1e-5)
    with pytest.raises(EdgeModelError, match="one value per order"):
        epsilon_from_rdp(np.zeros(10), 1e-5)


HISTORIES = [
    [(1.0, 0.01, 1000)],
    [(1.1, 0.02, 3000), (0.9, 0.05, 200)],
    [(0.6, 1.0, 3)],  # full batches
    [(4.0, 1e-4, 100_000)],
    [(1000.0, 0.25, 50), (0.8, 0.25, 400)],
]


@pytest.mark.parametrize("history", HISTORIES)
def test_epsilon_equals_dp_accountings_and_opacus_accountants(history: list[tuple[float, float, int]]) -> None:
    google = dpa.RdpAccountant(ORDERS, dpa.NeighborRel.ADD_OR_REMOVE_ONE)
    for sigma, q, steps in history:
        google.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    opacus = RDPAccountant()
    opacus.history = list(history)
    for delta in (1e-5, 1e-7):
        ours = rdp_epsilon(history, delta)
        assert abs(ours - google.get_epsilon(delta)) < 1e-9
        assert abs(ours - opacus.get_epsilon(delta, alphas=ORDERS)) < 1e-9
        assert EdgeAccountant("rdp", list(history)).epsilon(delta) == ours


def test_the_onnx_client_imports_neither_scipy_nor_dp_accounting() -> None:
    # The device's whole import path: the accountant, the trainer and the ClientApp with its mods.
    probe = (
        "import sys, json\n"
        "from fedtrain.edge.train import accountant, graph, optim, sampling, trainer\n"
        "from fedtrain.federation.onnx_app import build_onnx_client_app\n"
        "build_onnx_client_app()\n"
        "accountant.calibrate_noise(target_epsilon=3.0, delta=1e-5, segments=[(0.1, 100)])\n"
        "print(json.dumps(sorted(m for m in ('scipy', 'dp_accounting', 'torch', 'opacus', 'sklearn') "
        "if m in sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
