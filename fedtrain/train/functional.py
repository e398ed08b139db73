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


def _where(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    if bool(active.all()):  # the usual step: every client of the chunk takes it
        return new
    return torch.where(active.view(-1, *([1] * (new.dim() - 1))), new, old)


@dataclass(frozen=True)
class FunctionalOptimizer:
    """``init(params) -> state`` and ``step(params, grads, state, lr, t, active) -> (params, state)``.

    ``t`` holds each client's own 1-based count of the steps it has taken, this one included: the clients of a
    chunk take different numbers of steps (their record counts differ), and torch.optim's bias corrections count
    each client's own. Under DP-SGD an empty Poisson batch is a step too (noise alone), as in run_local.
    """

    init: Callable[[Params], State]
    step: Callable[[Params, Params, State, float, torch.Tensor, torch.Tensor, TrainConfig], tuple[Params, State]]


def _zeros(*names: str) -> Callable[[Params], State]:
    return lambda params: {n: {k: torch.zeros_like(v) for k, v in params.items()} for n in names}


def _decayed(g: torch.Tensor, p: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    return g + cfg.weight_decay * p if cfg.weight_decay != 0 else g


def _sgd_family(momentum: bool, nesterov: bool) -> FunctionalOptimizer:
    def step(
        params: Params, grads: Params, state: State, lr: float, t: torch.Tensor, active: torch.Tensor, cfg: TrainConfig
    ) -> tuple[Params, State]:
        new_p, new_buf = {}, {}
        for k, p in params.items():
            g = _decayed(grads[k], p, cfg)
            if momentum and cfg.momentum != 0:
                buf = cfg.momentum * state["buf"][k] + g  # from a zero buffer: torch's first step, buf = g
                new_buf[k] = _where(active, buf, state["buf"][k])
                g = g + cfg.momentum * buf if nesterov else buf
            new_p[k] = _where(active, p - lr * g, p)
        return new_p, ({"buf": new_buf} if new_buf else state)

    return FunctionalOptimizer(_zeros("buf") if momentum else lambda params: {}, step)


def _adagrad_step(
    params: Params, grads: Params, state: State, lr: float, t: torch.Tensor, active: torch.Tensor, cfg: TrainConfig
) -> tuple[Params, State]:
    new_p, new_sum = {}, {}
    for k, p in params.items():
        g = _decayed(grads[k], p, cfg)
        total = state["sum"][k] + g * g
        new_sum[k] = _where(active, total, state["sum"][k])
        new_p[k] = _where(active, p - lr * (g / (total.sqrt() + 1e-10)), p)
    return new_p, {"sum": new_sum}


def _rmsprop_step(
    params: Params, grads: Params, state: State, lr: float, t: torch.Tensor, active: torch.Tensor, cfg: TrainConfig
) -> tuple[Params, State]:
    alpha, eps = 0.99, 1e-8
    new_p: Params = {}
    new_state: State = {"sq": {}, "buf": {}}
    for k, p in params.items():
        g = _decayed(grads[k], p, cfg)
        sq = alpha * state["sq"][k] + (1 - alpha) * g * g
        avg = sq.sqrt() + eps
        new_state["sq"][k] = _where(active, sq, state["sq"][k])
        if cfg.momentum > 0:
            buf = cfg.momentum * state["buf"][k] + g / avg
            new_state["buf"][k] = _where(active, buf, state["buf"][k])
            update = buf
        else:
            new_state["buf"][k] = state["buf"][k]
            update = g / avg
        new_p[k] = _where(active, p - lr * update, p)
    return new_p, new_state


def _adam_family(decoupled: bool) -> FunctionalOptimizer:
    b1, b2, eps = 0.9, 0.999, 1e-8

    def step(
        params: Params, grads: Params, state: State, lr: float, t: torch.Tensor, active: torch.Tensor, cfg: TrainConfig
    ) -> tuple[Params, State]:
        new_p: Params = {}
        new_state: State = {"m": {}, "v": {}}
        for k, p in params.items():
            shape = (-1, *([1] * (p.dim() - 1)))  # each client's own step count, over its parameters
            c1, c2 = (1 - b1 ** t.to(p.dtype)).view(shape), (1 - b2 ** t.to(p.dtype)).view(shape)
            g = grads[k]
            if decoupled:
                p_dec = p * (1 - lr * cfg.weight_decay)
            else:
                g, p_dec = _decayed(g, p, cfg), p
            m = state["m"][k] + (g - state["m"][k]) * (1 - b1)  # torch's lerp
            v = b2 * state["v"][k] + (1 - b2) * g * g
            denom = v.sqrt() / (c2**0.5) + eps
            new_state["m"][k], new_state["v"][k] = _where(active, m, state["m"][k]), _where(active, v, state["v"][k])
            new_p[k] = _where(active, p_dec - (lr / c1) * m / denom, p)
        return new_p, new_state

    return FunctionalOptimizer(_zeros("m", "v"), step)


FUNCTIONAL_OPTIMIZERS: dict[str, FunctionalOptimizer] = {
    "sgd": _sgd_family(momentum=False, nesterov=False),
    "momentum": _sgd_family(momentum=True, nesterov=False),
    "nesterov": _sgd_family(momentum=True, nesterov=True),
    "adagrad": FunctionalOptimizer(_zeros("sum"), _adagrad_step),
    "rmsprop": FunctionalOptimizer(_zeros("sq", "buf"), _rmsprop_step),
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
