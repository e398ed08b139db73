"""One local training call on a device: gradient graph + numpy optimizer, with or without DP-SGD.

It does what :func:`fedtrain.train.loop.run_local` does with torch (and Opacus under DP), setting by setting:

- DP-SGD: ``steps = epochs * ceil(N / batch)`` Poisson batches at ``q = 1 / ceil(N / batch)`` (Opacus' rate);
  an empty batch still takes its step, on noise alone (the accountant counts it; Opacus and the torch loop step
  on it); per-sample gradients clipped to ``C`` over the trainable parameters (factor
  ``min(1, C / (norm + 1e-6))``), summed, Gaussian noise of std ``sigma * C`` added per parameter, divided by
  Opacus' expected batch size ``int(N * q)``; L1 and FedProx's proximal term as decoupled steps after each private step;
- without DP: shuffled batches of ``batch`` (the last one smaller), the batch gradient plus the L1 and proximal
  penalties' gradients, ``clip-grad-value`` then ``clip-grad-norm``;
- the optimizer's weight decay inside the update (:mod:`fedtrain.edge.train.optim`).

The loss reported is the mean over records seen of the batch loss, penalties excluded (the torch loop's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedtrain.edge.errors import EdgeModelError
from fedtrain.edge.train.graph import GradientGraph
from fedtrain.edge.train.optim import build_optimizer
from fedtrain.edge.train.sampling import Draws

__all__ = [
    "DPSettings",
    "LocalData",
    "LocalResult",
    "Settings",
    "balanced_class_weight",
    "expected_batch",
    "plan",
    "train",
]

Arrays = dict[str, np.ndarray]


class Settings(Protocol):
    """The local-training settings the trainer reads.

    A ``fedtrain.config.TrainConfig``, not imported: the device layer imports nothing of fedtrain but its errors.
    """

    @property
    def optimizer(self) -> str: ...
    @property
    def momentum(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def l1(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def local_epochs(self) -> int: ...
    @property
    def sampler(self) -> str: ...
    @property
    def clip_grad_norm(self) -> float: ...
    @property
    def clip_grad_value(self) -> float: ...


@dataclass(frozen=True)
class DPSettings:
    noise_multiplier: float
    max_grad_norm: float


@dataclass(frozen=True)
class LocalData:
    """The records of one call: inputs, labels (fine-tuning), class weights and the denoising corruption share."""

    x: np.ndarray
    y: np.ndarray | None = None
    class_weight: np.ndarray | None = None
    corruption: float = 0.0


@dataclass(frozen=True)
class LocalResult:
    loss: float
    num_examples: int
    steps: int


def plan(num_examples: int, batch_size: int, local_epochs: int) -> tuple[float, int]:
    """``(sample_rate, steps)`` of one call: :func:`fedtrain.privacy.dp_sgd.plan_steps`'s rule."""
    size = num_examples if batch_size == 0 else min(batch_size, num_examples)
    batches = math.ceil(num_examples / size)
    return 1.0 / batches, local_epochs * batches


def expected_batch(num_examples: int, sample_rate: float) -> int:
    """Opacus' ``expected_batch_size``: ``int(len(dataset) * sample_rate)`` (what DP-SGD divides by)."""
    return int(num_examples * sample_rate)


