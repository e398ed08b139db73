"""The toolkit's optimizers, losses and clipping in functional, stacked form (one leading client axis).

The vectorised round exchange trains K clients at once: every parameter is a ``(K, ...)`` tensor and
every update is torch.optim's own formula written out (default hyper-parameters included), so that a
client trained here ends where :func:`fedtrain.train.loop.run_local` would have taken it, up to float
rounding. ``active`` (``(K,)`` bool) freezes the clients that have no step left this round: they
keep their parameters and optimizer state as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from fedtrain.config import TrainConfig

__all__ = ["FUNCTIONAL_OPTIMIZERS", "FunctionalOptimizer", "clip_grads", "per_sample_loss"]

Params = dict[str, torch.Tensor]
State = dict[str, Params]


@dataclass(frozen=True)
class FunctionalOptimizer:
    """``init(params) -> state`` and ``step(params, grads, state, lr, t, active, cfg) -> (params, state)``.

    ``t`` holds each client's own 1-based count of the steps it has taken, this one included: the clients of a
    chunk take different numbers of steps (their record counts differ), and torch.optim's bias corrections count
    each client's own. Under DP-SGD an empty Poisson batch is a step too (noise alone), as in run_local.

    ``step`` updates ``params`` and ``state`` in place, as torch.optim does (a stacked parameter is megabytes,
    and a fresh tensor per operation cost 6x the update itself, measured at 64 clients of a 17k-parameter MLP);
    the caller owns both. The gradients are only read.
    """

    init: Callable[[Params], State]
    step: Callable[[Params, Params, State, float, torch.Tensor, torch.Tensor, TrainConfig], tuple[Params, State]]


InPlaceStep = Callable[[Params, Params, State, float, torch.Tensor, TrainConfig], None]


def _masked(update: InPlaceStep) -> Callable[..., tuple[Params, State]]:
    """``update`` for every client; where some clients take no step, they keep their parameters and state."""

    def step(
        params: Params, grads: Params, state: State, lr: float, t: torch.Tensor, active: torch.Tensor, cfg: TrainConfig
    ) -> tuple[Params, State]:
        keep = active.logical_not()
        tensors = [params, *state.values()]
        if not bool(keep.any()):  # the usual step: every client of the chunk takes it
            update(params, grads, state, lr, t, cfg)
            return params, state
        kept = [{k: v[keep] for k, v in group.items()} for group in tensors]
        update(params, grads, state, lr, t, cfg)
        for group, rows in zip(tensors, kept, strict=True):
            for k, v in rows.items():
                group[k][keep] = v
        return params, state

    return step


def _zeros(*names: str) -> Callable[[Params], State]:
    return lambda params: {n: {k: torch.zeros_like(v) for k, v in params.items()} for n in names}


def _decayed(g: torch.Tensor, p: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    return g.add(p, alpha=cfg.weight_decay) if cfg.weight_decay != 0 else g


def _sgd_family(momentum: bool, nesterov: bool) -> FunctionalOptimizer:
    def update(params: Params, grads: Params, state: State, lr: float, t: torch.Tensor, cfg: TrainConfig) -> None:
        for k, p in params.items():
            g = _decayed(grads[k], p, cfg)
            if momentum and cfg.momentum != 0:
                buf = state["buf"][k].mul_(cfg.momentum).add_(g)  # from a zero buffer: torch's first step, buf = g
                g = g.add(buf, alpha=cfg.momentum) if nesterov else buf
            p.add_(g, alpha=-lr)

    return FunctionalOptimizer(_zeros("buf") if momentum else lambda params: {}, _masked(update))


def _adagrad(params: Params, grads: Params, state: State, lr: float, t: torch.Tensor, cfg: TrainConfig) -> None:
    for k, p in params.items():
        g = _decayed(grads[k], p, cfg)
        total = state["sum"][k].addcmul_(g, g)
        p.addcdiv_(g, total.sqrt().add_(1e-10), value=-lr)


def _rmsprop(params: Params, grads: Params, state: State, lr: float, t: torch.Tensor, cfg: TrainConfig) -> None:
    alpha, eps = 0.99, 1e-8
    for k, p in params.items():
        g = _decayed(grads[k], p, cfg)
        sq = state["sq"][k].mul_(alpha).addcmul_(g, g, value=1 - alpha)
        avg = sq.sqrt().add_(eps)
        if cfg.momentum > 0:
            p.add_(state["buf"][k].mul_(cfg.momentum).addcdiv_(g, avg), alpha=-lr)
        else:
            p.addcdiv_(g, avg, value=-lr)


def _adam_family(decoupled: bool) -> FunctionalOptimizer:
    b1, b2, eps = 0.9, 0.999, 1e-8

    def update(params: Params, grads: Params, state: State, lr: float, t: torch.Tensor, cfg: TrainConfig) -> None:
        for k, p in params.items():
            shape = (-1, *([1] * (p.dim() - 1)))  # each client's own step count, over its parameters
            c1, c2 = (1 - b1 ** t.to(p.dtype)).view(shape), (1 - b2 ** t.to(p.dtype)).view(shape)
            g = grads[k]
            if decoupled:
                p.mul_(1 - lr * cfg.weight_decay)
            else:
                g = _decayed(g, p, cfg)
            m = state["m"][k].lerp_(g, 1 - b1)
            v = state["v"][k].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = v.sqrt().div_(c2.sqrt()).add_(eps)
            p.sub_(((lr / c1) * m).div_(denom))

    return FunctionalOptimizer(_zeros("m", "v"), _masked(update))


FUNCTIONAL_OPTIMIZERS: dict[str, FunctionalOptimizer] = {
    "sgd": _sgd_family(momentum=False, nesterov=False),
    "momentum": _sgd_family(momentum=True, nesterov=False),
    "nesterov": _sgd_family(momentum=True, nesterov=True),
    "adagrad": FunctionalOptimizer(_zeros("sum"), _masked(_adagrad)),
    "rmsprop": FunctionalOptimizer(_zeros("sq", "buf"), _masked(_rmsprop)),
    "adam": _adam_family(decoupled=False),
    "adamw": _adam_family(decoupled=True),
}
"""Every entry of :data:`fedtrain.train.optimizers.OPTIMIZERS`, in stacked functional form."""


def per_sample_loss(
    logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, cfg: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v, d)`` per sample: the batch's mean loss is ``sum(v) / sum(d)``, as the registered criterion reduces.

    ``d`` is the sample's class weight (1 without class weights), the denominator torch's weighted mean uses.
    """
    k = logits.shape[-1]
    logp = F.log_softmax(logits, dim=-1)
    ls = cfg.label_smoothing
    w_y = weight[y] if weight is not None else torch.ones_like(logits[..., 0])
    if cfg.loss == "cross-entropy":
        nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        v = (1 - ls) * w_y * nll
        if ls > 0:
            v = v - (ls / k) * ((logp * weight) if weight is not None else logp).sum(-1)
        return v, w_y
    if cfg.loss == "gce":  # fedtrain.train.losses.GeneralizedCrossEntropy, term by term
        per_class = (1.0 - torch.exp(cfg.gce_q * logp)) / cfg.gce_q
        soft = (torch.arange(k) == y.unsqueeze(-1)).to(logits.dtype)  # one_hot, which vmap cannot batch
        if ls > 0:
            soft = soft * (1.0 - ls) + ls / k
        return (soft * per_class).sum(-1) * w_y, w_y
    raise ValueError(f"no functional form of loss {cfg.loss!r}")  # the exchange's allow-list keeps this out


def clip_grads(grads: Params, cfg: TrainConfig) -> Params:
    """``clip-grad-value`` then ``clip-grad-norm`` per client, as torch.nn.utils does (norm over all parameters)."""
    if cfg.clip_grad_value > 0:
        grads = {k: g.clamp(-cfg.clip_grad_value, cfg.clip_grad_value) for k, g in grads.items()}
    if cfg.clip_grad_norm > 0:
        norms = torch.stack([g.flatten(1).norm(2, dim=1) for g in grads.values()], dim=1).norm(2, dim=1)
        coef = (cfg.clip_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        grads = {k: g * coef.view(-1, *([1] * (g.dim() - 1))) for k, g in grads.items()}
    return grads
