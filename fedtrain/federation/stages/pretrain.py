"""Greedy layer-wise pretraining: one federated stage per hidden layer (plan entry ``pretrain``)."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedtrain import wire
from fedtrain.config import RunConfig
from fedtrain.errors import ModelError
from fedtrain.federation.run_context import RunContext
from fedtrain.federation.stages.base import STAGES, Stage, StageResult
from fedtrain.federation.stages.federated import FederatedStage
from fedtrain.models import MLP
from fedtrain.pretrain import AUX_PREFIX, LayerObjective
from fedtrain.results import plot_filters

__all__ = ["PretrainLayerStage", "hidden_keys"]


def hidden_keys(arrays: ArrayRecord, layers: range) -> set[str]:
    """Array names of the hidden layers ``layers``."""
    prefixes = tuple(f"hidden.{i}." for i in layers)
    return {k for k in arrays if k.startswith(prefixes)}


class PretrainLayerStage(FederatedStage):
    """Greedy layer-wise pretraining of hidden layer ``layer`` (Bengio et al. 2007, Hinton et al. 2006).

    Clients train the layer as an autoencoder, denoising autoencoder or RBM on the features of
    the frozen layers below, computed on their own data (labels unused). The decoder (or RBM
    visible bias) travels with the model under ``pretrain_aux.`` and is dropped at the end; every
    other layer is restored exactly after each aggregation.
    """

    name = "pretrain"
    supervised = False

    def __init__(self, cfg: RunConfig, layer: int) -> None:
        super().__init__(cfg)
        self.layer = layer

    @property
    def label(self) -> str:
        return f"pretrain-{self.layer + 1}"

    @property
    def num_rounds(self) -> int:
        return self.cfg.pretrain.pretrain_rounds

    def train_config(self, phase_round: int, global_round: int) -> ConfigRecord:
        return ConfigRecord({
            wire.PHASE: self.name, wire.LAYER: self.layer, wire.GLOBAL_ROUND: global_round,
            wire.LR: self.cfg.pretrain.pretrain_learning_rate,
        })  # fmt: skip

    def prepare(self, ctx: RunContext, arrays: ArrayRecord) -> ArrayRecord:
        if any(k.startswith(AUX_PREFIX) for k in arrays):  # resumed in the middle of this stage
            return arrays
        model = _mlp(ctx, arrays)
        with torch.random.fork_rng():
            torch.manual_seed(self.cfg.runtime.seed + 7919 * (self.layer + 1))
            objective = LayerObjective(model, self.layer, self.cfg)
        return ArrayRecord({**arrays.to_torch_state_dict(), **objective.aux_state()})

    def finish(self, arrays: ArrayRecord) -> ArrayRecord:
        return ArrayRecord({k: v for k, v in arrays.to_torch_state_dict().items() if not k.startswith(AUX_PREFIX)})

    def central_metrics(self, ctx: RunContext, arrays: ArrayRecord) -> dict[str, Any]:
        """Layer and mean reconstruction error of the central test split (summed over features)."""
        metrics: dict[str, Any] = {"layer": self.layer + 1}
        test = ctx.evaluator.test
        if test is None:
            return metrics
        objective = LayerObjective(_mlp(ctx, arrays), self.layer, self.cfg)
        objective.load_aux_state(arrays.to_torch_state_dict())
        metrics["recon_error"] = float(objective.reconstruction_error(torch.from_numpy(test.x)).mean())
        return metrics

    def frozen_keys(self, phase_round: int, arrays: ArrayRecord) -> set[str]:
        trainable = hidden_keys(arrays, range(self.layer, self.layer + 1))
        return {k for k in arrays if k not in trainable and not k.startswith(AUX_PREFIX)}

    def after(self, ctx: RunContext, result: StageResult) -> None:
        """The first layer's learned filters as images, when inputs are one-channel images."""
        weight = result.arrays.to_torch_state_dict().get("hidden.0.linear.weight")
        shape = ctx.input_shape
        if self.layer == 0 and weight is not None and len(shape) == 3 and shape[0] == 1:
            plot_filters(weight.numpy(), shape[1:], ctx.folder.path)


def _mlp(ctx: RunContext, arrays: ArrayRecord) -> MLP:
    model = ctx.model_with(arrays)
    if not isinstance(model, MLP):  # the config loader refuses this first
        raise ModelError(f"layer-wise pretraining needs model='mlp', not {ctx.cfg.model.model!r}")
    return model


@STAGES.register("pretrain")
def _pretrain_stages(cfg: RunConfig) -> list[Stage]:
    return [PretrainLayerStage(cfg, k) for k in range(cfg.num_hidden_layers)]
