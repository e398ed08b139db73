"""The federation: ClientApp handlers, the plan of stages and the ServerApp's plan runner.

The names below are loaded on first use: a deployed ClientApp starts a fresh process for every message, and
importing the server side (stages, export, ONNX) there would cost seconds each time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_STAGE_NAMES = ("STAGES", "FederatedStage", "FinetuneStage", "OneShotStage", "PretrainLayerStage", "Stage",
                "StageResult", "build_plan")  # fmt: skip
_WHERE = {
    "build_client_app": "apps",
    "build_server_app": "apps",
    "handle_evaluate": "client",
    "handle_train": "client",
    "RunContext": "run_context",
    "run_server": "server",
    **dict.fromkeys(_STAGE_NAMES, "stages"),
}

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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
