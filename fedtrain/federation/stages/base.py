"""The stage contract: one step of a run's plan, federated (rounds) or one-shot (no rounds)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ArrayRecord

from fedtrain.config import RunConfig
from fedtrain.federation.run_context import RunContext
from fedtrain.federation.run_state import StageRecord
from fedtrain.registry import Registry

__all__ = ["STAGES", "OneShotStage", "Stage", "StageFactory", "StageResult"]


@dataclass
class StageResult:
    """How a stage ended; ``arrays`` are handed to the next stage.

    ``ends_run``: whether the run ends here. A failure or a spent privacy budget ends it; early stopping
    ends only its stage (``status="stopped"``, ``ends_run=False``), and the plan goes on (e.g. to export).
    """

    name: str
    arrays: ArrayRecord
    rounds: int
    status: str  # "completed" | "stopped" | "failed"
    reason: str = ""
    ends_run: bool | None = None  # default: every ending but "completed"

    def __post_init__(self) -> None:
        if self.ends_run is None:
            self.ends_run = self.status != "completed"


class Stage(ABC):
    """One step of the plan. :meth:`run` is the template; subclasses implement :meth:`execute`.

    ``run`` resumes where a cut run stopped, hands the result's arrays on through the context and
    records the stage's ending in the run state.
    """

    name: str = ""  # the plan entry that makes this stage

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @property
    def label(self) -> str:
        """Name in logs, metrics and summary.json."""
        return self.name

    @property
    def num_rounds(self) -> int:
        """Federated rounds this stage runs at most (0 for one-shot stages)."""
        return 0

    def summary(self) -> str:
        return self.label

    def run(self, ctx: RunContext) -> StageResult:
        resuming = ctx.state.stage_index == ctx.stage_index
        done_rounds = ctx.state.stage_round if resuming else 0
        result = self.execute(ctx, done_rounds)
        ctx.arrays = result.arrays
        s = ctx.state
        s.stages.append(StageRecord(result.name, result.rounds, result.status, result.reason))
        if result.ends_run:  # the position stays, so a resume (e.g. with a larger budget) continues the stage
            ctx.checkpointer.persist_privacy()  # the round that ended the stage may have spent budget
            return result
        s.stage_index, s.stage_round = ctx.stage_index + 1, 0
        self.after(ctx, result)
        if self.checkpoints_ending(result):
            ctx.checkpointer.save(ctx.arrays, best=False)  # resume starts the next stage from these arrays
        return result

    def checkpoints_ending(self, result: StageResult) -> bool:
        """Whether to checkpoint the position after this stage; a resume then skips it.

        Always, except after a federated stage that ran all its rounds: its last round's checkpoint is kept,
        so that ``--resume`` with more rounds extends the stage.
        """
        return True

    @abstractmethod
    def execute(self, ctx: RunContext, done_rounds: int) -> StageResult:
        """Do the stage's work from ``ctx.arrays``; ``done_rounds`` rounds were done before a resume."""

    def after(self, ctx: RunContext, result: StageResult) -> None:  # noqa: B027  (an optional hook)
        """Called once the stage completed (e.g. draw a figure of what it learned)."""


class OneShotStage(Stage):
    """A stage without rounds or strategy (export, calibration, publication).

    :meth:`apply` reads what it needs from the context and returns the arrays for the next stage
    (usually the ones it was given). Its ending is checkpointed with those arrays, so a resumed run skips
    it and the next stage starts from them.
    """

    @abstractmethod
    def apply(self, ctx: RunContext) -> ArrayRecord:
        """Do the work; return the global arrays after this stage."""

    def execute(self, ctx: RunContext, done_rounds: int) -> StageResult:
        return StageResult(self.label, self.apply(ctx), 0, "completed")


# A plan entry (``plan = "pretrain,finetune"``) names a factory; one entry may expand to several stages.
StageFactory = Callable[[RunConfig], list[Stage]]
STAGES: Registry[StageFactory] = Registry("plan")
