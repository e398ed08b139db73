"""Sample-level DP-SGD on one client with Opacus 1.6.

A fresh ``PrivacyEngine`` wraps the model for each local training call, with a noise
multiplier calibrated once for the whole run (never per round); the steps it takes are
recorded in the client's :class:`ClientAccountant`. Poisson sampling stays on.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from fedtrain.config import RunConfig
from fedtrain.data import ArrayDataset
from fedtrain.errors import ModelError
from fedtrain.logging import get_logger
from fedtrain.train.loop import TrainResult, make_loader
from fedtrain.train.losses import build_criterion
from fedtrain.train.optimizers import build_optimizer

__all__ = [
    "DPPlan",
    "check_model",
    "choose_grad_sample_mode",
    "dp_train_local",
    "noise_seed",
    "plan_steps",
    "run_private",
]

log = get_logger()


@dataclass(frozen=True)
class DPPlan:
    """One client's DP-SGD parameters for a local training call."""

    sample_rate: float  # q = 1 / batches per epoch, as Opacus sets it
    steps_per_call: int  # logical steps of one local training call


def plan_steps(num_examples: int, batch_size: int, local_epochs: int) -> DPPlan:
    """Sampling rate and logical steps of one local training call on ``num_examples`` records."""
    size = num_examples if batch_size == 0 else min(batch_size, num_examples)
    batches = math.ceil(num_examples / size)
    return DPPlan(sample_rate=1.0 / batches, steps_per_call=local_epochs * batches)


def choose_grad_sample_mode(requested: str, model: str, batch_size: int) -> str:
    """``auto``: ghost clipping for MLPs at large batches (2-4x faster on CPU), hooks otherwise."""
    if requested != "auto":
        return requested
    return "ghost" if model == "mlp" and (batch_size == 0 or batch_size >= 128) else "hooks"


def check_model(model: nn.Module, *, fix: bool) -> nn.Module:
    """Return ``model`` if Opacus supports it, a fixed copy if ``fix``, else raise naming the layers."""
    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return model
    if not fix:
        detail = "; ".join(str(e) for e in errors[:3])
        raise ModelError(
            f"Opacus cannot train this model with DP-SGD: {detail}. Set dp-fix-model=true to let Opacus replace the "
            "layers (BatchNorm -> GroupNorm, LSTM -> DPLSTM), or change the model"
        )
    fixed = ModuleValidator.fix(model)
    replaced = sorted({type(m).__name__ for m in model.modules()} - {type(m).__name__ for m in fixed.modules()})
    log.warning("dp-fix-model: Opacus replaced %s to make the model DP-compatible", ", ".join(replaced) or "layers")
    remaining = ModuleValidator.validate(fixed, strict=False)
    if remaining:
        raise ModelError(f"Opacus could not fix the model: {remaining[0]}")
    return fixed


def dp_train_local(
    model: nn.Module,
    data: ArrayDataset,
    cfg: RunConfig,
    *,
    lr: float,
    seed: int,
    noise_multiplier: float,
    proximal_mu: float = 0.0,
) -> tuple[nn.Module, TrainResult, DPPlan]:
    """Train ``model`` with DP-SGD; return the plain trained module, the result and the plan.

    Penalties that do not depend on data (FedProx's proximal term, L1) are applied as decoupled steps
    after each private step: Opacus only privatises per-sample gradients, and these terms would
    otherwise be dropped silently. Weight decay stays inside the optimizer.
    """
    tc, pc = cfg.train, cfg.privacy
    plan = plan_steps(len(data.y), tc.batch_size, tc.local_epochs)
    mode = choose_grad_sample_mode(pc.dp_grad_sample_mode, cfg.model.model, tc.batch_size)
    model = check_model(model.train(), fix=pc.dp_fix_model)  # Opacus validates a module in training mode
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    criterion = build_criterion(tc, data.y, data.num_classes)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], tc, lr)
    plain, loss = run_private(
        model, optimizer, make_loader(data, tc.batch_size, shuffle=True, seed=seed), cfg,
        epochs=tc.local_epochs, noise_multiplier=noise_multiplier, seed=seed, mode=mode, criterion=criterion,
        after_step=lambda m: _decoupled_penalties(m, lr, tc.l1, proximal_mu, global_params),
    )  # fmt: skip
    return plain, TrainResult(loss=loss, num_examples=len(data.y), steps=plan.steps_per_call), plan


def noise_seed(cfg: RunConfig, seed: int) -> int:
    """The seed of DP noise: ``seed`` (reproducible per client and round), or fresh entropy (``dp-noise-seed=os``)."""
    return secrets.randbits(63) if cfg.privacy.dp_noise_seed == "os" else seed


def run_private(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    cfg: RunConfig,
    *,
    epochs: int,
    noise_multiplier: float,
    seed: int,
    mode: str = "hooks",
    criterion: nn.Module | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, float]:
    """The DP-SGD loop shared by fine-tuning and pretraining; returns the plain module and mean loss.

    With a ``criterion`` the loss is ``criterion(module(x), y)``; without one, ``module(x)`` must
    return per-sample losses of shape ``(B,)`` (pretraining objectives), averaged here.
    """
    pc = cfg.privacy
    module.train()
    with torch.random.fork_rng(), warnings.catch_warnings():
        torch.manual_seed(noise_seed(cfg, seed))  # Poisson sampling and noise
        # Known and documented (docs/privacy.md): noise from torch's PRNG, not a CSPRNG; and the
        # first layer's inputs need no gradient, which Opacus' backward hooks warn about.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
        engine = PrivacyEngine(accountant="rdp")  # fedtrain's ClientAccountant does the accounting
        kwargs = {"criterion": criterion} if criterion is not None else {}
        wrapped = engine.make_private(
            module=module, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
            max_grad_norm=pc.dp_max_grad_norm, poisson_sampling=True, grad_sample_mode=mode, **kwargs,
        )  # fmt: skip
        if mode == "ghost":
            gsm, dp_opt, loss_fn, dp_loader = wrapped
        else:
            (gsm, dp_opt, dp_loader), loss_fn = wrapped, criterion
        total, count = 0.0, 0
        for _epoch in range(epochs):
            if pc.dp_max_physical_batch_size > 0:
                ctx = BatchMemoryManager(
                    data_loader=dp_loader, max_physical_batch_size=pc.dp_max_physical_batch_size, optimizer=dp_opt
                )
            else:
                ctx = contextlib.nullcontext(dp_loader)
            with ctx as batches:
                for x, y in batches:
                    if len(y) == 0:  # an empty Poisson batch; still counted as a step (conservative)
                        continue
                    dp_opt.zero_grad(set_to_none=True)
                    loss = loss_fn(gsm(x), y) if loss_fn is not None else gsm(x).mean()
                    loss.backward()
                    dp_opt.step()
                    if after_step and not dp_opt._is_last_step_skipped:  # a logical step (BatchMemoryManager)
                        after_step(gsm._module)
                    total += float(loss.detach()) * len(y)
                    count += len(y)
    return gsm._module, total / max(count, 1)  # weights leave without the `_module.` prefix


@torch.no_grad()
def _decoupled_penalties(
    model: nn.Module, lr: float, l1: float, mu: float, global_params: list[torch.Tensor] | None
) -> None:
    for i, (name, p) in enumerate(model.named_parameters()):
        if not p.requires_grad:
            continue
        if global_params is not None:
            p.sub_(lr * mu * (p - global_params[i]))
        if l1 > 0 and name.endswith("weight") and p.dim() > 1:
            p.sub_(lr * l1 * torch.sign(p))
