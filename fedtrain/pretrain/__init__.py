"""Greedy layer-wise pretraining: (denoising) autoencoder and RBM objectives per hidden layer."""

from fedtrain.pretrain.local import pretrain_local, pretrain_train_config
from fedtrain.pretrain.objectives import AUX_PREFIX, METHODS, LayerObjective, visible_type
from fedtrain.pretrain.rbm import RBM

__all__ = [
    "AUX_PREFIX",
    "METHODS",
    "RBM",
    "LayerObjective",
    "pretrain_local",
    "pretrain_train_config",
    "visible_type",
]
