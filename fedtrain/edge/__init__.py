"""Run an exported fedtrain model on a device: numpy and onnxruntime only, no torch, no Flower."""

from fedtrain.edge.card import CARD_FORMAT, ModelCard, card_from_props, card_to_props

__all__ = ["CARD_FORMAT", "ModelCard", "card_from_props", "card_to_props"]
