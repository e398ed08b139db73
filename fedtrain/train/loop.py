"""The one local training loop, its objectives and penalties, and evaluation.

Every kind of local work runs through :func:`run_local`: supervised fine-tuning (:class:`Supervised`,
``criterion(model(x), y)``) and layer-wise pretraining (:class:`PerSampleLoss`, a module returning
per-sample losses), each with or without a privacy engine (:class:`Privacy`; DP-SGD is
:class:`fedtrain.privacy.dp_sgd.PrivateTraining`). So every setting applies the same way wherever it
means something:

- ``weight-decay`` inside the optimizer;
- ``l1`` and FedProx's proximal term added to the loss, or, under a privacy engine, applied as
  decoupled steps after each logical private step (Opacus privatises only per-sample gradients
  and would drop a penalty's gradient silently);
- ``clip-grad-norm`` / ``clip-grad-value`` between backward and step; a privacy engine clips per
  sample instead, so they are refused there (the config loader refuses them first);
- ``sampler`` for supervised objectives only (it needs labels); ``class-weights`` and
  ``label-smoothing`` are part of the supervised criterion;
- under a privacy engine an empty Poisson batch is a step like any other, on noise alone (the accountant
  counts it; :meth:`Session.empty_batch`), with weight decay and the decoupled penalties.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset, WeightedRandomSampler

from fedtrain.config import TrainConfig
from fedtrain.data import ArrayDataset
from fedtrain.errors import ConfigError
from fedtrain.train.augment import augmented
from fedtrain.train.losses import build_criterion, l1_penalty, proximal_term
from fedtrain.train.optimizers import build_optimizer

__all__ = [
    "Batch",
    "EvalResult",
    "Objective",
    "Penalties",
    "PerSampleLoss",
    "Privacy",
    "Session",
    "Supervised",
    "TrainResult",
    "evaluate",
    "make_loader",
    "run_local",
    "train_local",
]

Batch = tuple[torch.Tensor, torch.Tensor]  # (x, y)


@dataclass(frozen=True)
class TrainResult:
    """What one client's local training reports."""

    loss: float  # mean objective over the records seen, penalties excluded
    num_examples: int
    steps: int  # logical optimizer steps (under DP-SGD: what the accountant counts)


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int


class Objective(Protocol):
    """The training loss of one batch."""

    @property
    def supervised(self) -> bool:
        """Whether the loss reads labels (so label-based settings such as ``sampler`` apply)."""
        ...

    def __call__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Supervised:
    """``criterion(module(x), y)``: fine-tuning."""

    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    supervised = True

    def __call__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(module(x), y)


@dataclass(frozen=True)
class PerSampleLoss:
    """The mean of ``module(x)``, a module that returns per-sample losses ``(B,)`` (pretraining objectives)."""

    supervised = False

    def __call__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return module(x).mean()


@dataclass(frozen=True)
class Session:
    """What one local call trains with: the plain parts, or a privacy engine's wrappers of them."""

    module: nn.Module  # what runs forward: the model, or Opacus' GradSampleModule around it
    trained: nn.Module  # the plain module whose weights train (penalties and clipping act on it)
    optimizer: torch.optim.Optimizer
    loader: DataLoader | ShuffledBatches  # a privacy engine gets the DataLoader it wraps
    objective: Objective

    def epoch(self) -> AbstractContextManager[Iterable[Batch]]:
        """The batches of one epoch."""
        return contextlib.nullcontext(self.loader)

    def stepped(self) -> bool:
        """Whether the last ``optimizer.step()`` was a logical step (not a physical sub-batch)."""
        return True

    def empty_batch(self) -> bool:
        """Ready the optimizer to step on an empty batch; whether it should (no: a plain loader yields none)."""
        return False


class Privacy(Protocol):
    """A privacy engine: wraps a plain :class:`Session` into a private one for the whole call."""

    def attach(self, session: Session) -> AbstractContextManager[Session]: ...


