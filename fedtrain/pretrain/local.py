"""One client's pretraining of one hidden layer, with or without DP-SGD, on the shared local loop."""

from __future__ import annotations

import dataclasses

import torch

from fedtrain.config import RunConfig, TrainConfig
from fedtrain.data import ArrayDataset
from fedtrain.models import MLP
from fedtrain.pretrain.objectives import LayerObjective
from fedtrain.privacy.dp_sgd import PrivateTraining
from fedtrain.train.loop import PerSampleLoss, TrainResult, run_local

__all__ = ["pretrain_local", "pretrain_train_config"]


def pretrain_train_config(cfg: RunConfig) -> TrainConfig:
    """The local-training settings of pretraining phases.

    Pretraining has its own optimizer, rate, batch size and epochs; every other setting of ``cfg.train``
    that means something without labels applies as in fine-tuning (momentum, weight decay, l1,
    clip-grad-norm/value). The supervised-only ones (class weights, label smoothing, sampler) do not.
    """
    p = cfg.pretrain
    return dataclasses.replace(
        cfg.train, optimizer=p.pretrain_optimizer, learning_rate=p.pretrain_learning_rate,
        batch_size=p.pretrain_batch_size, local_epochs=p.pretrain_epochs,
    )  # fmt: skip


def pretrain_local(
    model: MLP,
    layer: int,
    aux: dict[str, torch.Tensor],
    data: ArrayDataset,
    cfg: RunConfig,
    *,
    seed: int,
    lr: float | None = None,
    noise_multiplier: float | None = None,
    proximal_mu: float = 0.0,
) -> tuple[dict[str, torch.Tensor], TrainResult]:
    """Train hidden layer ``layer`` (and its decoder) on ``data``; return the new arrays and the result.

    The returned arrays are the model's state plus the decoder / visible bias under ``pretrain_aux.``.

    Parameters
    ----------
    lr
        The learning rate the server sent for the round; ``None`` takes ``pretrain-learning-rate``.
    noise_multiplier
        Switches DP-SGD on (per-sample clipping of the layer objective, Opacus' ``hooks`` mode).
    proximal_mu
        FedProx's mu, anchored at the layer and decoder the round starts from.
    """
    tc = pretrain_train_config(cfg)
    objective = LayerObjective(model, layer, cfg)
    objective.load_aux_state(aux)
    privacy = None
    if noise_multiplier is not None:  # per-sample losses: hooks (Opacus' ghost clipping needs a criterion)
        privacy = PrivateTraining.from_config(
            cfg, noise_multiplier=noise_multiplier, seed=seed, grad_sample_mode="hooks"
        )
    rate = tc.learning_rate if lr is None else lr
    result = run_local(
        objective, PerSampleLoss(), data, tc, lr=rate, seed=seed, proximal_mu=proximal_mu, privacy=privacy
    )
    for p in model.parameters():
        p.requires_grad_(True)
    return {**model.state_dict(), **objective.aux_state()}, result
