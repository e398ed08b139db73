"""Building blocks shared by the model zoo: activations and initialisation schemes, by name."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedtrain.registry import Registry

__all__ = ["ACTIVATIONS", "INITIALIZERS", "Initializer", "initialize", "make_activation"]

ACTIVATIONS = Registry[Callable[[], nn.Module]]("activation")
ACTIVATIONS.register("relu", nn.ReLU)
ACTIVATIONS.register("leaky_relu", lambda: nn.LeakyReLU(0.01))
ACTIVATIONS.register("prelu", nn.PReLU)
ACTIVATIONS.register("elu", nn.ELU)
ACTIVATIONS.register("gelu", nn.GELU)
ACTIVATIONS.register("tanh", nn.Tanh)
ACTIVATIONS.register("sigmoid", nn.Sigmoid)


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module called ``name`` (ConfigError naming the choices if unknown)."""
    return ACTIVATIONS.get(name)()


# (weight, activation name) -> None, in place; None keeps torch's own per-layer defaults.
Initializer = Callable[[torch.Tensor, str], None]
INITIALIZERS = Registry[Initializer | None]("init")
INITIALIZERS.register("default", None)


@INITIALIZERS.register("xavier")
def _xavier(w: torch.Tensor, activation: str) -> None:
    gain = nn.init.calculate_gain("tanh" if activation == "tanh" else "sigmoid" if activation == "sigmoid" else "relu")
    nn.init.xavier_uniform_(w, gain=gain)


@INITIALIZERS.register("kaiming")
def _kaiming(w: torch.Tensor, activation: str) -> None:
    # Kaiming is derived for (leaky) ReLU; other activations use the ReLU gain as an approximation.
    nn.init.kaiming_uniform_(w, nonlinearity="leaky_relu" if activation == "leaky_relu" else "relu")


@INITIALIZERS.register("orthogonal")
def _orthogonal(w: torch.Tensor, activation: str) -> None:
    nn.init.orthogonal_(
        w, gain=nn.init.calculate_gain("relu") if activation in ("relu", "leaky_relu", "prelu") else 1.0
    )


def initialize(model: nn.Module, scheme: str, activation: str) -> None:
    """Re-initialise every Linear and Conv weight of ``model`` (biases to zero)."""
    init = INITIALIZERS.get(scheme)
    if init is None:
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init(module.weight, activation)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
