"""fedtrain's optimizers in numpy, with torch.optim's update rules (defaults of torch 2.13) exactly.

Each optimizer updates a dict of float32 arrays in place from a dict of gradients; state is per name.
Weight decay is added to the gradient (L2, ``grad + wd * p``) except for AdamW, which decays the weights
(``p *= 1 - lr * wd``), as torch does. ``tests/test_edge_train_optim.py`` checks every one against
``torch.optim`` on the same gradients.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from fedtrain.edge.errors import EdgeModelError

__all__ = ["OPTIMIZERS", "Optimizer", "build_optimizer"]

Arrays = dict[str, np.ndarray]


class Optimizer(ABC):
    """One optimizer over named parameters: ``step(params, grads)`` updates ``params`` in place."""

    def __init__(self, lr: float, *, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.steps = 0

    def step(self, params: Arrays, grads: Mapping[str, np.ndarray]) -> None:
        """One update of every parameter that has a gradient."""
        self.steps += 1
        for name, g in grads.items():
            p = params[name]
            update = self._update(name, p, np.asarray(g, dtype=p.dtype))
            p -= update

    def _decayed(self, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        return g + self.weight_decay * p if self.weight_decay != 0 else g

    @abstractmethod
    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        """What to subtract from ``p``."""


class SGD(Optimizer):
    """torch.optim.SGD: ``buf = momentum * buf + g`` (the first step ``buf = g``), Nesterov ``g + momentum * buf``."""

    nesterov = False

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        g = self._decayed(p, g)
        if self.momentum != 0:
            s = self.state.get(name)
            if s is None:
                buf = g.copy()
                self.state[name] = {"buf": buf}
            else:
                buf = s["buf"]
                buf *= self.momentum
                buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        return self.lr * g


class Nesterov(SGD):
    nesterov = True


class Adagrad(Optimizer):
    """torch.optim.Adagrad (lr_decay 0, initial accumulator 0, eps 1e-10)."""

    eps = 1e-10

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        g = self._decayed(p, g)
        s = self.state.setdefault(name, {"sum": np.zeros_like(p)})
        s["sum"] += g * g
        return self.lr * g / (np.sqrt(s["sum"]) + self.eps)


class RMSprop(Optimizer):
    """torch.optim.RMSprop (alpha 0.99, eps 1e-8, not centered), with momentum."""

    alpha, eps = 0.99, 1e-8

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        g = self._decayed(p, g)
        s = self.state.setdefault(name, {"sq": np.zeros_like(p), "buf": np.zeros_like(p)})
        s["sq"] *= self.alpha
        s["sq"] += (1 - self.alpha) * g * g
        avg = np.sqrt(s["sq"]) + self.eps
        if self.momentum > 0:
            s["buf"] *= self.momentum
            s["buf"] += g / avg
            return self.lr * s["buf"]
        return self.lr * g / avg


class Adam(Optimizer):
    """torch.optim.Adam (betas 0.9, 0.999, eps 1e-8, no amsgrad); AdamW decouples the weight decay."""

    beta1, beta2, eps = 0.9, 0.999, 1e-8
    decoupled = False

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.decoupled:
            p *= 1 - self.lr * self.weight_decay
        else:
            g = self._decayed(p, g)
        s = self.state.setdefault(name, {"m": np.zeros_like(p), "v": np.zeros_like(p), "t": np.zeros(())})
        s["t"] += 1
        t = float(s["t"])
        s["m"] *= self.beta1
        s["m"] += (1 - self.beta1) * g
        s["v"] *= self.beta2
        s["v"] += (1 - self.beta2) * g * g
        bias1, bias2 = 1 - self.beta1**t, 1 - self.beta2**t
        denom = np.sqrt(s["v"]) / math.sqrt(bias2) + self.eps
        return (self.lr / bias1) * s["m"] / denom


class AdamW(Adam):
    decoupled = True


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": SGD,
    "nesterov": Nesterov,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
}


def build_optimizer(name: str, lr: float, *, momentum: float, weight_decay: float) -> Optimizer:
    """The optimizer ``name`` as fedtrain's registry configures it (``sgd`` has no momentum, ``momentum`` has).

    Raises
    ------
    EdgeModelError
        For a name this runtime does not have, or ``nesterov`` without momentum.
    """
    if name not in OPTIMIZERS:
        raise EdgeModelError(f"optimizer={name!r}: the ONNX client has {', '.join(OPTIMIZERS)}; pick one of them")
    if name == "nesterov" and momentum == 0:
        raise EdgeModelError("optimizer='nesterov' needs momentum > 0; set momentum=0.9")
    uses_momentum = name in ("momentum", "nesterov", "rmsprop")
    return OPTIMIZERS[name](lr, momentum=momentum if uses_momentum else 0.0, weight_decay=weight_decay)
