"""Run-time faults of a whole run: non-finite training, interrupts, the run folder under crashes and races."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord
from test_selection import _outcome, _tracker

from fedtrain.results import RunFolder
from fedtrain.runtime import run_inprocess
from fedtrain.runtime.flwr_run import flwr_run, local_superlink_pids

ROOT = Path(__file__).resolve().parents[1]


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


def test_run_folders_created_at_once_never_collide(tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def slow_mkdir(self: Path, *args: object, **kwargs: object) -> None:  # widens any check-then-create window
        time.sleep(0.005)
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", slow_mkdir)
    made: list[Path] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def create() -> None:
        barrier.wait()
        try:
            for _ in range(8):
                made.append(RunFolder.create(tmp_path / "runs", "arm").path)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=create) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(made) == 128 == len(set(made)) == len(list((tmp_path / "runs").iterdir()))


def test_a_torn_last_metrics_line_is_skipped_and_repaired_on_resume(small_config):
    run_dir = run_inprocess(small_config(num_rounds=2))
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"phase": "finetune", "round": 3, "test_acc')  # killed while appending
    assert [r["round"] for r in RunFolder(run_dir).read_metrics()] == [1, 2]
    resumed = run_inprocess(small_config(num_rounds=3, resume_dir=str(run_dir)))
    assert [r["round"] for r in RunFolder(resumed).read_metrics()] == [1, 2, 3]


def test_run_folder_files_are_written_through_a_temporary_file(tmp_path, monkeypatch):
    import os

    folder = RunFolder.create(tmp_path)
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    folder.write_json("summary.json", {"status": "completed"})
    folder.save_checkpoint({"state": {}})
    assert len(synced) >= 2 and sorted(p.name for p in folder.path.iterdir()) == ["checkpoints", "summary.json"]


@pytest.mark.slow
def test_flwr_run_with_the_wrong_num_supernodes_fails_visibly(tmp_path):
    # 6 SuperNodes for num-clients=4: the ServerApp refuses; `flwr run` itself exits 0, fedtrain's driver does not.
    home = tmp_path / "flwr-home"
    config = {"out-dir": str(tmp_path / "runs"), "num-clients": 4, "hidden-sizes": "16", "progress": False}
    result = flwr_run(ROOT, flwr_home=home, num_supernodes=6, run_config=config, timeout=300)
    assert local_superlink_pids(home) == []
    assert result.returncode != 0 and result.flwr_returncode == 0, result.output[-3000:]
    assert "the federation has 6 SuperNodes but num-clients=4" in result.failure
    assert "\x1b[" not in result.failure and "\n" not in result.failure
