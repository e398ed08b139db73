"""Resume after faults: changed keys refused up front, a deleted checkpoint explained, interrupts and wall time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from flwr.app import Context, Message

from fedtrain.errors import CheckpointError
from fedtrain.federation import build_client_app
from fedtrain.federation.tracking.checkpoints import RESUMABLE_KEYS
from fedtrain.results import RunFolder
from fedtrain.runtime import InProcessGrid, run_inprocess


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _breaking_at(global_round: int, error: type[BaseException], pause: float = 0.0):
    """The real ClientApp, except that train messages of ``global_round`` raise ``error`` (after ``pause``)."""
    app = build_client_app()

    def client(msg: Message, context: Context) -> Message:
        if msg.metadata.message_type == "train" and int(msg.content["config"]["global-round"]) == global_round:
            time.sleep(pause)
            raise error("cut")
        return app(msg, context)

    return client


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"hidden_sizes": "16"}, 'hidden-sizes ("32" -> "16")'),
        ({"seed": 7}, "seed (0 -> 7)"),
        ({"num_clients": 4, "dirichlet_alpha": 0.3}, "num-clients (3 -> 4), dirichlet-alpha"),
    ],
)
def test_a_resume_that_changes_the_model_or_data_is_refused_and_leaves_the_folder(small_config, change, named):
    run_dir = run_inprocess(small_config(num_rounds=2))
    before = _snapshot(run_dir)
    with pytest.raises(CheckpointError) as err:
        run_inprocess(small_config(num_rounds=3, resume_dir=str(run_dir), **change))
    message = str(err.value)
    assert message.startswith("--resume cannot change ") and named in message
    assert "Only these keys may change on resume: num-rounds, early-stopping-patience" in message
    assert _snapshot(run_dir) == before  # config.toml, summary.json, metrics.jsonl, checkpoints: untouched


def test_resumable_keys_may_change(small_config):
    run_dir = run_inprocess(small_config(num_rounds=2))
    resumed = run_inprocess(small_config(num_rounds=3, early_stopping_patience=5, report=True, resume_dir=str(run_dir)))
    assert _summary(resumed)["status"] == "completed" and _summary(resumed)["rounds"] == 3
    assert {"num-rounds", "early-stopping-patience", "round-timeout", "out-dir", "report"} <= set(RESUMABLE_KEYS)


def test_a_deleted_latest_checkpoint_says_what_is_missing_and_what_to_do(small_config):
    run_dir = run_inprocess(small_config(num_rounds=3, val_fraction=0.0))  # best = the last round
    (run_dir / "checkpoints" / "latest.pt").unlink()
    with pytest.raises(CheckpointError) as err:
        run_inprocess(small_config(num_rounds=4, val_fraction=0.0, resume_dir=str(run_dir)))
    message = str(err.value)
    assert "latest.pt' (deleted?), though metrics.jsonl records 3 rounds" in message
    assert "best.pt exists (after global round 3)" in message and "before its first round" not in message
    best, latest = run_dir / "checkpoints" / "best.pt", run_dir / "checkpoints" / "latest.pt"
    assert f"`cp {best} {latest}`" in message
    latest.write_bytes(best.read_bytes())  # what the message says to do
    resumed = run_inprocess(small_config(num_rounds=4, val_fraction=0.0, resume_dir=str(run_dir)))
    assert [r["round"] for r in RunFolder(resumed).read_metrics()] == [1, 2, 3, 4]


def test_no_checkpoint_at_all_says_there_is_nothing_to_resume(small_config):
    run_dir = run_inprocess(small_config(num_rounds=1))
    for name in ("latest.pt", "best.pt"):
        (run_dir / "checkpoints" / name).unlink()
    with pytest.raises(CheckpointError, match=r"nor best\.pt, though metrics\.jsonl records 1 rounds"):
        run_inprocess(small_config(num_rounds=2, resume_dir=str(run_dir)))


def test_an_interrupt_stops_the_run_and_resume_goes_on(small_config):
    cfg = small_config(num_rounds=3)
    with pytest.raises(KeyboardInterrupt):
        run_inprocess(cfg, grid=InProcessGrid(_breaking_at(2, KeyboardInterrupt), 3, cfg.to_flat()))
    (run_dir,) = Path(cfg.output.out_dir).iterdir()
    summary = _summary(run_dir)
    assert (summary["status"], summary["reason"]) == ("stopped", "interrupted")
    resumed = run_inprocess(small_config(num_rounds=3, resume_dir=str(run_dir)))
    assert _summary(resumed)["status"] == "completed"
    assert [r["round"] for r in RunFolder(resumed).read_metrics()] == [1, 2, 3]


def test_wall_time_counts_the_time_after_the_last_checkpoint(small_config):
    cfg = small_config(num_rounds=2)
    cut = run_inprocess(cfg, grid=InProcessGrid(_breaking_at(2, RuntimeError, pause=1.5), 3, cfg.to_flat()))
    first = _summary(cut)["wall_seconds"]
    assert first > 1.5
    resumed = run_inprocess(small_config(num_rounds=2, resume_dir=str(cut)))
    assert _summary(resumed)["wall_seconds"] > first  # the failed session's 1.5 s stay counted
