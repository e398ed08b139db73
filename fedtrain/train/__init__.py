"""Local training: optimizers, schedules, losses and penalties, the training loop."""

from fedtrain.train.loop import (
    EvalResult,
    PerSampleLoss,
    Privacy,
    Session,
    Supervised,
    TrainResult,
    evaluate,
    make_loader,
    run_local,
    train_local,
)
from fedtrain.train.optimizers import OPTIMIZERS, build_optimizer
from fedtrain.train.schedules import SCHEDULES, learning_rate

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "EvalResult",
    "PerSampleLoss",
    "Privacy",
    "Session",
    "Supervised",
    "TrainResult",
    "build_optimizer",
    "evaluate",
    "learning_rate",
    "make_loader",
    "run_local",
    "train_local",
]
