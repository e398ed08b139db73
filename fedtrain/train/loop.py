"""The local training loop and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from fedtrain.config import TrainConfig
from fedtrain.data import ArrayDataset
from fedtrain.train.losses import build_criterion, l1_penalty, proximal_term
from fedtrain.train.optimizers import build_optimizer

__all__ = ["EvalResult", "TrainResult", "evaluate", "make_loader", "train_local"]


@dataclass(frozen=True)
class TrainResult:
    """What one client's local training reports."""

    loss: float
    num_examples: int
    steps: int


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int


def make_loader(
    ds: ArrayDataset, batch_size: int, *, shuffle: bool, seed: int = 0, class_balanced: bool = False
) -> DataLoader:
    """DataLoader over ``ds``; ``batch_size=0`` means one full batch.

    ``class_balanced`` draws an epoch of ``len(ds)`` records with replacement, each with probability
    proportional to 1 / (its class's count), so every class present is drawn equally often on average.
    """
    tensors = TensorDataset(torch.from_numpy(ds.x), torch.from_numpy(ds.y))
    size = len(ds.y) if batch_size == 0 else min(batch_size, len(ds.y))
    gen = torch.Generator().manual_seed(seed)
    if class_balanced:
        counts = np.bincount(ds.y)
        weights = torch.from_numpy(1.0 / counts[ds.y])
        sampler = WeightedRandomSampler(weights, num_samples=len(ds.y), replacement=True, generator=gen)
        return DataLoader(tensors, batch_size=size, sampler=sampler)
    return DataLoader(tensors, batch_size=size, shuffle=shuffle, generator=gen)


def train_local(
    model: nn.Module,
    data: ArrayDataset,
    cfg: TrainConfig,
    *,
    lr: float,
    seed: int,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.local_epochs`` epochs; return the mean training loss."""
    model.train()
    criterion = build_criterion(cfg, data.y, data.num_classes)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg, lr)
    loader = make_loader(data, cfg.batch_size, shuffle=True, seed=seed, class_balanced=cfg.sampler == "weighted")
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    total, count, steps = 0.0, 0, 0
    for _epoch in range(cfg.local_epochs):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            objective = loss
            if cfg.l1 > 0:
                objective = objective + cfg.l1 * l1_penalty(model)
            if global_params is not None:
                objective = objective + proximal_mu * proximal_term(model, global_params)
            objective.backward()
            if cfg.clip_grad_value > 0:
                nn.utils.clip_grad_value_(model.parameters(), cfg.clip_grad_value)
            if cfg.clip_grad_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            optimizer.step()
            total += loss.item() * len(y)
            count += len(y)
            steps += 1
    return TrainResult(loss=total / max(count, 1), num_examples=len(data.y), steps=steps)


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, batch_size: int = 1024) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on ``data``."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct = 0.0, 0
    for x, y in make_loader(data, batch_size, shuffle=False):
        logits = model(x)
        loss += criterion(logits, y).item()
        correct += int((logits.argmax(1) == y).sum())
    n = len(data.y)
    return EvalResult(loss=loss / n, accuracy=correct / n, num_examples=n)