class Penalties:
    """L1 on weight matrices and FedProx's ``mu/2 |w - w_start|^2``: in the loss, or as decoupled steps."""

    def __init__(self, module: nn.Module, *, l1: float, proximal_mu: float) -> None:
        self.l1, self.mu = l1, proximal_mu
        # FedProx's anchor is the global model the call starts from.
        self.anchor = [p.detach().clone() for p in module.parameters()] if proximal_mu > 0 else None

    def add_to(self, loss: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """``loss`` plus the penalties, for training without a privacy engine."""
        if self.l1 > 0:
            loss = loss + self.l1 * l1_penalty(module)
        if self.anchor is not None:
            loss = loss + self.mu * proximal_term(module, self.anchor)
        return loss

    @torch.no_grad()
    def step(self, module: nn.Module, lr: float) -> None:
        """One decoupled gradient step of the penalties (after each logical private step)."""
        for i, (name, p) in enumerate(module.named_parameters()):
            if not p.requires_grad:
                continue
            if self.anchor is not None:
                p.sub_(lr * self.mu * (p - self.anchor[i]))
            if self.l1 > 0 and name.endswith("weight") and p.dim() > 1:  # the weights l1_penalty covers
                p.sub_(lr * self.l1 * torch.sign(p))


class ShuffledIndices:
    """The record indices of each batch of :func:`make_loader`'s shuffling loader, drawn as its iterators draw them.

    Each epoch (each ``iter``) first takes the iterator's base seed from the loader's generator, then the
    sampler's permutation, so the batches are the same records in the same order as the DataLoader's.
    """

    def __init__(self, num_records: int, batch_size: int, seed: int) -> None:
        size = num_records if batch_size == 0 else min(batch_size, num_records)
        self.generator = torch.Generator().manual_seed(seed)
        self._sampler = BatchSampler(RandomSampler(range(num_records), generator=self.generator), size, False)

    def __len__(self) -> int:
        return len(self._sampler)

    def __iter__(self) -> Iterator[torch.Tensor]:
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # the DataLoader iterator's base seed
        for batch in self._sampler:
            yield torch.tensor(batch)


class ShuffledBatches:
    """The batches of :func:`make_loader`'s shuffling loader (:class:`ShuffledIndices`), sliced instead of collated.

    A batch is ``x[idx]`` rather than a fetch and ``torch.stack`` per record (a quarter of a small client's
    training time).
    """

    def __init__(self, ds: ArrayDataset, batch_size: int, seed: int) -> None:
        self.x, self.y = torch.from_numpy(ds.x), torch.from_numpy(ds.y)
        self._indices = ShuffledIndices(len(ds.y), batch_size, seed)
        self.generator = self._indices.generator

    def __len__(self) -> int:
        return len(self._indices)

    def __iter__(self) -> Iterator[Batch]:
        for idx in self._indices:
            yield self.x[idx], self.y[idx]


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
        weights = (1.0 / counts[ds.y]).tolist()
        sampler = WeightedRandomSampler(weights, num_samples=len(ds.y), replacement=True, generator=gen)
        return DataLoader(tensors, batch_size=size, sampler=sampler)
    return DataLoader(tensors, batch_size=size, shuffle=shuffle, generator=gen)


def run_local(
    module: nn.Module,
    objective: Objective,
    data: ArrayDataset,
    settings: TrainConfig,
    *,
    lr: float,
    seed: int,
    proximal_mu: float = 0.0,
    privacy: Privacy | None = None,
) -> TrainResult:
    """Train ``module``'s trainable parameters in place for ``settings.local_epochs`` epochs.

    Parameters
    ----------
    module
        The model (fine-tuning) or a module whose forward returns per-sample losses (pretraining).
    objective
        The loss of a batch: :class:`Supervised` or :class:`PerSampleLoss`.
    settings
        Optimizer, batch size, epochs, penalties, clipping and sampler (``lr`` overrides its rate:
        the server sends each round's rate).
    seed
        Seeds the batch order and, in a forked torch RNG, the draws of the call (dropout,
        corruption masks, Gibbs samples); a privacy engine reseeds with its noise seed.
    proximal_mu
        FedProx's mu; the anchor is the weights ``module`` starts from.
    privacy
        A privacy engine (DP-SGD); ``None`` trains without one.

    Raises
    ------
    ConfigError
        For local gradient clipping or a weighted sampler under a privacy engine.
    """
    if privacy is not None:
        refused = {
            "clip-grad-norm": settings.clip_grad_norm > 0,
            "clip-grad-value": settings.clip_grad_value > 0,
            "sampler": objective.supervised and settings.sampler != "uniform",
        }
        if any(refused.values()):
            raise ConfigError(
                f"{', '.join(k for k, on in refused.items() if on)} cannot be used with DP-SGD: it clips each "
                "per-sample gradient at dp-max-grad-norm itself, and its accounting assumes uniform Poisson "
                "sampling; set clip-grad-norm=0, clip-grad-value=0 and sampler='uniform'"
            )
    objective = augmented(objective, settings, seed=seed)  # augment: k shifted/rotated copies of each record
    module.train()
    optimizer = build_optimizer([p for p in module.parameters() if p.requires_grad], settings, lr)
    balanced = objective.supervised and settings.sampler == "weighted"
    loader: DataLoader | ShuffledBatches
    if privacy is None and not balanced:
        loader = ShuffledBatches(data, settings.batch_size, seed)
    else:  # Opacus wraps a DataLoader; the weighted sampler draws its own way
        loader = make_loader(data, settings.batch_size, shuffle=True, seed=seed, class_balanced=balanced)
    penalties = Penalties(module, l1=settings.l1, proximal_mu=proximal_mu)
    plain = Session(module=module, trained=module, optimizer=optimizer, loader=loader, objective=objective)
    total, count = 0.0, 0
    with torch.random.fork_rng():
        # The CPU generator only: torch.manual_seed also queues a formatted stack trace for every lazy accelerator
        # backend, milliseconds per call deep inside a ClientApp (profiled: a third of an in-process round).
        torch.random.default_generator.manual_seed(seed)
        with privacy.attach(plain) if privacy is not None else contextlib.nullcontext(plain) as session:
            for _epoch in range(settings.local_epochs):
                for loss, n in _epoch_losses(session, settings, penalties, lr, private=privacy is not None):
                    total += loss * n
                    count += n
    # One logical step per batch of the plain loader; under DP-SGD one per expected Poisson batch, empty ones
    # included: the steps the accountant counts.
    steps = settings.local_epochs * len(loader)
    return TrainResult(loss=total / max(count, 1), num_examples=len(data.y), steps=steps)


def _epoch_losses(
    s: Session, settings: TrainConfig, penalties: Penalties, lr: float, *, private: bool
) -> Iterator[tuple[float, int]]:
    """Train one epoch; yield each batch's mean loss and size."""
    with s.epoch() as batches:
        for x, y in batches:
            s.optimizer.zero_grad(set_to_none=True)
            if len(y) == 0:  # an empty Poisson batch: no records, no forward (0 examples in the mean loss)
                if not s.empty_batch():
                    continue
                value = 0.0
            else:
                loss = s.objective(s.module, x, y)
                (loss if private else penalties.add_to(loss, s.trained)).backward()
                if settings.clip_grad_value > 0:
                    nn.utils.clip_grad_value_(s.trained.parameters(), settings.clip_grad_value)
                if settings.clip_grad_norm > 0:
                    nn.utils.clip_grad_norm_(s.trained.parameters(), settings.clip_grad_norm)
                value = float(loss.detach())
            s.optimizer.step()
            if private and s.stepped():
                penalties.step(s.trained, lr)
            yield value, len(y)


def train_local(
    model: nn.Module,
    data: ArrayDataset,
    cfg: TrainConfig,
    *,
    lr: float,
    seed: int,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Fine-tune ``model`` in place on labelled ``data`` without DP; return the mean training loss."""
    objective = Supervised(build_criterion(cfg, data.y, data.num_classes))
    return run_local(model, objective, data, cfg, lr=lr, seed=seed, proximal_mu=proximal_mu)


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, batch_size: int = 1024) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on ``data``."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct = 0.0, 0
    xs, ys = torch.from_numpy(data.x), torch.from_numpy(data.y)
    step = batch_size if batch_size > 0 else max(len(ys), 1)  # 0: one full batch, as make_loader
    for start in range(0, len(ys), step):  # the batches of a DataLoader without shuffling, sliced
        x, y = xs[start : start + step], ys[start : start + step]
        logits = model(x)
        loss += criterion(logits, y).item()
        correct += int((logits.argmax(1) == y).sum())
    n = len(data.y)
    return EvalResult(loss=loss / n, accuracy=correct / n, num_examples=n)
