"""End to end through `flwr run .` (Flower's Simulation Engine, Ray). Slow: run with `-m slow`."""

import json
from pathlib import Path

import pytest

from fedtrain.runtime.flwr_run import flwr_run, local_superlink_pids

ROOT = Path(__file__).resolve().parents[1]


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
