"""Building blocks shared by the model zoo: activations and initialisation schemes."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["ACTIVATIONS", "INITIALIZERS", "initialize", "make_activation"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module called ``name``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _xavier(w, activation: str) -> None:
    gain = nn.init.calculate_gain("tanh" if activation == "tanh" else "sigmoid" if activation == "sigmoid" else "relu")
    nn.init.xavier_uniform_(w, gain=gain)


def _kaiming(w, activation: str) -> None:
    # Kaiming is derived for (leaky) ReLU; other activations use the ReLU gain as an approximation.
    nn.init.kaiming_uniform_(w, nonlinearity="leaky_relu" if activation == "leaky_relu" else "relu")


def _orthogonal(w, activation: str) -> None:
    nn.init.orthogonal_(
        w, gain=nn.init.calculate_gain("relu") if activation in ("relu", "leaky_relu", "prelu") else 1.0
    )


INITIALIZERS: dict[str, Callable | None] = {
    "default": None,  # torch's own per-layer defaults
    "xavier": _xavier,
    "kaiming": _kaiming,
    "orthogonal": _orthogonal,
}


def initialize(model: nn.Module, scheme: str, activation: str) -> None:
    """Re-initialise every Linear and Conv weight of ``model`` (biases to zero)."""
    if scheme not in INITIALIZERS:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(INITIALIZERS)}")
    init = INITIALIZERS[scheme]
    if init is None:
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init(module.weight, activation)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
