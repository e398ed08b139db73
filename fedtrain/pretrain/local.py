"""One client's pretraining of one hidden layer, with or without DP-SGD."""

from __future__ import annotations

import dataclasses

import torch

from fedtrain.config import RunConfig, TrainConfig
from fedtrain.data import ArrayDataset
from fedtrain.models import MLP
from fedtrain.pretrain.objectives import LayerObjective
from fedtrain.privacy.dp_sgd import run_private
from fedtrain.train.loop import TrainResult, make_loader
from fedtrain.train.optimizers import build_optimizer

__all__ = ["pretrain_local", "pretrain_train_config"]


def pretrain_train_config(cfg: RunConfig) -> TrainConfig:
    """The local-training settings of pretraining phases (their own optimizer, rate, batch, epochs)."""
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
    noise_multiplier: float | None = None,
) -> tuple[dict[str, torch.Tensor], TrainResult]:
    """Train hidden layer ``layer`` (and its decoder) on ``data``; return the new arrays and the result.

    The returned arrays are the model's state plus the decoder / visible bias under ``pretrain_aux.``.
    ``noise_multiplier`` switches DP-SGD on (per-sample clipping of the layer objective).
    """
    tc = pretrain_train_config(cfg)
    objective = LayerObjective(model, layer, cfg)
    objective.load_aux_state(aux)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, tc, tc.learning_rate)
    loader = make_loader(data, tc.batch_size, shuffle=True, seed=seed)
    if noise_multiplier is not None:
        objective, loss = run_private(
            objective, optimizer, loader, cfg, epochs=tc.local_epochs, noise_multiplier=noise_multiplier, seed=seed
        )
    else:
        loss = _train(objective, optimizer, loader, tc.local_epochs, seed)
    for p in model.parameters():
        p.requires_grad_(True)
    arrays = {**model.state_dict(), **objective.aux_state()}
    steps = tc.local_epochs * len(loader)
    return arrays, TrainResult(loss=loss, num_examples=len(data.y), steps=steps)


def _train(objective: LayerObjective, optimizer: torch.optim.Optimizer, loader, epochs: int, seed: int) -> float:
    objective.train()
    total, count = 0.0, 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # corruption masks and Gibbs samples
        for _epoch in range(epochs):
            for x, _y in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = objective(x).mean()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(x)
                count += len(x)
    return total / max(count, 1)
