"""The seams of docs/extending.md: a new stage and a new round exchange plug in without editing the core."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
from flwr.app import ArrayRecord

from fedtrain.errors import ConfigError
from fedtrain.federation import STAGES, OneShotStage, RunContext
from fedtrain.federation.exchange import EXCHANGES, MessageExchange, RoundRequest, TrainReplies
from fedtrain.results import RunFolder
from fedtrain.runtime import run_inprocess


class WeightStats(OneShotStage):
    """A tiny one-shot stage: writes statistics of the global model and what the context knows."""

    name = "weight-stats"

    def apply(self, ctx: RunContext) -> ArrayRecord:
        model = ctx.model_with()
        stats = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "l2": float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters()))),
            "classes": list(ctx.classes),
            "input_shape": list(ctx.input_shape),
            "global_round": ctx.state.global_round,
            "epsilon_max": ctx.privacy.summary().get("sample", {}).get("epsilon_max"),
        }
        ctx.folder.write_json("weight-stats.json", stats)
        return ctx.arrays


@pytest.fixture
def weight_stats_stage() -> Iterator[None]:
    STAGES.register("weight-stats", lambda cfg: [WeightStats(cfg)])
    yield
    STAGES._entries.pop("weight-stats")


def test_unknown_stage_is_refused_by_the_config(small_config):
    with pytest.raises(ConfigError, match="known stages: pretrain, finetune, export"):
        small_config(plan="finetune,weight-stats")


def test_a_registered_one_shot_stage_runs_in_a_plan(small_config, weight_stats_stage):
    cfg = small_config(plan="finetune,weight-stats", num_rounds=2)
    run_dir = run_inprocess(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [(p["name"], p["status"]) for p in summary["phases"]] == [("finetune", "completed"),
                                                                   ("weight-stats", "completed")]  # fmt: skip
    stats = json.loads((run_dir / "weight-stats.json").read_text())
    final = RunFolder(run_dir).load_checkpoint("latest")["arrays"]
    expected_l2 = float(torch.sqrt(sum((v**2).sum() for k, v in final.items() if "weight" in k or "bias" in k)))
    assert stats["global_round"] == 2 and stats["classes"] == [str(c) for c in range(10)]
    assert stats["input_shape"] == [1, 8, 8] and stats["epsilon_max"] is None
    assert stats["l2"] == pytest.approx(expected_l2, rel=1e-5)  # the stage saw the fine-tuned arrays
    # Its ending is checkpointed: a resume skips it (tests/test_stage_endings.py resumes across one).
    assert RunFolder(run_dir).load_checkpoint("latest")["state"]["stage_index"] == 2


def test_a_stage_before_finetune_hands_its_arrays_on(small_config):
    class Zero(OneShotStage):
        name = "zero"

        def apply(self, ctx: RunContext) -> ArrayRecord:
            return ArrayRecord({k: torch.zeros_like(v) for k, v in ctx.arrays.to_torch_state_dict().items()})

    plain = RunFolder(run_inprocess(small_config(num_rounds=1))).load_checkpoint("latest")["arrays"]
    STAGES.register("zero", lambda cfg: [Zero(cfg)])
    try:
        cfg = small_config(plan="zero,finetune", num_rounds=1, run_name="zeroed")
        zeroed = RunFolder(run_inprocess(cfg)).load_checkpoint("latest")["arrays"]
    finally:
        STAGES._entries.pop("zero")
    # Fine-tuning started from the zero stage's arrays: same seed and data, other weights.
    assert plain.keys() == zeroed.keys() and not all(torch.equal(plain[k], zeroed[k]) for k in plain)


def test_a_new_round_exchange_plugs_in_without_editing_stages(small_config):
    seen: list[int] = []

    class CountingExchange(MessageExchange):
        def train(self, request: RoundRequest) -> TrainReplies:
            replies = super().train(request)
            seen.append(len(replies.trained))
            return replies

    EXCHANGES.register("counting", CountingExchange)
    try:
        cfg = small_config(plan="pretrain,finetune", pretrain_rounds=1, num_rounds=2, round_exchange="counting")
        run_dir = run_inprocess(cfg)
    finally:
        EXCHANGES._entries.pop("counting")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert seen == [3, 3, 3]  # one pretraining round and two fine-tuning rounds, all through the new exchange
