"""Server-side aggregation: Flower's strategies by name."""

from fedtrain.aggregation.strategies import STRATEGIES, build_strategy

__all__ = ["STRATEGIES", "build_strategy"]
