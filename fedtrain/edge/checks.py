"""Checks on what a device feeds a model: shape, dtype, finiteness and the trained range."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedtrain.edge.errors import EdgeInputError, InputRangeWarning

__all__ = ["check_input"]

_NUMERIC_KINDS = "iuf"  # signed, unsigned, float; bool, complex, strings and objects are refused


def check_input(
    x: Any,
    input_shape: Sequence[int],
    *,
    input_range: Sequence[float | None] | None = None,
    dtype: type[np.floating[Any]] = np.float32,
) -> np.ndarray:
    """One sample or a batch, checked, as a ``(batch, *input_shape)`` array of ``dtype``.

    Parameters
    ----------
    x
        One sample of shape ``input_shape`` or a batch of shape ``(n, *input_shape)``; any real numeric dtype
        (ints and float64 are cast).
    input_shape
        The model's input shape without the batch dimension.
    input_range
        ``[low, high]`` of the raw features the model was trained on (either may be ``None``: unbounded);
        values outside it give an :class:`InputRangeWarning`, not an error, as the exported graph clips them.
    dtype
        The dtype the graph takes.

    Raises
    ------
    EdgeInputError
        On a wrong shape, a non-numeric/complex/object dtype, an empty batch, or NaN/inf values
        (naming how many and the index of the first).
    """
    shape = tuple(int(d) for d in input_shape)
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as err:  # ragged nested lists
        raise EdgeInputError(f"input is not a rectangular array ({err}); pass a numpy array of shape {shape}") from None
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise EdgeInputError(
            f"input dtype {arr.dtype} is not a real number type; pass float32 values (ints and float64 are cast)"
        )
    if arr.shape == shape:
        batch = arr[None]
    elif arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
        batch = arr
    else:
        hint = ""
        per_sample = math.prod(shape)
        if arr.ndim >= 1 and arr.size and arr.size % per_sample == 0 and arr.shape[1:] != shape:
            hint = f"; if these are {arr.size // per_sample} flattened samples, reshape to (-1, *{shape})"
        raise EdgeInputError(
            f"input shape {arr.shape} does not match the model: expected {shape} (one sample) "
            f"or (batch, *{shape}){hint}"
        )
    if len(batch) == 0:
        raise EdgeInputError(f"input batch is empty (shape {arr.shape}); pass at least one sample")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: reported just below
        out = batch.astype(dtype, copy=False)
    # min/max are cheap, and NaN or inf shows in them: the full scans run only on a bad input (latency matters).
    lo, hi = float(out.min()), float(out.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = ~np.isfinite(out)
        n_nan = int(np.isnan(out).sum())
        first = np.argwhere(bad.reshape(arr.shape))[0]  # in the caller's coordinates, not the batched ones
        raise EdgeInputError(
            f"input holds {int(bad.sum())} non-finite values ({n_nan} NaN, {int(bad.sum()) - n_nan} inf, "
            f"after the cast to {np.dtype(dtype).name}); first at index {tuple(int(i) for i in first)}; "
            "replace or drop those samples"
        )
    if input_range is not None:
        low, high = input_range[0], input_range[1]
        if (low is not None and lo < low) or (high is not None and hi > high):
            _warn_out_of_range(out, low, high)
    return out


def _warn_out_of_range(x: np.ndarray, low: float | None, high: float | None) -> None:
    below = int((x < low).sum()) if low is not None else 0
    above = int((x > high).sum()) if high is not None else 0
    if below or above:
        warnings.warn(
            f"{below + above} input values lie outside the raw range the model was trained on [{low}, {high}] "
            f"({below} below, {above} above; min {float(x.min()):g}, max {float(x.max()):g}); the exported graph "
            "clips them to that range, so check the input's units and scaling",
            InputRangeWarning,
            stacklevel=3,
        )
