"""Run-time faults of a whole run: non-finite training, interrupts, the run folder under crashes and races."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from test_selection import _outcome, _tracker

from fedtrain.results import RunFolder
from fedtrain.runtime import run_inprocess


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_a_huge_learning_rate_fails_the_phase_naming_round_and_client(small_config):
    run_dir = run_inprocess(small_config(learning_rate=1e6, num_rounds=3))
    summary = _summary(run_dir)
    assert summary["status"] == "failed" and summary["phases"][0]["status"] == "failed"
    assert summary["reason"].startswith("round 1: 3 of 3 clients failed")
    assert "(partition " in summary["reason"] and "training loss is nan" in summary["reason"]
    assert not (run_dir / "checkpoints" / "best.pt").exists()  # no NaN model is ever saved as best


def test_an_aggregate_that_is_not_finite_fails_the_phase(small_config, monkeypatch):
    from flwr.serverapp.strategy import FedAvg

    real = FedAvg.aggregate_train

    def overflowing(self, server_round, replies):  # e.g. a server optimizer that overflowed
        arrays, metrics = real(self, server_round, replies)
        state = arrays.to_torch_state_dict()
        first = next(iter(state))
        state[first] = state[first] * float("inf")
        return ArrayRecord(state), metrics

    monkeypatch.setattr(FedAvg, "aggregate_train", overflowing)
    run_dir = run_inprocess(small_config(num_rounds=2))
    summary = _summary(run_dir)
    assert summary["status"] == "failed"
    assert summary["reason"].startswith("round 1: the aggregated model is not finite")
    assert "partitions [0, 1, 2]" in summary["reason"]
    assert RunFolder(run_dir).read_metrics() == [] and not (run_dir / "checkpoints").exists()


def test_a_nan_global_model_is_never_selected_as_best(small_config, tmp_path):
    tracker, arrays = _tracker(small_config(num_rounds=3, val_fraction=0.0), tmp_path)
    tracker.on_round(_outcome(arrays, 1, 1.0), 0)
    nan = ArrayRecord({k: torch.full_like(v, float("nan")) for k, v in arrays.to_torch_state_dict().items()})
    tracker.on_round(_outcome(nan, 2, 1.0), 0)
    assert tracker.state.best.round == 1
    best = RunFolder(tracker.folder.path).load_checkpoint("best")["arrays"]
    assert all(bool(torch.isfinite(v).all()) for v in best.values())
