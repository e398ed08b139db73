"""Run an exported fedtrain model on a device: numpy and onnxruntime only, no torch, no Flower.

>>> from fedtrain.edge import EdgeModel
>>> model = EdgeModel.load("model-int8-static.ort")  # doctest: +SKIP
>>> model.top_k(x, 3)  # doctest: +SKIP
"""

from fedtrain.edge.card import CARD_FORMAT, ModelCard, card_from_props, card_to_props
from fedtrain.edge.checks import check_input
from fedtrain.edge.errors import EdgeError, EdgeInputError, EdgeModelError, InputRangeWarning, NoCardWarning
from fedtrain.edge.runtime import EdgeModel, session_options

__all__ = [
    "CARD_FORMAT",
    "EdgeError",
    "EdgeInputError",
    "EdgeModel",
    "EdgeModelError",
    "InputRangeWarning",
    "ModelCard",
    "NoCardWarning",
    "card_from_props",
    "card_to_props",
    "check_input",
    "session_options",
]
