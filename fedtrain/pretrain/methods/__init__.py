"""Pretraining methods, one file each, registered by name in :data:`METHODS` (config key ``pretrain-method``).

A new method is a new file here with a :class:`PretrainMethod` subclass under ``@METHODS.register(name)``,
plus its import below.
"""

from fedtrain.pretrain.methods.base import METHODS, PretrainMethod

# Imported for their registrations, in the order the names are listed.
from fedtrain.pretrain.methods.autoencoder import Autoencoder  # isort: skip
from fedtrain.pretrain.methods.denoising import DenoisingAutoencoder  # isort: skip
from fedtrain.pretrain.methods.rbm import RBMMethod, visible_type  # isort: skip

__all__ = ["METHODS", "Autoencoder", "DenoisingAutoencoder", "PretrainMethod", "RBMMethod", "visible_type"]
