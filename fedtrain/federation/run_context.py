"""What every stage of a plan is given: :class:`RunContext`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedtrain.config import RunConfig
from fedtrain.data import Normalizer
from fedtrain.federation.exchange import RoundExchange
from fedtrain.federation.run_state import RunState
from fedtrain.federation.tracking import CentralEvaluator, Checkpointer, RoundBookkeeper, RunWarnings
from fedtrain.pretrain import AUX_PREFIX
from fedtrain.privacy.ledger import PrivacyLedger
from fedtrain.results import RunFolder

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """The run as a stage sees it.

    ``arrays`` are the global arrays: a stage starts from them and leaves its result there for the
    next. ``bookkeeper`` is the metrics sink of federated rounds (evaluation, selection, metrics line,
    checkpoint); ``privacy`` holds what every client has spent so far, ``round_offset`` the global rounds
    of the stages before this one.
    """

    cfg: RunConfig
    grid: Grid
    folder: RunFolder
    arrays: ArrayRecord
    normalizer: Normalizer
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    privacy: PrivacyLedger
    state: RunState
    build_model: Callable[[], nn.Module]  # a fresh model of the run's architecture (random weights)
    make_strategy: Callable[[], Strategy]  # a fresh strategy per federated stage (wrapped for user-level DP)
    exchange: RoundExchange
    evaluator: CentralEvaluator
    checkpointer: Checkpointer
    bookkeeper: RoundBookkeeper
    warnings: RunWarnings
    # Sent with every train and evaluate message: the federation's classes, input shape and normaliser, so a
    # node that holds only its own file scales it as the server does.
    data_config: dict[str, Any] = field(default_factory=dict)
    extra_train_config: Callable[[], dict[str, Any]] = field(default=lambda: {})  # sent every round (DP restore)
    round_offset: int = 0
    stage_index: int = 0  # position of the running stage in the plan

    def model_with(self, arrays: ArrayRecord | None = None) -> nn.Module:
        """A model holding ``arrays`` (default: the global arrays), without any pretraining decoder."""
        model = self.build_model()
        weights = (arrays or self.arrays).to_torch_state_dict()
        model.load_state_dict({k: v for k, v in weights.items() if not k.startswith(AUX_PREFIX)})
        return model

    def warn(self, message: str) -> None:
        self.warnings.warn(message)
