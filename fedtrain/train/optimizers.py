"""Local optimizers by name: torch.optim's update rules, run without torch.optim's dispatch.

Gradient descent's three forms are the same ``sgd`` optimizer with a different batch size:
full batch (``batch-size=0``), single sample (``batch-size=1``) and mini-batch (anything else).
The registry serves both ``optimizer`` and ``pretrain-optimizer``.

Why not ``torch.optim`` itself: a deployed ClientApp starts a fresh process for every message (flwr 1.42), and
the first call of a ``torch.optim.Optimizer`` method wrapped by ``torch._disable_dynamo`` (``add_param_group``,
which ``__init__`` calls; ``zero_grad``; ``step``) imports ``torch._dynamo``: 0.6 to 1.1 s of each train message
on 2 cores (``benchmarks/results/client_cold_start.md``), and torch 2.13 has no setting that skips it. The classes
here are ``torch.optim.Optimizer`` subclasses (Opacus' ``DPOptimizer`` and LR schedulers take them) whose
``step`` calls torch's own functional update (``torch.optim.sgd.sgd``, ``adam.adam``, ``adagrad.adagrad``,
``rmsprop.rmsprop``, single-tensor), the code torch.optim's classes run, which imports nothing of dynamo outside
``torch.compile``; ``tests/test_optimizers.py`` checks each one bit for bit against torch.optim, also under Opacus.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import torch
from torch import nn
from torch.optim.adagrad import adagrad
from torch.optim.adam import adam
from torch.optim.rmsprop import rmsprop
from torch.optim.sgd import sgd

from fedtrain.config import TrainConfig
from fedtrain.errors import ConfigError
from fedtrain.registry import Registry

__all__ = ["OPTIMIZERS", "EagerOptimizer", "OptimizerFactory", "build_optimizer"]

OptimizerFactory = Callable[[Iterable[nn.Parameter], float, TrainConfig], torch.optim.Optimizer]
"""``(params, lr, cfg) -> optimizer``; ``cfg`` carries ``momentum`` and ``weight-decay``."""

OPTIMIZERS = Registry[OptimizerFactory]("optimizer")

_HOOKS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps a ``step`` count in (float64 only under a float64 default dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class EagerOptimizer(torch.optim.Optimizer):
    """One of torch.optim's optimizers on real CPU tensors, without the ``torch._dynamo`` import.

    ``Optimizer.__init__`` is not called (its ``add_param_group`` is a wrapped method): this sets what it sets, the
    same ``defaults`` keys as the torch.optim class (so ``state_dict()`` loads into it and back), and overrides
    ``add_param_group``, ``zero_grad`` and ``step``. ``state_dict``/``load_state_dict`` are torch's own (they import
    ``torch._dynamo`` when called; nothing per message calls them). Step hooks are refused, not silently skipped.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        if not 0.0 <= defaults["lr"]:
            raise ValueError(f"Invalid learning rate: {defaults['lr']}")
        if not 0.0 <= defaults.get("momentum", 0.0):
            raise ValueError(f"Invalid momentum value: {defaults['momentum']}")
        if not 0.0 <= defaults["weight_decay"]:
            raise ValueError(f"Invalid weight_decay value: {defaults['weight_decay']}")
        self.defaults = defaults
        for name in _HOOKS:
            setattr(self, name, OrderedDict())
        self.state: defaultdict[torch.Tensor, Any] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        if isinstance(params, torch.Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        for group in groups if isinstance(groups[0], dict) else [{"params": groups}]:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters, with the defaults for the options it does not set (as torch.optim does)."""
        params = param_group["params"]
        if isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, not a set")
        listed = [params] if isinstance(params, torch.Tensor) else list(params)
        group = {**self.defaults, **param_group, "params": listed}
        for p in group["params"]:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {type(p).__name__}")
            if not (p.is_leaf or p.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")
            if p.device.type != "cpu" or p.is_complex():
                raise ValueError(f"fedtrain's optimizers take real CPU tensors, got a {p.dtype} tensor on {p.device}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in group["params"]}) != len(group["params"]) or seen & {id(p) for p in group["params"]}:
            raise ValueError("some parameters appear more than once in the optimizer's parameter groups")
        self.param_groups.append(group)
        self._init_state(group)

    def _init_state(self, group: dict[str, Any]) -> None:
        """State made at construction (Adagrad's); the others make theirs at a parameter's first step."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients: to ``None``, or to zeros detached from any graph (torch.optim's rule)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient (``closure`` re-evaluates the loss, as in torch)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                    self._update(p, p.grad, group)
        return loss

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        """Update ``p`` in place; ``self.state[p]`` is touched only where torch.optim touches it."""
        raise NotImplementedError

    def register_step_pre_hook(self, hook: Any) -> NoReturn:
        raise NotImplementedError(f"{type(self).__name__} does not run step hooks; use torch.optim for them")

    def register_step_post_hook(self, hook: Any) -> NoReturn:
        raise NotImplementedError(f"{type(self).__name__} does not run step hooks; use torch.optim for them")


class SGD(EagerOptimizer):
    """``torch.optim.SGD`` (dampening 0): ``buf = momentum * buf + g`` (first ``buf = g``), Nesterov ``g + m * buf``."""

    def __init__(
        self, params: Iterable[Any], lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False
    ) -> None:
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {"lr": lr, "momentum": momentum, "dampening": 0, "weight_decay": weight_decay, "nesterov": nesterov,
                    "maximize": False, "foreach": None, "differentiable": False, "fused": None}  # fmt: skip
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        momentum = group["momentum"]
        buffers = [self.state[p].get("momentum_buffer") if momentum != 0 else None]  # no state without momentum
        sgd([p], [grad], buffers, foreach=False, weight_decay=group["weight_decay"], momentum=momentum,
            lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"], maximize=False)  # fmt: skip
        if momentum != 0:
            self.state[p]["momentum_buffer"] = buffers[0]


class Adam(EagerOptimizer):
    """``torch.optim.Adam`` (betas 0.9, 0.999, eps 1e-8, no amsgrad); ``decoupled`` is ``torch.optim.AdamW``."""

    def __init__(self, params: Iterable[Any], lr: float, weight_decay: float = 0.0, decoupled: bool = False) -> None:
        defaults = {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": weight_decay, "amsgrad": False,
                    "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": None,
                    "decoupled_weight_decay": decoupled}  # fmt: skip
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        adam([p], [grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]], foreach=False,
             decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=False, beta1=beta1, beta2=beta2,
             lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)  # fmt: skip


class Adagrad(EagerOptimizer):
    """``torch.optim.Adagrad`` (lr decay 0, initial accumulator 0, eps 1e-10); its state is made at construction."""

    def __init__(self, params: Iterable[Any], lr: float, weight_decay: float = 0.0) -> None:
        defaults = {"lr": lr, "lr_decay": 0, "eps": 1e-10, "weight_decay": weight_decay, "initial_accumulator_value": 0,
                    "foreach": None, "maximize": False, "differentiable": False, "fused": None}  # fmt: skip
        super().__init__(params, defaults)

    def _init_state(self, group: dict[str, Any]) -> None:
        for p in group["params"]:
            self.state[p]["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            init = group["initial_accumulator_value"]
            self.state[p]["sum"] = torch.full_like(p, init, memory_format=torch.preserve_format)

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        adagrad([p], [grad], [state["sum"]], [state["step"]], foreach=False, lr=group["lr"], eps=group["eps"],
                weight_decay=group["weight_decay"], lr_decay=group["lr_decay"], maximize=False)  # fmt: skip


class RMSprop(EagerOptimizer):
    """``torch.optim.RMSprop`` (alpha 0.99, eps 1e-8, not centered), with momentum (its buffer starts at zeros)."""

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        defaults = {"lr": lr, "momentum": momentum, "alpha": 0.99, "eps": 1e-8, "centered": False,
                    "weight_decay": weight_decay, "capturable": False, "foreach": None, "maximize": False,
                    "differentiable": False}  # fmt: skip
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        momentum, alpha = group["momentum"], group["alpha"]
        if not state:
            state["step"] = torch.zeros((), dtype=_scalar_dtype())
            state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if momentum > 0:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buffers = [state["momentum_buffer"]] if momentum > 0 else []
        rmsprop([p], [grad], [state["square_avg"]], [], buffers, [state["step"]], foreach=False, lr=group["lr"],
                alpha=alpha, eps=group["eps"], weight_decay=group["weight_decay"], momentum=momentum,
                centered=False)  # fmt: skip


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return SGD(params, lr=lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("momentum")
def _momentum(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("nesterov")
def _nesterov(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.momentum == 0:  # the loader refuses this first; this guards direct callers
        raise ConfigError("optimizer='nesterov' needs momentum > 0; set momentum=0.9")
    return SGD(params, lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adagrad")
def _adagrad(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return Adagrad(params, lr=lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("rmsprop")
def _rmsprop(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return RMSprop(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam")
def _adam(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return Adam(params, lr=lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params: Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return Adam(params, lr=lr, weight_decay=cfg.weight_decay, decoupled=True)


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """Return the optimizer ``cfg.optimizer`` over ``params`` at learning rate ``lr``.

    Raises
    ------
    ConfigError
        For an unknown name (naming the choices) or ``nesterov`` without momentum.
    """
    return OPTIMIZERS.get(cfg.optimizer)(params, lr, cfg)
