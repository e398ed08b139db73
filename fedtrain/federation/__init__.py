"""The federation: ClientApp handlers, phases and the ServerApp's plan runner."""

from fedtrain.federation.client import handle_evaluate, handle_train
from fedtrain.federation.phases import (
    PHASES,
    FinetunePhase,
    Phase,
    PhaseResult,
    PretrainLayerPhase,
    RoundOutcome,
    build_plan,
)
from fedtrain.federation.server import run_server

__all__ = [
    "PHASES",
    "FinetunePhase",
    "Phase",
    "PhaseResult",
    "PretrainLayerPhase",
    "RoundOutcome",
    "build_plan",
    "handle_evaluate",
    "handle_train",
    "run_server",
]
