"""Local training of many clients at once: stacked parameters, ``functional_call`` + ``vmap``.

:func:`train_clients` does for K clients what :func:`fedtrain.train.loop.run_local` does for one,
step for step: the same batches (each client's loader is rebuilt from its seed, so shuffles and, under
DP-SGD, Opacus' Poisson masks are the ones the sequential path draws), the same optimizer formulas
(:mod:`fedtrain.train.functional`), penalties, clipping, and under DP-SGD per-sample gradients
(``vmap(grad)`` nested in the per-client ``vmap``), per-sample clipping and Gaussian noise drawn from
each client's own noise seed in Opacus' order. Clients are independent, so they are trained in chunks
whose stacked tensors fit in memory (:func:`chunk_size`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedtrain.config import TrainConfig
from fedtrain.train.functional import FUNCTIONAL_OPTIMIZERS, clip_grads, per_sample_loss
from fedtrain.train.loop import ShuffledIndices
from fedtrain.train.stacked_dense import StepFn, dense_layout, ghost_private_step

__all__ = ["MAX_CHUNK", "ClientJob", "ClientResult", "DPSettings", "chunk_size", "train_clients"]

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ClientJob:
    """One client's local call: its records, seeds and class weights (``(C,)``, ones without class weights)."""

    x: np.ndarray
    y: np.ndarray
    seed: int  # the loader's seed (batch order without DP)
    class_weight: torch.Tensor
    noise_seed: int = 0  # DP-SGD: the seed of the Poisson masks and the noise
    noise_multiplier: float = 0.0


@dataclass(frozen=True)
class DPSettings:
    max_grad_norm: float


@dataclass
class ClientResult:
    state: dict[str, torch.Tensor]  # the trained model's state dict, in the model's key order
    loss: float  # mean objective over the records seen (penalties excluded), as run_local reports
    num_examples: int


@dataclass
class _Steps:
    """Every client's batches, padded: ``index[s, k, b]`` into client k's records, ``mask`` marks real ones."""

    index: torch.Tensor  # (S, K, B) long
    mask: torch.Tensor  # (S, K, B) bool
    active: torch.Tensor  # (S, K) bool: client k takes step s (s < its own number of steps)
    noise: list[list[Params]]  # DP-SGD: [k][s] the step's noise per trainable parameter, else empty


