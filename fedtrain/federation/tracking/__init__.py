"""The round loop's bookkeeping, one job per part: evaluation, selection, checkpoints, alerts, the metrics line."""

from fedtrain.federation.tracking.alerts import LossMonitor, RunWarnings
from fedtrain.federation.tracking.bookkeeper import RoundBookkeeper, round_record
from fedtrain.federation.tracking.checkpoints import Checkpointer, ResumePoint, open_run, seed_generators
from fedtrain.federation.tracking.evaluation import CentralEvaluator, CentralScores
from fedtrain.federation.tracking.selection import ModelSelector

__all__ = [
    "CentralEvaluator",
    "CentralScores",
    "Checkpointer",
    "LossMonitor",
    "ModelSelector",
    "ResumePoint",
    "RoundBookkeeper",
    "RunWarnings",
    "open_run",
    "round_record",
    "seed_generators",
]
