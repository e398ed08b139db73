"""Build the configured model by name."""

from __future__ import annotations

import torch
from torch import nn

from fedtrain.config import ModelConfig, parse_int_list
from fedtrain.errors import ModelError
from fedtrain.models.cnn import SmallCNN
from fedtrain.models.layers import initialize
from fedtrain.models.mlp import MLP

__all__ = ["MODELS", "build_model"]

MODELS = ("mlp", "cnn")


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, *, seed: int = 0) -> nn.Module:
    """Return a freshly initialised model; the same seed gives the same weights."""
    if cfg.model not in MODELS:
        raise ModelError(f"unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if cfg.model == "mlp":
            model: nn.Module = MLP(
                input_shape,
                num_classes,
                parse_int_list("hidden-sizes", cfg.hidden_sizes),
                activation=cfg.activation,
                dropout=cfg.dropout,
                residual=cfg.residual,
            )
        else:
            if len(input_shape) != 3:
                raise ModelError(
                    f"model='cnn' needs image inputs of shape (channels, height, width); the data has shape "
                    f"{input_shape}: use model='mlp' for tabular data"
                )
            model = SmallCNN(
                input_shape,
                num_classes,
                parse_int_list("cnn-channels", cfg.cnn_channels),
                groups=cfg.cnn_groups,
                activation=cfg.activation,
                dropout=cfg.dropout,
            )
        initialize(model, cfg.init, cfg.activation)
    return model
