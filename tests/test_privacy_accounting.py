"""Sample-level accounting: agreement with Google's dp-accounting, calibration, the budget guard."""

import math

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtrain.config import load_config
from fedtrain.errors import ConfigError
from fedtrain.privacy import RDP_ORDERS, ClientAccountant, calibrate_noise, plan_steps
from fedtrain.privacy.accountant import epsilon_of, prv_domain_size
from fedtrain.privacy.client_privacy import round_budget


def google_rdp_epsilon(history, delta):
    acc = RdpAccountant(orders=list(RDP_ORDERS))
    for sigma, q, steps in history:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize(
    ("sigma", "q", "steps"),
    [(1.777, 1 / 12, 144), (1.0, 0.25, 40), (3.5, 1 / 6, 180), (0.8, 0.01, 1000), (9.2, 1.0, 30)],
)
def test_epsilon_equals_google_dp_accounting(sigma, q, steps):
    ours = ClientAccountant("rdp", [(sigma, q, steps)]).epsilon(1e-5)
    assert ours == pytest.approx(google_rdp_epsilon([(sigma, q, steps)], 1e-5), abs=1e-6)


def test_known_point_from_the_reference():
    # sigma 1.777, q 1/12, 144 steps, delta 1e-5: RDP 2.9971 with fractional orders. Whole orders
    # only are slightly conservative, never below.
    eps = ClientAccountant("rdp", [(1.777, 1 / 12, 144)]).epsilon(1e-5)
    assert 2.9971 <= eps <= 2.9971 * 1.002


def test_history_merges_and_survives_state_dict():
    acc = ClientAccountant("rdp")
    for _ in range(6):
        acc.record(1.5, 0.1, 20)
    acc.record(2.0, 0.1, 5)
    assert acc.history == [(1.5, 0.1, 120), (2.0, 0.1, 5)] and acc.steps == 125
    back = ClientAccountant.from_state_dict(acc.state_dict())
    assert back.history == acc.history and back.epsilon(1e-5) == acc.epsilon(1e-5)
    # Composition: several rounds cost more than any one of them.
    assert acc.epsilon(1e-5) > ClientAccountant("rdp", [(1.5, 0.1, 20)]).epsilon(1e-5) * 2


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_calibration_spends_at_most_the_target(mechanism):
    sigma = calibrate_noise(target_epsilon=3.0, delta=1e-5, segments=[(1 / 12, 144)], mechanism=mechanism)
    spent = ClientAccountant(mechanism, [(sigma, 1 / 12, 144)]).epsilon(1e-5)
    assert 2.98 <= spent <= 3.0


def test_budget_too_small_names_the_smallest_reachable_epsilon():
    with pytest.raises(ConfigError, match="smallest epsilon reachable with this plan is about"):
        calibrate_noise(target_epsilon=1e-4, delta=1e-5, segments=[(1.0, 3000)], mechanism="rdp")
    with pytest.raises(ConfigError, match="must be > 0"):
        calibrate_noise(target_epsilon=0.0, delta=1e-5, segments=[(0.1, 10)], mechanism="rdp")


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(20, 400),
    batch=st.sampled_from([0, 8, 32, 64]),
    epochs=st.integers(1, 3),
    rounds=st.integers(1, 8),
    extra_rounds=st.integers(0, 6),
    target=st.floats(0.5, 10.0),
    fixed_sigma=st.sampled_from([0.0, 0.7, 1.5]),
)
def test_budget_guard_never_lets_spent_epsilon_pass_the_target(
    n, batch, epochs, rounds, extra_rounds, target, fixed_sigma
):
    # A plan calibrated for `rounds`, then run for more (as a resume with more rounds would),
    # or a fixed sigma that the budget cannot carry for long.
    cfg = load_config(
        overrides={
            "dp-level": "sample",
            "dp-target-epsilon": target,
            "dp-noise-multiplier": fixed_sigma,
            "num-rounds": rounds,
            "batch-size": batch,
            "local-epochs": epochs,
        }
    )
    plan = plan_steps(n, batch, epochs)
    acc = ClientAccountant("rdp")
    try:
        for _ in range(rounds + extra_rounds):
            sigma, _projected, allowed = round_budget(
                cfg, acc, plan, [(plan.sample_rate, rounds * plan.steps_per_call)]
            )
            if allowed:
                acc.record(sigma, plan.sample_rate, plan.steps_per_call)
    except ConfigError as err:  # budget below one step's floor: refused up front
        assert "smallest epsilon" in str(err)
        return
    assert acc.epsilon(1e-5) <= target * (1 + 1e-9)
    if fixed_sigma == 0.0 and extra_rounds == 0:
        assert acc.steps == rounds * plan.steps_per_call  # a calibrated plan runs to its end


