"""The federation: ClientApp handlers, the plan of stages and the ServerApp's plan runner."""

from fedtrain.federation.apps import build_client_app, build_server_app
from fedtrain.federation.client import handle_evaluate, handle_train
from fedtrain.federation.run_context import RunContext
from fedtrain.federation.server import run_server
from fedtrain.federation.stages import (
    STAGES,
    FederatedStage,
    FinetuneStage,
    OneShotStage,
    PretrainLayerStage,
    Stage,
    StageResult,
    build_plan,
)

__all__ = [
    "STAGES",
    "FederatedStage",
    "FinetuneStage",
    "OneShotStage",
    "PretrainLayerStage",
    "RunContext",
    "Stage",
    "StageResult",
    "build_client_app",
    "build_plan",
    "build_server_app",
    "handle_evaluate",
    "handle_train",
    "run_server",
]
