"""Build the configured model by name."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedtrain.config import ModelConfig, parse_int_list
from fedtrain.errors import ModelError
from fedtrain.models.cnn import SmallCNN
from fedtrain.models.layers import initialize
from fedtrain.models.linear import LinearModel
from fedtrain.models.mlp import MLP
from fedtrain.registry import Registry

__all__ = ["MODELS", "ModelBuilder", "build_model"]

ModelBuilder = Callable[[ModelConfig, tuple[int, ...], int], nn.Module]
"""``(model_cfg, input_shape, num_classes) -> module``, before initialisation (``init``)."""

MODELS = Registry[ModelBuilder]("model")


@MODELS.register("mlp")
def _mlp(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(
        input_shape,
        num_classes,
        parse_int_list("hidden-sizes", cfg.hidden_sizes),
        activation=cfg.activation,
        dropout=cfg.dropout,
        residual=cfg.residual,
    )


@MODELS.register("cnn")
def _cnn(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ModelError(
            f"model='cnn' needs image inputs of shape (channels, height, width); the data has shape "
            f"{input_shape}: use model='mlp' for tabular data"
        )
    return SmallCNN(
        input_shape,
        num_classes,
        parse_int_list("cnn-channels", cfg.cnn_channels),
        groups=cfg.cnn_groups,
        activation=cfg.activation,
        dropout=cfg.dropout,
    )


@MODELS.register("linear")
def _linear(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    # Multinomial logistic regression; hidden-sizes and activation do not apply.
    return LinearModel(input_shape, num_classes)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, *, seed: int = 0) -> nn.Module:
    """Return a freshly initialised model; the same seed gives the same weights.

    Raises
    ------
    ConfigError
        For an unknown model name (naming the choices).
    ModelError
        When the model cannot take this data (e.g. ``cnn`` on tabular inputs).
    """
    builder = MODELS.get(cfg.model)
    with torch.random.fork_rng():
        # The CPU generator only: torch.manual_seed also formats a stack trace per lazy accelerator backend
        # (milliseconds per client and message); models are built on the CPU.
        torch.random.default_generator.manual_seed(seed)
        model = builder(cfg, input_shape, num_classes)
        initialize(model, cfg.init, cfg.activation)
    return model
