"""Integration: the real ServerApp and ClientApp on the in-process grid."""

import json
from pathlib import Path

import pytest
import torch

from fedtrain.aggregation import STRATEGIES, build_strategy
from fedtrain.config import KNOWN_STAGES, load_config
from fedtrain.data import build_federated_data
from fedtrain.errors import CheckpointError
from fedtrain.federation import STAGES
from fedtrain.models import build_model
from fedtrain.results import RunFolder
from fedtrain.runtime import run_inprocess
from fedtrain.train import evaluate


def test_three_clients_two_rounds_fill_the_run_folder(small_config):
    # Prepare
    cfg = small_config(report=True)
    # Execute
    run_dir = run_inprocess(cfg)
    # Assert
    files = {p.name for p in run_dir.iterdir()}
    assert {
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "report.html",
        "accuracy.png",
        "loss.png",
        "label_distribution.png",
        "checkpoints",
    } <= files
    assert load_config(file=run_dir / "config.toml") == cfg
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["round"]) for r in records] == [("finetune", 1), ("finetune", 2)]
    for r in records:
        assert r["clients_trained"] == 3 and 0.0 <= r["test_accuracy"] <= 1.0 and r["train_loss"] > 0
        assert r["client_eval_accuracy"] is not None and r["seconds"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2 and summary["num_clients"] == 3
    assert summary["final"]["accuracy"] == records[-1]["test_accuracy"]
    assert summary["best"]["round"] in (1, 2) and summary["phases"][0]["name"] == "finetune"
    assert summary["best"]["selected_by"] == "validation" and summary["warnings"] == []
    assert summary["config"]["num-clients"] == 3 and summary["wall_seconds"] > 0
    assert "data:image/png;base64" in (run_dir / "report.html").read_text()
    ckpt = RunFolder(run_dir).load_checkpoint("latest")
    assert set(ckpt["arrays"]) == {"hidden.0.linear.weight", "hidden.0.linear.bias", "head.weight", "head.bias"}
    assert ckpt["normalizer"]["method"] == "standard"


def test_learning_happens(small_config):
    run_dir = run_inprocess(small_config(num_rounds=4, hidden_sizes="64"))
    records = RunFolder(run_dir).read_metrics()
    # measured: 0.725 after round 1, 0.922 after round 4
    assert records[-1]["test_accuracy"] > 0.85 and records[-1]["test_accuracy"] > records[0]["test_accuracy"] + 0.1


def test_same_seed_same_run(small_config):
    a = RunFolder(run_inprocess(small_config())).read_metrics()
    b = RunFolder(run_inprocess(small_config())).read_metrics()
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == [
        {k: v for k, v in r.items() if k not in drop} for r in b
    ]


def test_resume_continues_exactly_where_a_run_stopped(small_config):
    # Prepare: a straight 4-round run, and a 2-round run resumed to 4 rounds
    straight = run_inprocess(small_config(num_rounds=4, fraction_evaluate=0.5))
    first = run_inprocess(small_config(num_rounds=2, fraction_evaluate=0.5))
    # Execute
    resumed = run_inprocess(small_config(num_rounds=4, fraction_evaluate=0.5, resume_dir=str(first)))
    # Assert
    assert resumed == first
    a, b = RunFolder(straight).read_metrics(), RunFolder(resumed).read_metrics()
    assert [r["round"] for r in b] == [1, 2, 3, 4]
    assert [r["test_accuracy"] for r in a] == [r["test_accuracy"] for r in b]
    wa = RunFolder(straight).load_checkpoint()["arrays"]
    wb = RunFolder(resumed).load_checkpoint()["arrays"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_resumes_exactly(small_config, name):
    # FedAdam's and FedYogi's moments and FedAvgM's momentum restarted on resume (issue 9, defect c).
    opts = {"strategy": name, "num_clients": 5, "min_clients": 5, "fraction_evaluate": 0.0}
    straight = run_inprocess(small_config(num_rounds=3, **opts))
    first = run_inprocess(small_config(num_rounds=1, **opts))
    resumed = run_inprocess(small_config(num_rounds=3, resume_dir=str(first), **opts))
    wa, wb = RunFolder(straight).load_checkpoint()["arrays"], RunFolder(resumed).load_checkpoint()["arrays"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_early_stopping_stops_with_status_stopped(small_config):
    cfg = small_config(num_rounds=30, early_stopping_patience=1, early_stopping_min_delta=0.5)
    summary = json.loads((run_inprocess(cfg) / "summary.json").read_text())
    assert summary["status"] == "stopped" and "early stopping" in summary["reason"]
    assert summary["rounds"] == 2  # round 1 improves on nothing-yet, round 2 cannot gain 0.5


def test_corrupt_checkpoint_is_a_clear_error(small_config):
    run_dir = run_inprocess(small_config())
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a fedtrain checkpoint"):
        run_inprocess(small_config(resume_dir=str(run_dir)))


def test_failure_still_writes_summary(small_config, monkeypatch):
    import fedtrain.federation.client_tasks as client

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(client, "train_local", broken)
    cfg = small_config()
    # As under Flower's runtimes, a raising ClientApp is an error reply: the round fails, the run ends "failed".
    run_dir = run_inprocess(cfg)
    assert [p.name for p in Path(cfg.output.out_dir).iterdir()] == [run_dir.name]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "disk on fire" in summary["reason"]
    assert "RuntimeError" in summary["reason"]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_by_name_runs(small_config, name):
    cfg = small_config(strategy=name, num_clients=5, min_clients=5)
    expected = {
        "fedavg": "FedAvg",
        "fedprox": "FedProx",
        "fedadam": "FedAdam",
        "fedyogi": "FedYogi",
        "fedavgm": "FedAvgM",
        "fedmedian": "FedMedian",
        "fedtrimmedavg": "FedTrimmedAvg",
        "krum": "Krum",
    }
    assert type(build_strategy(cfg)).__name__ == expected[name]
    summary = json.loads((run_inprocess(cfg) / "summary.json").read_text())
    data = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)
    untrained = evaluate(build_model(cfg.model, data.input_shape, len(data.classes), seed=cfg.runtime.seed), data.test)
    assert summary["status"] == "completed" and summary["final"]["accuracy"] > untrained.accuracy + 0.1


def test_stage_registry_matches_config():
    assert tuple(KNOWN_STAGES) == STAGES.names() == ("pretrain", "finetune", "export")


def test_the_summary_and_report_say_which_clients_took_part(small_config):
    run_dir = run_inprocess(small_config(report=True, **{"fraction-train": 0.67}))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    per_round = [r["trained_partitions"] for r in records]
    assert all(len(p) == 2 and set(p) <= {0, 1, 2} for p in per_round)  # 2 of 3 sampled each round
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = {str(pid): sum(pid in p for p in per_round) for pid in range(3) if any(pid in p for p in per_round)}
    assert summary["participants"] == expected and sum(expected.values()) == 4
    assert "clients that took part" in (run_dir / "report.html").read_text()
