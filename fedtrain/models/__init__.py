"""Model zoo: an MLP and a small GroupNorm CNN, both Opacus-compatible, with init schemes."""

from fedtrain.models.cnn import SmallCNN
from fedtrain.models.layers import ACTIVATIONS, INITIALIZERS, initialize
from fedtrain.models.mlp import MLP
from fedtrain.models.zoo import MODELS, build_model

__all__ = ["ACTIVATIONS", "INITIALIZERS", "MLP", "MODELS", "SmallCNN", "build_model", "initialize"]
