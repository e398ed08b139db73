"""The errors and warnings of the device runtime.

They derive from :mod:`fedtrain.errors` (standard library only) so the ``fedtrain`` command prints them as one
``error: ...`` line with the exit code of their kind: a bad model file is a model error, a bad input a data error.
"""

from __future__ import annotations

from fedtrain.errors import DataError, FedtrainError, ModelError

__all__ = ["EdgeError", "EdgeInputError", "EdgeModelError", "InputRangeWarning", "NoCardWarning"]


class EdgeError(FedtrainError, ValueError):
    """Base class of the device runtime's errors."""


class EdgeModelError(EdgeError, ModelError):
    """The model file is missing, corrupt, not ONNX/ORT, or its model card is damaged."""


class EdgeInputError(EdgeError, DataError):
    """An input has the wrong shape or dtype, holds NaN/inf, or its file cannot be read."""


class NoCardWarning(UserWarning):
    """The model carries no fedtrain model card: shape and labels come from the graph."""


class InputRangeWarning(UserWarning):
    """Input values lie outside the raw range the model was trained on (the graph clips them)."""