def test_infinite_target_is_refused_for_sample_level():
    with pytest.raises(ConfigError, match="dp-level='none'"):
        calibrate_noise(target_epsilon=math.inf, delta=1e-5, segments=[(0.1, 10)], mechanism="rdp")


def test_calibration_over_phases_with_different_sampling_rates():
    segments = [(0.25, 60), (1 / 3, 90)]  # e.g. pretraining on all records, fine-tuning on the labelled ones
    sigma = calibrate_noise(target_epsilon=2.0, delta=1e-5, segments=segments, mechanism="rdp")
    spent = ClientAccountant("rdp", [(sigma, q, n) for q, n in segments]).epsilon(1e-5)
    assert 1.99 <= spent <= 2.0


PRV_HISTORIES = [
    [(1.777, 1 / 12, 144)],
    [(4.0, 1.0, 1), (8.0, 0.5, 60)],  # a normalize=dp-standard release, then DP-SGD
    [(3.6, 1.0, 1), (2.5, 1 / 3, 90)],
    [(0.8, 0.01, 1000)],
]


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")  # Opacus' log(1 - q) at q = 1
@pytest.mark.parametrize("history", PRV_HISTORIES)
def test_prv_equals_opacus_prv_accountant(history):
    from fedtrain.privacy.opacus_api import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(history)
    assert epsilon_of("prv", history, 1e-5) == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-3)


@pytest.mark.parametrize("history", PRV_HISTORIES)
def test_prv_domain_is_opacus_safe_domain_from_whole_orders(history):
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size

    prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
    theirs = compute_safe_domain_size(prvs, [n for _, _, n in history], eps_error=0.01, delta_error=1e-8)
    assert prv_domain_size(history, 0.01, 1e-8) == pytest.approx(theirs, rel=0.01)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
def test_prv_at_small_sigma_takes_opacus_domain_and_agrees():
    # Whole orders from 2 give a far wider domain here (a grid 37x larger, GBs of memory): Opacus' bound is used.
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size

    from fedtrain.privacy.opacus_api import PRVAccountant

    history = [(0.5, 0.1, 20)]
    theirs = compute_safe_domain_size([PoissonSubsampledGaussianPRV(0.1, 0.5)], [20], eps_error=0.01, delta_error=1e-8)
    assert prv_domain_size(history, 0.01, 1e-8) == pytest.approx(theirs)
    acc = PRVAccountant()
    acc.history = list(history)
    assert epsilon_of("prv", history, 1e-5) == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-3)


def test_prv_is_never_above_rdp_and_empty_histories_spend_nothing():
    # At very small epsilon PRV's error margin (0.01) would put it above RDP: both bound the same mechanism.
    assert epsilon_of("prv", [(50.0, 0.5, 3)], 1e-5) == epsilon_of("rdp", [(50.0, 0.5, 3)], 1e-5)
    assert epsilon_of("prv", [], 1e-5) == epsilon_of("prv", [(1.0, 0.1, 0)], 1e-5) == 0.0


@pytest.mark.parametrize("history", PRV_HISTORIES)
def test_prv_is_tighter_than_rdp_for_the_same_mechanism(history):
    prv, rdp = epsilon_of("prv", history, 1e-5), epsilon_of("rdp", history, 1e-5)
    assert prv < rdp
    # more noise spends less: the bound follows the mechanism
    noisier = [(sigma * 1.2, q, n) for sigma, q, n in history]
    assert epsilon_of("prv", noisier, 1e-5) < prv
