"""Accounting of the composed mechanisms of the DP recipes (issue 17): a Gaussian release, then DP-SGD."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import RDPAccountant

from fedtrain.config import load_config
from fedtrain.config.dp_recipes import gaussian_epsilon
from fedtrain.privacy import RDP_ORDERS, ClientAccountant, calibrate_noise, epsilon_of
from fedtrain.privacy.client_privacy import noise_multiplier
from fedtrain.privacy.dp_normalize import normalization_noise, normalization_segments


def google(history, delta):
    """dp-accounting's RDP: the Gaussian release as an unsampled GaussianDpEvent, DP-SGD as Poisson-sampled."""
    acc = RdpAccountant(orders=list(RDP_ORDERS))
    for sigma, q, steps in history:
        event = dp_accounting.GaussianDpEvent(sigma)
        acc.compose(event if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, event), steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize(
    "history",
    [
        [(38.5, 1.0, 1), (1.2, 1 / 8, 240)],  # dp-standard at a tenth of epsilon 1, then 30 rounds of DP-SGD
        [(12.0, 1.0, 1), (0.9, 1 / 12, 360)],
        [(5.0, 1.0, 1), (2.0, 0.05, 1000), (2.0, 0.1, 50)],  # two DP-SGD phases at different rates
    ],
)
def test_composed_release_and_dp_sgd_equal_google_dp_accounting(history):
    ours = ClientAccountant("rdp", list(history)).epsilon(1e-5)
    assert ours == pytest.approx(google(history, 1e-5), rel=1e-6)


@pytest.mark.parametrize("sigma,q,steps", [(1.1, 0.0625, 300), (0.7, 0.3, 20), (48.0, 1.0, 1), (4.0, 1e-3, 5000)])
def test_vectorised_rdp_equals_opacus_term_by_term(sigma, q, steps):
    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    assert epsilon_of("rdp", [(sigma, q, steps)], 1e-5) == pytest.approx(
        acc.get_epsilon(delta=1e-5, alphas=list(RDP_ORDERS)), rel=1e-9
    )


@pytest.mark.parametrize("share", [0.05, 0.1, 0.3])
def test_release_spends_its_share_alone(share):
    z = normalization_noise(share, 1.0, 1e-5)
    assert epsilon_of("rdp", [(z, 1.0, 1)], 1e-5) == pytest.approx(share, rel=1e-5)
    assert epsilon_of("rdp", [(z, 1.0, 1)], 1e-5) <= share * (1 + 1e-9)


@pytest.mark.parametrize("z,delta", [(0.5, 1e-5), (3.0, 1e-6), (40.0, 1e-5)])
def test_closed_form_gaussian_epsilon_equals_the_accountant(z, delta):
    assert gaussian_epsilon(z, delta) == pytest.approx(epsilon_of("rdp", [(z, 1.0, 1)], delta), rel=1e-12)


def test_calibration_counts_the_release_and_stays_within_the_budget():
    overrides = "dp-level=sample normalize=dp-standard dp-target-epsilon=1.0 normalize-dp-share=0.1 dp-accountant=rdp"
    cfg = load_config(overrides=overrides)
    fixed = normalization_segments(cfg)
    planned = [(1 / 8, 240)]
    acc = ClientAccountant("rdp", list(fixed))  # a new accountant starts with the release
    sigma = noise_multiplier(cfg, acc, planned)
    total = epsilon_of("rdp", [*fixed, (sigma, 1 / 8, 240)], 1e-5)
    assert 0.99 <= total <= 1.0
    assert sigma > calibrate_noise(target_epsilon=1.0, delta=1e-5, segments=planned, mechanism="rdp")
    acc.record(sigma, 1 / 8, 8)
    assert noise_multiplier(cfg, acc, planned) == sigma  # kept for the run once DP-SGD has stepped
