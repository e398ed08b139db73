"""Model zoo: a linear model, an MLP and a small GroupNorm CNN, all Opacus-compatible, with init schemes."""

from fedtrain.models.cnn import SmallCNN
from fedtrain.models.layers import ACTIVATIONS, INITIALIZERS, initialize
from fedtrain.models.linear import LinearModel
from fedtrain.models.mlp import MLP
from fedtrain.models.zoo import MODELS, build_model

__all__ = ["ACTIVATIONS", "INITIALIZERS", "MLP", "MODELS", "LinearModel", "SmallCNN", "build_model", "initialize"]
