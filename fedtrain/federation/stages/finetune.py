"""Supervised fine-tuning of the whole network (plan entry ``finetune``)."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord

from fedtrain import wire
from fedtrain.config import RunConfig
from fedtrain.federation.stages.base import STAGES, Stage
from fedtrain.federation.stages.federated import FederatedStage
from fedtrain.federation.stages.pretrain import hidden_keys
from fedtrain.train import learning_rate

__all__ = ["FinetuneStage"]


class FinetuneStage(FederatedStage):
    """Supervised training of the whole network, from pretrained or fresh weights.

    With ``freeze-rounds`` N, the hidden layers stay frozen for the first N rounds (a linear probe
    on the pretrained features), then everything trains.
    """

    name = "finetune"

    @property
    def num_rounds(self) -> int:
        return self.cfg.strategy.num_rounds

    def _freeze_depth(self, phase_round: int) -> int:
        return self.cfg.num_hidden_layers if phase_round <= self.cfg.pretrain.freeze_rounds else 0

    def train_config(self, phase_round: int, global_round: int) -> ConfigRecord:
        lr = learning_rate(self.cfg.train, phase_round, self.num_rounds)
        config = ConfigRecord({wire.PHASE: self.name, wire.LR: lr, wire.GLOBAL_ROUND: global_round})
        if self._freeze_depth(phase_round):
            config[wire.FREEZE_DEPTH] = self._freeze_depth(phase_round)
        return config

    def frozen_keys(self, phase_round: int, arrays: ArrayRecord) -> set[str]:
        return hidden_keys(arrays, range(self._freeze_depth(phase_round)))


@STAGES.register("finetune")
def _finetune_stage(cfg: RunConfig) -> list[Stage]:
    return [FinetuneStage(cfg)]
