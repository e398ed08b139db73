"""Stages of a run's plan, by name (``plan = "pretrain,finetune"``).

A stage is registered in :data:`STAGES` under its plan entry; a factory may expand one entry into
several stages (``pretrain`` gives one per hidden layer). See docs/extending.md to add one.
"""

from fedtrain.config import RunConfig
from fedtrain.federation.stages.base import STAGES, OneShotStage, Stage, StageFactory, StageResult
from fedtrain.federation.stages.federated import FederatedStage
from fedtrain.federation.stages.finetune import FinetuneStage
from fedtrain.federation.stages.pretrain import PretrainLayerStage

# isort: off
from fedtrain.federation.stages.export import ExportStage  # registered last: the choices read in plan order
# isort: on

__all__ = [
    "STAGES",
    "ExportStage",
    "FederatedStage",
    "FinetuneStage",
    "OneShotStage",
    "PretrainLayerStage",
    "Stage",
    "StageFactory",
    "StageResult",
    "build_plan",
]


def build_plan(cfg: RunConfig) -> list[Stage]:
    """The stages named in ``plan``, in order."""
    return [stage for name in cfg.phases for stage in STAGES.get(name)(cfg)]
