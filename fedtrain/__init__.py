"""fedtrain: federated pretraining and fine-tuning under differential privacy, on Flower."""

from fedtrain.config import RunConfig, load_config
from fedtrain.errors import FedtrainError

__all__ = ["FedtrainError", "RunConfig", "__version__", "load_config"]

__version__ = "0.1.0"
