"""Sample-level DP-SGD on one client with Opacus 1.6: the privacy engine of the local loop.

:class:`PrivateTraining` plugs into :func:`fedtrain.train.loop.run_local`: a fresh Opacus
``PrivacyEngine`` wraps the model, optimizer and loader for each local training call, with a noise
multiplier calibrated once for the whole run (never per round); the steps it takes are recorded in
the client's :class:`ClientAccountant`. Poisson sampling stays on.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import warnings
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedtrain.config import RunConfig
from fedtrain.data import ArrayDataset
from fedtrain.errors import ModelError
from fedtrain.logging import get_logger
from fedtrain.train.loop import Batch, Objective, Session, Supervised, TrainResult, run_local
from fedtrain.train.losses import build_criterion

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer

# Opacus is imported where it is used (through fedtrain.privacy.opacus_api): a deployed client starts a fresh
# process for every message, and a run without DP should not pay a second for it.

__all__ = [
    "DPPlan",
    "PrivateTraining",
    "check_model",
    "choose_grad_sample_mode",
    "dp_train_local",
    "noise_seed",
    "plan_steps",
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
    from fedtrain.privacy.opacus_api import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return model
    if not fix:
        detail = "; ".join(str(e) for e in errors[:3])
        raise ModelError(
            f"Opacus cannot train this model with DP-SGD: {detail}. Set dp-fix-model=true to let Opacus replace the "
            "layers (BatchNorm -> GroupNorm, LSTM -> DPLSTM), or change the model"
        )
    fixed: nn.Module = ModuleValidator.fix(model)
    replaced = sorted({type(m).__name__ for m in model.modules()} - {type(m).__name__ for m in fixed.modules()})
    log.warning("dp-fix-model: Opacus replaced %s to make the model DP-compatible", ", ".join(replaced) or "layers")
    remaining = ModuleValidator.validate(fixed, strict=False)
    if remaining:
        raise ModelError(f"Opacus could not fix the model: {remaining[0]}")
    return fixed


def noise_seed(cfg: RunConfig, seed: int) -> int:
    """The seed of DP noise: ``seed`` (reproducible per client and round), or fresh entropy (``dp-noise-seed=os``)."""
    return secrets.randbits(63) if cfg.privacy.dp_noise_seed == "os" else seed


@dataclass(frozen=True)
class PrivateTraining:
    """DP-SGD for one local training call: the optional privacy engine of :func:`run_local`.

    Opacus' ``make_private`` with Poisson sampling clips each per-sample gradient at ``max_grad_norm``
    and adds Gaussian noise of std ``noise_multiplier * max_grad_norm``; sampling and noise draw from
    torch's generator seeded with ``noise_seed``. ``grad_sample_mode`` is Opacus' (``hooks``, ``ghost``,
    ``ew``; ``ghost`` needs a :class:`Supervised` objective). ``max_physical_batch_size > 0`` splits
    logical batches with Opacus' ``BatchMemoryManager``.
    """

    noise_multiplier: float
    max_grad_norm: float
    noise_seed: int
    grad_sample_mode: str = "hooks"
    max_physical_batch_size: int = 0
    augment_multiplicity: int = 1  # > 1: fold each record's per-sample gradients before clipping

    @classmethod
    def from_config(
        cls, cfg: RunConfig, *, noise_multiplier: float, seed: int, grad_sample_mode: str
    ) -> PrivateTraining:
        """The engine of ``cfg``'s privacy section for a call seeded with ``seed``."""
        pc = cfg.privacy
        return cls(
            noise_multiplier=noise_multiplier, max_grad_norm=pc.dp_max_grad_norm, noise_seed=noise_seed(cfg, seed),
            grad_sample_mode=grad_sample_mode, max_physical_batch_size=pc.dp_max_physical_batch_size,
            augment_multiplicity=cfg.train.augment_multiplicity if cfg.train.augment != "none" else 1,
        )  # fmt: skip

    @contextlib.contextmanager
    def attach(self, session: Session) -> Iterator[Session]:
        """Wrap ``session`` with Opacus for the duration of the call."""
        criterion = session.objective.criterion if isinstance(session.objective, Supervised) else None
        if self.grad_sample_mode == "ghost" and criterion is None:
            raise ModelError("dp-grad-sample-mode='ghost' needs a supervised loss; use 'hooks' for per-sample losses")
        with torch.random.fork_rng(), warnings.catch_warnings():
            torch.random.default_generator.manual_seed(self.noise_seed)  # noise, the objective's draws (CPU)
            if not isinstance(session.loader, DataLoader):
                raise TypeError("a privacy engine wraps a DataLoader (run_local makes one for private calls)")
            if session.loader.generator is not None:  # Opacus' Poisson sampler draws from the loader's generator
                session.loader.generator.manual_seed(self.noise_seed)  # (the same seed unless dp-noise-seed=os)
            # Known and documented (docs/privacy.md): noise from torch's PRNG, not a CSPRNG; and the
            # first layer's inputs need no gradient, which Opacus' backward hooks warn about.
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
            warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
            from fedtrain.privacy.opacus_api import PrivacyEngine

            engine = PrivacyEngine(accountant="rdp")  # fedtrain's ClientAccountant does the accounting
            kwargs = {"criterion": criterion} if criterion is not None else {}
            wrapped = engine.make_private(
                module=session.module, optimizer=session.optimizer, data_loader=session.loader,
                noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm, poisson_sampling=True,
                grad_sample_mode=self.grad_sample_mode, **kwargs,
            )  # fmt: skip
            objective: Objective = session.objective
            if self.grad_sample_mode == "ghost":  # the criterion comes back wrapped for the two-pass backward
                gsm, dp_opt, loss_fn, dp_loader = wrapped
                objective = Supervised(loss_fn)
            else:
                gsm, dp_opt, dp_loader = wrapped
            if self.augment_multiplicity > 1:
                if self.grad_sample_mode != "hooks":
                    raise ModelError(
                        f"augment-multiplicity={self.augment_multiplicity} under DP-SGD needs per-sample gradients "
                        f"(dp-grad-sample-mode='hooks'), not {self.grad_sample_mode!r}"
                    )
                _fold_before_clipping(dp_opt, self.augment_multiplicity)
            yield _PrivateSession(
                module=gsm, trained=session.trained, optimizer=dp_opt, loader=dp_loader, objective=objective,
                max_physical_batch_size=self.max_physical_batch_size, ghost=self.grad_sample_mode == "ghost",
            )  # fmt: skip


