"""The training-loss watch: sustained rises and non-finite losses, once per episode."""

import math

import pytest

from fedtrain.results.trends import LossWatch


def _alerts(losses, **kwargs):
    watch = LossWatch({}, "finetune", **kwargs)
    return [(r, a) for r, loss in enumerate(losses, 1) if (a := watch.observe(r, loss)) is not None]


def test_three_rises_well_above_the_minimum_warn_once():
    # the README's diverging run: 2.2 -> 9.1
    (alert,) = _alerts([2.2, 2.5, 3.1, 4.0, 6.0, 9.1])
    round_, a = alert
    assert round_ == 4 and a.kind == "rising" and (a.first_round, a.last_round, a.rises) == (1, 4, 3)
    assert a.first_loss == 2.2 and a.last_loss == 4.0 and a.minimum == 2.2
    assert "finetune" in a.message() and "rounds 1-4" in a.message()


def test_noise_near_a_converged_loss_does_not_warn():
    # three small rises, but never 20% above the minimum; then two rises only
    assert _alerts([2.2, 1.0, 0.5, 0.51, 0.52, 0.55, 0.4, 0.6, 0.9, 0.5]) == []


def test_two_rises_are_not_enough():
    assert _alerts([1.0, 2.0, 4.0, 1.0, 2.0, 4.0]) == []


def test_a_new_episode_after_a_fall_warns_again():
    alerts = _alerts([1.0, 1.5, 2.0, 3.0, 2.5, 2.6, 2.8, 3.5, 4.0])
    assert [(r, a.first_round) for r, a in alerts] == [(4, 1), (8, 5)]


def test_rise_must_clear_the_margin_of_the_phase_minimum():
    losses = [1.0, 1.02, 1.05, 1.1, 1.3]
    assert [r for r, _ in _alerts(losses)] == [5]  # 1.3 is the first >= 20% above 1.0
    assert _alerts(losses, margin=0.5) == []


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_warns_once_per_run_of_bad_rounds(bad):
    alerts = _alerts([1.0, bad, bad, 0.9, bad])
    assert [(r, a.kind) for r, a in alerts] == [(2, "non-finite"), (5, "non-finite")]
    assert "not finite" in alerts[0][1].message()


def test_rounds_without_a_loss_are_skipped_and_state_resumes():
    state: dict = {}
    first = LossWatch(state, "finetune")
    assert [first.observe(r, v) for r, v in ((1, 1.0), (2, None), (3, 1.5))] == [None, None, None]
    again = LossWatch(state, "finetune")  # e.g. after --resume: the state dict came from the checkpoint
    assert again.observe(4, 2.0) is None
    alert = again.observe(5, 3.0)
    assert alert is not None and (alert.first_round, alert.last_round) == (1, 5)