def _pad_steps(batches: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    steps = max((len(b) for b in batches), default=0)
    width = max((len(i) for b in batches for i in b), default=1) or 1
    index = torch.zeros(steps, len(batches), width, dtype=torch.long)
    mask = torch.zeros(steps, len(batches), width, dtype=torch.bool)
    active = torch.zeros(steps, len(batches), dtype=torch.bool)
    for k, client in enumerate(batches):
        for s, idx in enumerate(client):
            index[s, k, : len(idx)] = idx
            mask[s, k, : len(idx)] = True
            active[s, k] = True  # an empty Poisson batch too: its step is noise alone (run_local's rule)
    return index, mask, active


def _plain_batches(job: ClientJob, cfg: TrainConfig) -> list[torch.Tensor]:
    """The batches run_local's shuffling loader yields for this seed.

    The draws are :class:`~fedtrain.train.loop.ShuffledIndices`' (``tests/test_vectorised.py`` checks them
    against a real DataLoader).
    """
    order = ShuffledIndices(len(job.y), cfg.batch_size, job.seed)
    return [idx for _ in range(cfg.local_epochs) for idx in order]


def _poisson_batches(
    job: ClientJob, cfg: TrainConfig, shapes: dict[str, torch.Size], dp: DPSettings
) -> tuple[list[torch.Tensor], list[Params]]:
    """Opacus' draws: masks from the loader's generator (a base seed per epoch first), noise on every step.

    An empty batch draws its noise too: the accountant counts its step, so it releases noise on a zero sum.

    Both generators start from the noise seed: the private session reseeds the loader's generator with it, so
    under ``dp-noise-seed=os`` no mask follows from the public run seed (fedtrain.privacy.dp_sgd).
    """
    n = len(job.y)
    size = n if cfg.batch_size == 0 else min(cfg.batch_size, n)
    q = 1 / math.ceil(n / size)  # 1 / len(loader), as make_private sets it
    steps = int(1 / q)
    loader_gen = torch.Generator().manual_seed(job.noise_seed)
    noise_gen = torch.Generator().manual_seed(job.noise_seed)
    std = job.noise_multiplier * dp.max_grad_norm
    batches: list[torch.Tensor] = []
    noise: list[Params] = []
    for _ in range(cfg.local_epochs):
        torch.empty((), dtype=torch.int64).random_(generator=loader_gen)  # the DataLoader iterator's base seed
        for _ in range(steps):
            idx = (torch.rand(n, generator=loader_gen) < q).nonzero().reshape(-1)
            batches.append(idx)
            if std == 0:
                noise.append({k: torch.zeros(s) for k, s in shapes.items()})
            else:
                noise.append({k: torch.normal(0, std, size=s, generator=noise_gen) for k, s in shapes.items()})
    return batches, noise


MAX_CHUNK = 64
"""Clients per chunk at most: wider stacks leave the CPU caches (measured on 2 cores, MLP 64-128-64-10, 1000
clients of one record: one round in 0.23-0.24 s at 64-128 clients per chunk, 0.30 s at 1000, 0.42 s at 256);
64 rather than 128 keeps a 1000-client DP-SGD run's peak RSS under 0.6 GB."""


def chunk_size(per_client_bytes: int, budget_bytes: int | None = None) -> int:
    """Clients per chunk: a quarter of the available memory (at most 1 GiB) over one client's stacked tensors."""
    if budget_bytes is None:
        budget_bytes = min(_available_bytes() // 4, 1 << 30)
    return max(1, min(MAX_CHUNK, budget_bytes // max(per_client_bytes, 1)))


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def train_clients(
    module: nn.Module,
    start: dict[str, torch.Tensor],
    jobs: Sequence[ClientJob],
    cfg: TrainConfig,
    *,
    lr: float,
    proximal_mu: float = 0.0,
    frozen: frozenset[str] = frozenset(),
    dp: DPSettings | None = None,
    budget_bytes: int | None = None,
) -> list[ClientResult]:
    """Train every job from the weights ``start`` (a state dict of ``module``); one result per job, in order.

    ``frozen`` names parameters that stay as they are (``freeze-depth``). ``module`` must hold no buffers
    and draw no randomness in its forward (the exchange's allow-list sees to both).
    """
    names = [n for n, _ in module.named_parameters()]
    trainable = [n for n in names if n not in frozen]
    numel = sum(start[n].numel() for n in trainable)
    widest = max(len(j.y) for j in jobs) if jobs else 1
    sample_width = widest if dp is not None or cfg.batch_size == 0 else min(cfg.batch_size, widest)
    # Per client: parameters, gradients and optimizer state (~6 copies), its records, and under DP-SGD one
    # gradient per sample of a batch.
    features = int(np.prod(jobs[0].x.shape[1:])) if jobs else 1
    per_client = 4 * (6 * numel + widest * features + (sample_width * numel if dp is not None else 0))
    size = chunk_size(per_client, budget_bytes)
    results: list[ClientResult] = []
    for lo in range(0, len(jobs), size):
        results += _train_chunk(module, start, jobs[lo : lo + size], cfg, lr, proximal_mu, trainable, dp)
    return results


def _train_chunk(
    module: nn.Module,
    start: dict[str, torch.Tensor],
    jobs: Sequence[ClientJob],
    cfg: TrainConfig,
    lr: float,
    mu: float,
    trainable: list[str],
    dp: DPSettings | None,
) -> list[ClientResult]:
    k = len(jobs)
    fixed = {n: start[n] for n, _ in module.named_parameters() if n not in trainable}
    shapes = {n: start[n].shape for n in trainable}
    if dp is None:
        index, mask, active = _pad_steps([_plain_batches(j, cfg) for j in jobs])
        noise: list[list[Params]] = []
    else:
        drawn = [_poisson_batches(j, cfg, shapes, dp) for j in jobs]
        index, mask, active = _pad_steps([b for b, _ in drawn])
        noise = [nz for _, nz in drawn]
    widest = max(len(j.y) for j in jobs)
    xs = torch.zeros(k, widest, *jobs[0].x.shape[1:])
    ys = torch.zeros(k, widest, dtype=torch.long)
    for i, j in enumerate(jobs):
        xs[i, : len(j.y)] = torch.from_numpy(j.x)
        ys[i, : len(j.y)] = torch.from_numpy(j.y)
    weights = torch.stack([j.class_weight for j in jobs])
    params = {n: start[n].unsqueeze(0).repeat(k, *([1] * start[n].dim())) for n in trainable}
    anchor = {n: start[n] for n in trainable}
    opt = FUNCTIONAL_OPTIMIZERS[cfg.optimizer]
    state = opt.init(params)
    totals = torch.zeros(k, dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.float64)
    step_grads = _plain_step(module, fixed, anchor, cfg, mu) if dp is None else _private_step(module, fixed, cfg, dp)
    rows = torch.arange(k).unsqueeze(1)
    ebs = torch.tensor([_expected_batch(len(j.y), cfg) for j in jobs], dtype=torch.float32)
    taken = torch.zeros(k, dtype=torch.long)  # steps each client has taken (clients of a chunk take different counts)
    for s in range(index.shape[0]):
        taken = taken + active[s].to(torch.long)
        x, y, m = xs[rows, index[s]], ys[rows, index[s]], mask[s].to(xs.dtype)
        grads, loss = step_grads(params, x, y, m, weights)
        if dp is not None:
            grads = _noised(grads, noise, s, ebs)
        elif cfg.clip_grad_value > 0 or cfg.clip_grad_norm > 0:
            grads = clip_grads(grads, cfg)
        params, state = opt.step(params, grads, state, lr, taken.clamp(min=1), active[s], cfg)
        if dp is not None and (mu > 0 or cfg.l1 > 0):  # decoupled penalty steps after each private step
            params = _penalty_step(params, anchor, active[s], lr, mu, cfg.l1)
        n = m.sum(1).to(torch.float64)
        on = active[s]
        totals += torch.where(on, loss.detach().to(torch.float64) * n, torch.zeros_like(n))
        counts += torch.where(on, n, torch.zeros_like(n))
    order = [n for n in start if n in dict(module.named_parameters())]
    return [
        ClientResult(
            state={n: (params[n][i].detach() if n in params else fixed[n]) for n in order},  # views: no copy
            loss=float(totals[i] / max(float(counts[i]), 1.0)),
            num_examples=len(j.y),
        )
        for i, j in enumerate(jobs)
    ]


def _expected_batch(n: int, cfg: TrainConfig) -> int:
    size = n if cfg.batch_size == 0 else min(cfg.batch_size, n)
    return int(n * (1 / math.ceil(n / size)))  # Opacus: int(len(dataset) * sample_rate)


def _plain_step(module: nn.Module, fixed: Params, anchor: Params, cfg: TrainConfig, mu: float) -> StepFn:
    """Per-client gradients of the batch loss plus penalties."""

    def client_loss(
        p: Params, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_call(module, {**p, **fixed}, (x,))
        v, d = per_sample_loss(logits, y, w, cfg)
        loss = (v * m).sum() / (d * m).sum().clamp_min(1e-12)
        total = loss
        if cfg.l1 > 0:
            total = total + cfg.l1 * sum(t.abs().sum() for n, t in p.items() if n.endswith("weight") and t.dim() > 1)
        if mu > 0:
            total = total + mu * (0.5 * sum(((t - anchor[n]) ** 2).sum() for n, t in p.items()))
        return total, loss

    # A batched forward under vmap, differentiated by plain autograd: the clients' losses are independent, so
    # the gradient of their sum is every client's own. Same numbers as vmap(grad(...)), measured 14x faster per
    # step at 10 clients and 1.2x at 100 (functorch's grad transform costs ~50 ms a step on this CPU).
    forward = vmap(client_loss)

    def step(
        p: Params, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, w: torch.Tensor
    ) -> tuple[Params, torch.Tensor]:
        leaves = {n: t.detach().requires_grad_(True) for n, t in p.items()}
        total, loss = forward(leaves, x, y, m, w)
        grads = torch.autograd.grad(total.sum(), list(leaves.values()))
        return dict(zip(leaves, grads, strict=True)), loss.detach()

    return step


def _private_step(module: nn.Module, fixed: Params, cfg: TrainConfig, dp: DPSettings) -> StepFn:
    """Per-client sums of clipped per-sample gradients (Opacus' clip_and_accumulate), and the batch loss.

    Models of linear layers only take ghost clipping (:mod:`fedtrain.train.stacked_dense`): the same sums
    without the per-sample gradients, 4x faster a round at 100 clients of the DP benchmark's MLP.
    """
    layout = dense_layout(module)
    if layout is not None:
        return ghost_private_step(layout, fixed, cfg, dp.max_grad_norm)
    return _per_sample_private_step(module, fixed, cfg, dp)


def _per_sample_private_step(module: nn.Module, fixed: Params, cfg: TrainConfig, dp: DPSettings) -> StepFn:
    """:func:`_private_step` by ``vmap(grad)``: every sample's gradient, then its norm and the clipped sum."""

    def sample_loss(p: Params, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logits = functional_call(module, {**p, **fixed}, (x.unsqueeze(0),))
        v, _ = per_sample_loss(logits, y.unsqueeze(0), w, cfg)
        return v.sum()

    per_sample = vmap(vmap(grad(sample_loss), in_dims=(None, 0, 0, None)), in_dims=(0, 0, 0, 0))

    def client_batch_loss(
        p: Params, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v, d = per_sample_loss(functional_call(module, {**p, **fixed}, (x,)), y, w, cfg)
        return (v * m).sum(), (d * m).sum()

    batch_loss = vmap(client_batch_loss)

    def step(
        p: Params, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, w: torch.Tensor
    ) -> tuple[Params, torch.Tensor]:
        num, den = batch_loss(p, x, y, m, w)
        den = den.clamp_min(1e-12)
        g = per_sample(p, x, y, w)  # (K, B, ...): the gradient of each sample's own loss term
        # Opacus' hooks see the mean loss's backprops times the batch size: n / sum(d) times each term's gradient.
        # The scale (>= 0) is folded into the norms and the clip factor: one pass over the per-sample gradients.
        scale = m * (m.sum(1) / den).unsqueeze(1)
        norms = scale * torch.stack([t.flatten(2).norm(2, dim=-1) for t in g.values()], dim=2).norm(2, dim=2)
        factor = (dp.max_grad_norm / (norms + 1e-6)).clamp(max=1.0) * scale
        summed = {n: torch.einsum("kb,kb...->k...", factor, t) for n, t in g.items()}
        return summed, num / den

    return step


def _noised(summed: Params, noise: list[list[Params]], s: int, ebs: torch.Tensor) -> Params:
    out = {}
    for n, t in summed.items():
        draws = [_draw(nz, s, n, t.shape[1:]) for nz in noise]
        scale = ebs.view(-1, *([1] * (t.dim() - 1)))
        out[n] = (t + torch.stack(draws)) / scale
    return out


def _draw(noise: list[Params], s: int, name: str, shape: torch.Size) -> torch.Tensor:
    return noise[s][name] if s < len(noise) else torch.zeros(shape)  # past a client's last step: it is inactive


def _penalty_step(params: Params, anchor: Params, active: torch.Tensor, lr: float, mu: float, l1: float) -> Params:
    """fedtrain.train.loop.Penalties.step for every active client."""
    out = {}
    for n, p in params.items():
        new = p
        if mu > 0:
            new = new - lr * mu * (new - anchor[n])
        if l1 > 0 and n.endswith("weight") and p.dim() > 2:  # a weight matrix of each client
            new = new - lr * l1 * torch.sign(new)
        out[n] = torch.where(active.view(-1, *([1] * (p.dim() - 1))), new, p)
    return out
