"""Local training: optimizers, schedules, losses and penalties, the training loop."""

from fedtrain.train.loop import EvalResult, TrainResult, evaluate, make_loader, train_local
from fedtrain.train.optimizers import OPTIMIZERS, build_optimizer
from fedtrain.train.schedules import SCHEDULES, learning_rate

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "EvalResult",
    "TrainResult",
    "build_optimizer",
    "evaluate",
    "learning_rate",
    "make_loader",
    "train_local",
]
