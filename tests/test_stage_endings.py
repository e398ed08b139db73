"""How stages end and how a cut run resumes across them: one-shot stages, early stopping, budget stops."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message

from fedtrain.data import build_federated_data
from fedtrain.errors import CheckpointError
from fedtrain.federation import STAGES, FinetuneStage, OneShotStage, RunContext, build_client_app
from fedtrain.federation.dp_plan import planned_segments
from fedtrain.privacy.dp_sgd import plan_steps
from fedtrain.privacy.ledger import PrivacyLedger
from fedtrain.results import RunFolder
from fedtrain.runtime import InProcessGrid, run_inprocess

DP = {"dp_level": "sample", "model": "mlp", "hidden_sizes": "16", "batch_size": 32, "local_epochs": 1}


class Halve(OneShotStage):
    """Changes the arrays, so a resume that lost them would train from other weights."""

    name = "halve"

    def apply(self, ctx: RunContext) -> ArrayRecord:
        return ArrayRecord({k: v * 0.5 for k, v in ctx.arrays.to_torch_state_dict().items()})


@pytest.fixture
def halve_stage() -> Iterator[None]:
    STAGES.register("halve", lambda cfg: [Halve(cfg)])
    yield
    STAGES._entries.pop("halve")


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _failing_at(global_round: int):
    app = build_client_app()

    def client(msg: Message, context: Context) -> Message:
        if msg.metadata.message_type == "train" and int(msg.content["config"]["global-round"]) == global_round:
            raise RuntimeError("node lost")
        return app(msg, context)

    return client


def _arrays(run_dir: Path) -> dict[str, torch.Tensor]:
    return RunFolder(run_dir).load_checkpoint("latest")["arrays"]


def test_a_run_cut_right_after_a_one_shot_stage_resumes_from_its_arrays(small_config, halve_stage):
    plan = {"plan": "finetune,halve,finetune", "num_rounds": 2}
    straight = run_inprocess(small_config(**plan, run_name="straight"))
    cfg = small_config(**plan, run_name="cut")
    cut = run_inprocess(cfg, grid=InProcessGrid(_failing_at(3), 3, cfg.to_flat()))  # the second finetune's round 1
    assert _summary(cut)["status"] == "failed"
    state = RunFolder(cut).load_checkpoint("latest")["state"]
    assert (state["stage_index"], state["stage_round"]) == (2, 0)  # the one-shot stage's ending was checkpointed
    resumed = run_inprocess(small_config(**plan, resume_dir=str(cut)))
    a, b = _arrays(straight), _arrays(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [p["name"] for p in _summary(resumed)["phases"]][-2:] == ["halve", "finetune"]


def test_early_stopping_ends_its_stage_and_the_plan_goes_on(small_config, halve_stage):
    cfg = small_config(plan="finetune,halve", num_rounds=30, early_stopping_patience=1, early_stopping_min_delta=0.5)
    run_dir = run_inprocess(cfg)
    summary = _summary(run_dir)
    assert summary["status"] == "stopped" and "early stopping" in summary["reason"]
    assert [(p["name"], p["status"]) for p in summary["phases"]] == [("finetune", "stopped"), ("halve", "completed")]
    records = RunFolder(run_dir).read_metrics()
    # A resume of the stopped run trains no further round (its ending is in the checkpoint).
    resumed = run_inprocess(small_config(plan="finetune,halve", num_rounds=30, early_stopping_patience=1,
                                         early_stopping_min_delta=0.5, resume_dir=str(run_dir)))  # fmt: skip
    assert RunFolder(resumed).read_metrics() == records and _summary(resumed)["status"] == "stopped"


def test_a_completed_run_resumed_with_more_rounds_extends_its_last_stage(small_config):
    first = run_inprocess(small_config(num_rounds=2))
    resumed = run_inprocess(small_config(num_rounds=4, resume_dir=str(first)))
    assert [r["round"] for r in RunFolder(resumed).read_metrics()] == [1, 2, 3, 4]


def test_one_shot_stages_spend_no_dp_budget(small_config, halve_stage):
    plain, with_halve = small_config(**DP), small_config(**DP, plan="finetune,halve")
    client = build_federated_data(plain.data, plain.partition, plain.runtime.seed).clients[0]
    assert planned_segments(plain, client) == planned_segments(with_halve, client)
    two = small_config(**{**DP, "hidden_sizes": "16,8"}, plan="pretrain,finetune", pretrain_rounds=3)
    pretrain = plan_steps(len(client.train.y), two.pretrain.pretrain_batch_size, two.pretrain.pretrain_epochs)
    finetune = plan_steps(len(client.labeled.y), two.train.batch_size, two.train.local_epochs)
    assert planned_segments(two, client) == [
        (pretrain.sample_rate, 2 * 3 * pretrain.steps_per_call),  # both layers, every round: one segment
        (finetune.sample_rate, two.strategy.num_rounds * finetune.steps_per_call),
    ]


def test_a_stage_whose_client_task_is_unknown_fails_clearly(small_config):
    class Distill(FinetuneStage):
        name = "distill"

    STAGES.register("distill", lambda cfg: [Distill(cfg)])
    try:
        summary = _summary(run_inprocess(small_config(plan="distill", num_rounds=1)))
    finally:
        STAGES._entries.pop("distill")
    assert summary["status"] == "failed" and "phase 'distill', which this client does not know" in summary["reason"]


def test_resuming_with_another_architecture_is_refused_and_leaves_the_folder(small_config):
    run_dir = run_inprocess(small_config(num_rounds=1, hidden_sizes="32"))
    config_before = (run_dir / "config.toml").read_text()
    with pytest.raises(CheckpointError, match=r'--resume cannot change hidden-sizes \("32" -> "16"\)'):
        run_inprocess(small_config(num_rounds=2, hidden_sizes="16", resume_dir=str(run_dir)))
    assert (run_dir / "config.toml").read_text() == config_before


def test_a_budget_stopped_run_checkpoints_the_privacy_it_reports(small_config):
    cfg = small_config(num_rounds=10, dp_noise_multiplier=1.2, dp_target_epsilon=2.0, **DP)
    run_dir = run_inprocess(cfg)
    assert _summary(run_dir)["status"] == "stopped"
    saved = RunFolder(run_dir).load_checkpoint("latest")["state"]["privacy"]
    assert PrivacyLedger(cfg, saved).document() == json.loads((run_dir / "privacy.json").read_text())


def test_wall_time_adds_up_over_sessions(small_config):
    first = run_inprocess(small_config(num_rounds=2))
    seconds = _summary(first)["wall_seconds"]
    assert RunFolder(first).load_checkpoint("latest")["state"]["wall_seconds"] > 0  # kept current in checkpoints
    resumed = run_inprocess(small_config(num_rounds=3, resume_dir=str(first)))
    assert _summary(resumed)["wall_seconds"] > seconds
