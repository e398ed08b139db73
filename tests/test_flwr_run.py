"""End to end through `flwr run .` (Flower's Simulation Engine, Ray). Slow: run with `-m slow`."""

import json
from pathlib import Path

import pytest

from fedtrain.runtime.flwr_run import flwr_run, local_superlink_pids

ROOT = Path(__file__).resolve().parents[1]


def _run_small(tmp_path, **run_config):
    """`flwr run .` with 4 SuperNodes, its own FLWR_HOME, and a small plan; every process it started is stopped."""
    home = tmp_path / "flwr-home"
    config = {"out-dir": str(tmp_path / "runs"), "num-clients": 4, "hidden-sizes": "16", "progress": False,
              "report": False, **run_config}  # fmt: skip
    result = flwr_run(ROOT, flwr_home=home, num_supernodes=4, run_config=config, timeout=480)
    assert local_superlink_pids(home) == []
    assert result.returncode == 0, result.output[-3000:]
    return result


@pytest.mark.slow
def test_flwr_run_completes_and_writes_the_same_run_folder(tmp_path):
    # Prepare
    home = tmp_path / "flwr-home"
    # Execute
    result = flwr_run(
        ROOT,
        flwr_home=home,
        num_supernodes=10,
        run_config={"out-dir": str(tmp_path / "runs"), "num-rounds": 3, "progress": False},
        timeout=480,
    )
    # Assert
    assert local_superlink_pids(home) == []  # every process it started is stopped
    assert result.returncode == 0, result.output[-3000:]
    assert result.run_dir is not None and result.run_dir.parent == tmp_path / "runs"
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 3 and summary["num_clients"] == 10
    assert (result.run_dir / "report.html").is_file()
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_trained"] for r in records] == [10, 10, 10]


@pytest.mark.slow
def test_flwr_run_keeps_each_clients_accountant_across_phases(tmp_path):
    # Pretraining (1 layer, 1 round) then 2 fine-tuning rounds under DP, on Ray: the accountant
    # lives in each SuperNode's Context.state, so its steps must add up over all three rounds.
    result = _run_small(tmp_path, plan="pretrain,finetune", **{"pretrain-rounds": 1, "num-rounds": 2,
                                                               "dp-level": "sample"})  # fmt: skip
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 3
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["steps_max"] for r in records]
    assert steps[0] < steps[1] < steps[2]  # composed, not restarted each round
    assert summary["privacy"]["sample"]["epsilon_max"] <= 3.0
    clients = json.loads((result.run_dir / "privacy.json").read_text())["sample"]["clients"]
    assert len(clients) == 4 and all(len(c["segments"]) == 2 for c in clients.values())  # pretrain, finetune


@pytest.mark.slow
def test_flwr_run_with_secagg_plus(tmp_path):
    # SecAgg+ on Ray: Flower's mod on every SuperNode, pretraining and fine-tuning both masked.
    result = _run_small(tmp_path, plan="pretrain,finetune", **{"pretrain-rounds": 1, "num-rounds": 2,
                                                               "secure-aggregation": True})  # fmt: skip
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 3
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_trained"] for r in records] == [4, 4, 4] and all(r["secagg_attempts"] == 1 for r in records)
    assert summary["secure_aggregation"]["shares"] == 4
