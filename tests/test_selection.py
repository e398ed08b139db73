"""Model selection never uses the test split; divergence warnings reach summary.json."""

import dataclasses
import json

import torch
from flwr.app import ArrayRecord

from fedtrain.data import build_federated_data
from fedtrain.federation.outputs import summary as run_summary
from fedtrain.federation.rounds import RoundOutcome
from fedtrain.federation.run_state import RunState
from fedtrain.federation.tracking import CentralEvaluator, Checkpointer, RoundBookkeeper, RunWarnings
from fedtrain.models import build_model
from fedtrain.privacy.ledger import PrivacyLedger
from fedtrain.results import RunFolder
from fedtrain.runtime import run_inprocess


def _run(cfg):
    run_dir = run_inprocess(cfg)
    return RunFolder(run_dir).read_metrics(), json.loads((run_dir / "summary.json").read_text()), run_dir


def test_without_validation_split_best_is_the_last_round_and_val_is_null(small_config):
    records, summary, run_dir = _run(small_config(num_rounds=3, val_fraction=0.0))
    assert all(r["val_loss"] is None and r["val_accuracy"] is None for r in records)
    best = summary["best"]
    assert best["round"] == 3 and best["selected_by"] == "last round (no validation split)"
    assert best["val_accuracy"] is None and best["accuracy"] == records[-1]["test_accuracy"]
    saved = RunFolder(run_dir).load_checkpoint("best")
    latest = RunFolder(run_dir).load_checkpoint("latest")
    assert all(torch.equal(saved["arrays"][k], latest["arrays"][k]) for k in latest["arrays"])


def test_with_validation_split_best_is_chosen_by_validation(small_config):
    records, summary, _ = _run(small_config(num_rounds=3, val_fraction=0.2))
    vals = [r["val_accuracy"] for r in records]
    assert all(v is not None for v in vals)
    best = summary["best"]
    assert best["selected_by"] == "validation"
    assert best["round"] == 1 + vals.index(max(vals))  # the first round with the top validation accuracy
    assert best["val_accuracy"] == max(vals) and best["accuracy"] == records[best["round"] - 1]["test_accuracy"]
    assert summary["warnings"] == []


def _outcome(arrays: ArrayRecord, round_: int, loss: float) -> RoundOutcome:
    return RoundOutcome(phase="finetune", phase_round=round_, phase_rounds=6, global_round=round_, arrays=arrays,
                        lr=0.1, train_loss=loss, client_eval_loss=None, client_eval_accuracy=None,
                        clients_trained=3, clients_evaluated=0, failures=[], seconds=0.01)  # fmt: skip


def _tracker(cfg, tmp_path):
    data = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)
    folder = RunFolder.create(tmp_path / "runs")
    state = RunState()
    evaluator = CentralEvaluator(
        lambda: build_model(cfg.model, data.input_shape, len(data.classes)),
        data.test,
        data.val if cfg.data.val_fraction > 0 else None,
    )
    privacy = PrivacyLedger(cfg, state.privacy)
    checkpointer = Checkpointer(cfg, folder, state, privacy, data.normalizer, data.classes, data.input_shape)
    tracker = RoundBookkeeper(cfg, folder, state, evaluator, checkpointer, privacy, RunWarnings(state))
    arrays = ArrayRecord(build_model(cfg.model, data.input_shape, len(data.classes), seed=0).state_dict())
    return tracker, arrays


def test_rising_training_loss_lands_in_summary_warnings(small_config, tmp_path):
    cfg = small_config(num_rounds=6)
    tracker, arrays = _tracker(cfg, tmp_path)
    for r, loss in enumerate([2.2, 2.5, 3.1, 4.0, 6.0, 9.1], 1):
        tracker.on_round(_outcome(arrays, r, loss), 0)
    summary = run_summary(cfg, tracker.state, tracker.last, "completed", "", tracker.privacy, has_val=True)
    (warning,) = summary["warnings"]
    assert "finetune" in warning and "rounds 1-4" in warning and "diverging" in warning
    saved = RunFolder(tracker.folder.path).load_checkpoint("latest")["state"]
    assert saved["warnings"] == [warning]  # kept across --resume


def test_no_early_stopping_without_validation(small_config, tmp_path):
    # The config loader may refuse this combination; the tracker must not select on test regardless.
    base = small_config(num_rounds=6, val_fraction=0.0)
    strategy = dataclasses.replace(base.strategy, early_stopping_patience=1, early_stopping_min_delta=0.5)
    cfg = dataclasses.replace(base, strategy=strategy)
    tracker, arrays = _tracker(cfg, tmp_path)
    assert [tracker.on_round(_outcome(arrays, r, 1.0), 0) for r in (1, 2, 3)] == [None, None, None]
    assert tracker.state.best.round == 3
    assert any("early stopping is off" in w for w in tracker.state.warnings)