def _fold_before_clipping(optimizer: DPOptimizer, multiplicity: int) -> None:
    """Make ``optimizer`` average each record's augmentations' gradients before it clips (De et al. 2022)."""
    from fedtrain.train.augment import fold_grad_samples

    pre_step = optimizer.pre_step

    def folded_pre_step(closure: Any = None) -> Any:
        fold_grad_samples(optimizer.params, multiplicity)
        return pre_step(closure)

    optimizer.pre_step = folded_pre_step


@dataclass(frozen=True)
class _PrivateSession(Session):
    max_physical_batch_size: int = 0
    ghost: bool = False  # dp-grad-sample-mode='ghost': Opacus' optimizer sums the clipped grad, not grad_sample

    def epoch(self) -> AbstractContextManager[Iterable[Batch]]:
        if self.max_physical_batch_size > 0:
            from fedtrain.privacy.opacus_api import BatchMemoryManager

            manager: AbstractContextManager[Iterable[Batch]] = BatchMemoryManager(
                data_loader=self.loader, max_physical_batch_size=self.max_physical_batch_size, optimizer=self._dp
            )
            return manager
        return contextlib.nullcontext(self.loader)

    def stepped(self) -> bool:
        return not self._dp._is_last_step_skipped  # False after a physical sub-batch of BatchMemoryManager

    def empty_batch(self) -> bool:
        """Ready the step of an empty Poisson batch: noise on a zero sum, over Opacus' expected batch size.

        Opacus steps on the zero-length batches its DPDataLoader yields, and the accountant counts the step:
        skipping it would release a noiseless model on that event, a privacy loss nothing accounts for.

        Without the forward pass Opacus would run on a ``(0, ...)`` batch (its ``ew`` mode and the augmentations
        reject one): no per-sample gradients for ``hooks``/``ew`` (``grad_sample``), a zero gradient for
        ``ghost`` (its optimizer sums ``grad``); the same numbers, and no draw from the call's generators.
        """
        for p in self._dp.params:
            if self.ghost:
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = p.new_zeros((0, *p.shape))
        return True

    @property
    def _dp(self) -> DPOptimizer:
        from fedtrain.privacy.opacus_api import DPOptimizer

        assert isinstance(self.optimizer, DPOptimizer)
        return self.optimizer


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
    """Fine-tune ``model`` with DP-SGD; return the plain trained module, the result and the plan.

    The module returned is ``model``, or Opacus' fixed copy of it with ``dp-fix-model``. Penalties
    (L1, FedProx's proximal term) are decoupled steps after each private step; weight decay stays
    inside the optimizer (:func:`run_local`).
    """
    tc, pc = cfg.train, cfg.privacy
    plan = plan_steps(len(data.y), tc.batch_size, tc.local_epochs)
    mode = choose_grad_sample_mode(pc.dp_grad_sample_mode, cfg.model.model, tc.batch_size)
    if tc.augment != "none" and pc.dp_grad_sample_mode == "auto":
        mode = "hooks"  # augmentation multiplicity folds Opacus' per-sample gradients
    model = check_model(model.train(), fix=pc.dp_fix_model)  # Opacus validates a module in training mode
    objective = Supervised(build_criterion(tc, data.y, data.num_classes))
    privacy = PrivateTraining.from_config(cfg, noise_multiplier=noise_multiplier, seed=seed, grad_sample_mode=mode)
    result = run_local(model, objective, data, tc, lr=lr, seed=seed, proximal_mu=proximal_mu, privacy=privacy)
    return model, result, plan