def balanced_class_weight(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``class-weights=balanced``: ``n / (k * count_c)`` over the k classes held, 1 elsewhere (scikit-learn's)."""
    counts = np.bincount(labels, minlength=num_classes)
    present = counts > 0
    w = np.ones(num_classes, dtype=np.float64)
    w[present] = len(labels) / (present.sum() * counts[present])
    return w.astype(np.float32)


class _Penalties:
    """L1 on weight matrices and FedProx's proximal term, as fedtrain.train.loop.Penalties applies them."""

    def __init__(self, params: Mapping[str, np.ndarray], trainable: list[str], *, l1: float, mu: float) -> None:
        self.l1, self.mu = l1, mu
        self.anchor = {k: params[k].copy() for k in trainable} if mu > 0 else None
        self.l1_names = {k for k in trainable if k.endswith("weight") and params[k].ndim > 1}

    def gradient(self, params: Mapping[str, np.ndarray], name: str) -> np.ndarray | float:
        g: np.ndarray | float = 0.0
        if self.anchor is not None:
            g = self.mu * (params[name] - self.anchor[name])
        if self.l1 > 0 and name in self.l1_names:
            g = g + self.l1 * np.sign(params[name])
        return g

    def step(self, params: Arrays, names: list[str], lr: float) -> None:
        """One decoupled step after a private step (proximal first, then L1, as the torch loop)."""
        for name in names:
            p = params[name]
            if self.anchor is not None:
                p -= np.float32(lr * self.mu) * (p - self.anchor[name])
            if self.l1 > 0 and name in self.l1_names:
                p -= np.float32(lr * self.l1) * np.sign(p)


def _feed(
    graph: GradientGraph, data: LocalData, idx: np.ndarray, coef: np.ndarray, draws: Draws
) -> dict[str, np.ndarray]:
    """The data inputs of one physical batch, padded to the graph's batch with ``mask = 0``."""
    size, n = graph.spec.batch, len(idx)
    x = np.zeros((size, *data.x.shape[1:]), dtype=np.float32)
    x[:n] = data.x[idx]
    mask = np.zeros(size, dtype=np.float32)
    mask[:n] = coef
    feed = {"x": x, "mask": mask}
    if data.y is not None:
        y = np.zeros(size, dtype=np.int64)
        y[:n] = data.y[idx]
        feed["y"] = y
        k = graph.spec.num_classes
        feed["class_weight"] = data.class_weight if data.class_weight is not None else np.ones(k, np.float32)
    if "corruption" in graph.inputs:
        width = int(np.prod(graph.spec.params[graph.grad_names[0]][1:]))  # the layer's input width
        keep = np.ones((size, width), dtype=np.float32)
        keep[:n] = (draws.uniform(n * width).reshape(n, width) >= data.corruption).astype(np.float32)
        feed["corruption"] = keep
    return feed


def _chunks(idx: np.ndarray, size: int) -> list[np.ndarray]:
    return [idx[i : i + size] for i in range(0, len(idx), size)] or [idx]


def train(
    graph: GradientGraph,
    params: Arrays,
    data: LocalData,
    settings: Settings,
    *,
    lr: float,
    draws: Draws,
    trainable: list[str],
    dp: DPSettings | None = None,
    proximal_mu: float = 0.0,
) -> LocalResult:
    """Train ``params`` (float32 arrays, updated in place) for ``settings.local_epochs`` epochs.

    ``trainable``: the parameters that train (the rest stay as received: frozen layers). ``graph`` must be the
    per-sample graph (clipping inside it, or here in numpy) when ``dp`` is set, the batch graph otherwise.

    Raises
    ------
    EdgeModelError
        When the graph does not fit the mode, or a setting the device cannot honour is on.
    """
    if graph.spec.per_sample != (dp is not None):
        raise EdgeModelError(
            f"{graph.where}: a {'per-sample' if graph.spec.per_sample else 'batch'} graph cannot train "
            f"{'with' if dp is not None else 'without'} DP-SGD; load the {'per-sample' if dp else 'batch'} graph"
        )
    if settings.sampler != "uniform" and data.y is not None:
        raise EdgeModelError(
            f"sampler={settings.sampler!r}: the ONNX client samples uniformly only; set sampler='uniform' or "
            "client-runtime='torch'"
        )
    unknown = [k for k in trainable if k not in graph.spec.params]
    if unknown:
        raise EdgeModelError(f"{graph.where}: the graph gives no gradient for {unknown}")
    n = len(data.x)
    opt = build_optimizer(settings.optimizer, lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    penalties = _Penalties(params, trainable, l1=settings.l1, mu=proximal_mu)
    q, steps = plan(n, settings.batch_size, settings.local_epochs)
    size = n if settings.batch_size == 0 else min(settings.batch_size, n)
    total, count = 0.0, 0
    for _ in range(settings.local_epochs):
        if dp is not None:
            batches = [draws.poisson(n, q) for _ in range(int(1 / q))]  # Opacus' count: int, as its sampler
        else:
            order = draws.permutation(n)
            batches = [order[i : i + size] for i in range(0, n, size)]
        for idx in batches:
            if dp is not None:  # every Poisson batch steps, an empty one on noise alone: each step is counted
                loss = _private_step(graph, params, data, idx, dp, trainable, draws, expected_batch(n, q))
                opt.step(params, {k: loss[1][k] for k in trainable})
                penalties.step(params, trainable, lr)
                batch_loss = loss[0]
            else:
                batch_loss, grads = _batch_gradient(graph, params, data, idx, draws)
                grads = {k: grads[k] + penalties.gradient(params, k) for k in trainable}
                _clip(grads, settings)
                opt.step(params, grads)
            total += batch_loss * len(idx)
            count += len(idx)
    return LocalResult(loss=total / max(count, 1), num_examples=n, steps=steps)


def _weight_sum(data: LocalData, idx: np.ndarray) -> float:
    """The denominator of the batch's mean loss: the class weights of its labels (their count without weights)."""
    if data.y is None or data.class_weight is None:
        return float(len(idx))
    return float(data.class_weight[data.y[idx]].astype(np.float32).sum(dtype=np.float32))


def _batch_gradient(
    graph: GradientGraph, params: Arrays, data: LocalData, idx: np.ndarray, draws: Draws
) -> tuple[float, Arrays]:
    """The batch's mean loss and its gradient, summed over physical chunks."""
    coef = np.float32(1.0 / _weight_sum(data, idx))
    loss, grads = 0.0, dict[str, np.ndarray]()
    for chunk in _chunks(idx, graph.spec.batch):
        part_loss, part = graph.run(params, _feed(graph, data, chunk, np.full(len(chunk), coef), draws))
        loss += part_loss
        grads = part if not grads else {k: grads[k] + part[k] for k in grads}
    return loss, grads


def _private_step(
    graph: GradientGraph,
    params: Arrays,
    data: LocalData,
    idx: np.ndarray,
    dp: DPSettings,
    trainable: list[str],
    draws: Draws,
    expected: int,
) -> tuple[float, Arrays]:
    """The batch's mean loss and the noisy clipped mean gradient (Opacus' clip, sum, noise, scale).

    An empty batch runs no graph: a zero sum, the noise, a loss of 0 (it adds no record to the mean).
    """
    n = len(idx)
    summed = {k: np.zeros_like(params[k]) for k in trainable}
    loss = 0.0
    chunks = _chunks(idx, graph.spec.batch) if n else []
    coef = np.float32(n / _weight_sum(data, idx) if n else 0.0)  # Opacus' per-sample gradients: n * d(mean)/d(x_i)
    for chunk in chunks:
        feed = _feed(graph, data, chunk, np.full(len(chunk), coef), draws)
        if graph.spec.clipped:  # the graph clips and sums: the per-sample gradients stay inside onnxruntime
            feed["max_grad_norm"] = np.array(dp.max_grad_norm, dtype=np.float32)
            feed["trainable"] = np.fromiter((k in trainable for k in graph.spec.params), dtype=np.float32)
            part_loss, sums = graph.run(params, feed)
            loss += part_loss
            for k in trainable:
                summed[k] += sums[k]
            continue
        part_loss, per = graph.run(params, feed)
        loss += part_loss
        m = len(chunk)
        norms = np.sqrt(sum(np.square(per[k][:m].reshape(m, -1), dtype=np.float32).sum(1) for k in trainable))
        factor = np.minimum(dp.max_grad_norm / (norms + 1e-6), 1.0).astype(np.float32)
        for k in trainable:
            summed[k] += np.tensordot(factor, per[k][:m], axes=1)
    std = dp.noise_multiplier * dp.max_grad_norm
    grads = {k: (summed[k] + draws.normal(summed[k].shape, std)) / np.float32(expected) for k in trainable}
    return (loss / n if n else 0.0), grads


def _clip(grads: Arrays, settings: Settings) -> None:
    """``clip-grad-value`` then ``clip-grad-norm`` over all trainable gradients, as torch.nn.utils does."""
    if settings.clip_grad_value > 0:
        for k in grads:
            grads[k] = np.clip(grads[k], -settings.clip_grad_value, settings.clip_grad_value)
    if settings.clip_grad_norm > 0:
        total = float(np.sqrt(sum(float(np.square(g, dtype=np.float32).sum()) for g in grads.values())))
        factor = min(settings.clip_grad_norm / (total + 1e-6), 1.0)
        for k in grads:
            grads[k] = grads[k] * np.float32(factor)
