"""Plain containers for arrays: a labelled data set and its fitted input scaling."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtrain import wire
from fedtrain.errors import DataError

__all__ = ["ArrayDataset", "Normalizer", "normalizer_from_config", "normalizer_to_config"]


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs ``x`` of shape ``(N, *input_shape)`` (float32) and labels ``y`` of shape ``(N,)``."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    max_value: float | None = None  # nominal input range [0, max_value] of the format (pixels), if known

    def __post_init__(self) -> None:
        if self.x.ndim < 2:
            raise DataError(f"inputs must have shape (samples, features...); got shape {self.x.shape}")
        if self.y.ndim != 1 or len(self.y) != len(self.x):
            raise DataError(f"labels must be one per sample: {len(self.x)} inputs but labels of shape {self.y.shape}")
        if len(self.x) == 0:
            raise DataError("the data set is empty (no samples); give a file with labelled samples of each class")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: np.ndarray) -> ArrayDataset:
        return ArrayDataset(self.x[index], self.y[index], self.classes, self.max_value)


@dataclass(frozen=True)
class Normalizer:
    """Per-feature affine scaling ``clip((x - shift) / scale)`` fitted on training data.

    It is stored with every checkpoint and exported model, so a device scales inputs exactly
    as training did.
    """

    method: str
    shift: np.ndarray
    scale: np.ndarray
    clip: float | None

    @classmethod
    def fit(cls, x: np.ndarray, method: str, max_value: float | None = None) -> Normalizer:
        """Fit ``method`` on ``x``; ``range`` divides by the format's nominal maximum and reads no data."""
        if method == "range":
            if max_value is None:
                raise DataError(
                    "normalize='range' needs a format with a known value range (digits, IDX, image folders); "
                    "for npz and CSV data use 'none', or 'standard'/'minmax' (fitted on the training data; under DP "
                    "they need dp-allow-unaccounted-statistics=true)"
                )
            ones = np.ones(x.shape[1:], dtype=np.float32)
            return cls("range", 0.0 * ones, max_value * ones, None)
        if method == "dp-standard":
            raise DataError(
                "normalize='dp-standard' is fitted from the clients' noisy sums (fedtrain.privacy.dp_normalize), not "
                "on pooled data; build the federation's data with its privacy settings"
            )
        if method == "standard":
            # Floor the std: near-constant pixels would otherwise blow up to huge z-scores.
            return cls(method, x.mean(0), np.maximum(x.std(0), 1e-3 * max(float(x.std()), 1e-8)), 5.0)
        if method == "minmax":
            lo, hi = x.min(0), x.max(0)
            return cls(method, lo, np.where(hi > lo, hi - lo, 1.0), None)
        ones = np.ones(x.shape[1:], dtype=np.float32)
        return cls("none", 0.0 * ones, ones, None)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = (x - self.shift) / self.scale
        if self.clip is not None:
            out = np.clip(out, -self.clip, self.clip)
        return out.astype(np.float32)

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Raw features that this normaliser maps to ``x``, exact up to rounding.

        A clipped value maps back to the raw value at the clip, which the normaliser maps to ``x`` again.
        """
        shape = x.shape[1:]
        scale = np.asarray(self.scale, dtype=np.float32).reshape(shape)
        shift = np.asarray(self.shift, dtype=np.float32).reshape(shape)
        return (x * scale + shift).astype(np.float32)

    def state_dict(self) -> dict:
        return {
            "method": self.method,
            "shift": self.shift.astype(np.float32).tolist(),
            "scale": self.scale.astype(np.float32).tolist(),
            "clip": self.clip,
        }


def normalizer_to_config(norm: Normalizer) -> dict[str, Any]:
    """``norm`` as ConfigRecord entries (scalars and flat lists), to travel with the model."""
    out: dict[str, Any] = {
        wire.NORM_METHOD: norm.method,
        wire.NORM_SHAPE: [int(d) for d in np.shape(norm.shift)],
        wire.NORM_SHIFT: np.asarray(norm.shift, dtype=np.float32).ravel().tolist(),
        wire.NORM_SCALE: np.asarray(norm.scale, dtype=np.float32).ravel().tolist(),
    }
    if norm.clip is not None:
        out[wire.NORM_CLIP] = float(norm.clip)
    return out


def normalizer_from_config(config: Mapping[str, Any]) -> Normalizer | None:
    """The normaliser a config carries (see :func:`normalizer_to_config`), or None when it carries none."""
    if wire.NORM_METHOD not in config:
        return None
    try:
        shape = tuple(int(d) for d in config[wire.NORM_SHAPE])
        shift = np.asarray(config[wire.NORM_SHIFT], dtype=np.float32).reshape(shape)
        scale = np.asarray(config[wire.NORM_SCALE], dtype=np.float32).reshape(shape)
    except (KeyError, TypeError, ValueError) as err:
        msg = f"the normaliser in the server's config is malformed ({err}); are server and client the same version?"
        raise DataError(msg) from None
    clip = config.get(wire.NORM_CLIP)
    return Normalizer(str(config[wire.NORM_METHOD]), shift, scale, None if clip is None else float(clip))
