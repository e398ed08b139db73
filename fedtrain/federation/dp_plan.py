"""The DP-SGD steps a client may take over the whole plan, from the plan's stages and their client tasks."""

from __future__ import annotations

from fedtrain.config import RunConfig
from fedtrain.data import ClientData
from fedtrain.federation.client_tasks import client_task
from fedtrain.federation.stages import FederatedStage, build_plan

__all__ = ["planned_segments"]


def planned_segments(cfg: RunConfig, client: ClientData) -> list[tuple[float, int]]:
    """``(sample_rate, steps)`` per run of consecutive stages of one kind, for calibrating sigma once.

    Every round of every federated stage counts (conservative: being sampled is not treated as
    amplification, since the server knows whom it sampled); one-shot stages train nothing.
    """
    segments: list[tuple[float, int]] = []
    previous = ""
    for stage in build_plan(cfg):
        if not isinstance(stage, FederatedStage):
            continue
        task = client_task(stage.name)
        plan = task.dp_plan(cfg, len(task.records(client).y))
        steps = stage.num_rounds * plan.steps_per_call
        if stage.name == previous:  # e.g. the layers of pretraining: one segment, as one accountant entry
            segments[-1] = (segments[-1][0], segments[-1][1] + steps)
        else:
            segments.append((plan.sample_rate, steps))
        previous = stage.name
    return segments
