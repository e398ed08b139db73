"""The model card: what a fedtrain ONNX file says about itself, in its ``metadata_props``.

ONNX metadata values are strings, so structured values are JSON. :func:`card_to_props` (used by the exporter)
and :func:`card_from_props` (used on the device) are the two halves of this contract; nothing here imports
more than the standard library, so a device needs only numpy and onnxruntime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["CARD_FORMAT", "CARD_PREFIX", "ModelCard", "card_from_props", "card_to_props"]

CARD_FORMAT = "fedtrain-onnx-card-v1"
CARD_PREFIX = "fedtrain."


@dataclass
class ModelCard:
    """Everything a device (or an auditor) needs to know about an exported model.

    ``input_shape`` excludes the batch dimension. ``input_range`` is the range of *raw* features the model
    was trained on (``None`` where unbounded); the normalisation is folded into the graph, so a device feeds
    raw features. ``privacy`` is the DP guarantee the weights were trained under: ``{"level": "none"}`` or
    ``{"level": "sample"|"user"|"both", "epsilon": ..., "delta": ..., "accountant": ...}``.
    ``test_accuracy`` is that of this very file on the run's test split (``None`` where the server has none).
    """

    input_name: str
    output_name: str
    input_shape: list[int]
    class_labels: list[str]
    variant: str  # "fp32" | "fp16" | "int8-static" | "int8-dynamic"
    input_dtype: str = "float32"
    input_range: list[float] | None = None
    normalization: dict[str, Any] = field(default_factory=dict)  # {"method": ..., "folded": true, "clip": ...}
    quantization: dict[str, Any] = field(default_factory=dict)  # {"mode": ..., "calibration": ..., "samples": ...}
    privacy: dict[str, Any] = field(default_factory=lambda: {"level": "none"})
    secure_aggregation: bool = False
    test_accuracy: float | None = None
    test_samples: int = 0
    fedtrain_version: str = ""
    run_id: str = ""
    plan: list[str] = field(default_factory=list)
    rounds: int = 0
    checkpoint: str = ""  # "best" | "latest"
    format: str = CARD_FORMAT


def card_to_props(card: ModelCard) -> dict[str, str]:
    """The card as ``metadata_props`` entries: ``fedtrain.<field>`` -> JSON text."""
    return {CARD_PREFIX + key: json.dumps(value, separators=(",", ":")) for key, value in asdict(card).items()}


def card_from_props(props: Mapping[str, str]) -> ModelCard | None:
    """The card in a model's metadata, or ``None`` when the model carries none (not a fedtrain export).

    Raises
    ------
    ValueError
        When a card is present but damaged or of an unknown format (names the key).
    """
    ours = {k[len(CARD_PREFIX) :]: v for k, v in props.items() if k.startswith(CARD_PREFIX)}
    if not ours:
        return None
    values: dict[str, Any] = {}
    for key, text in ours.items():
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"model card entry {CARD_PREFIX + key!r} is not valid JSON: {text[:60]!r}") from None
    if values.get("format") != CARD_FORMAT:
        raise ValueError(f"model card format {values.get('format')!r} is not {CARD_FORMAT!r}; re-export the model")
    known = set(ModelCard.__dataclass_fields__)
    try:
        return ModelCard(**{k: v for k, v in values.items() if k in known})
    except TypeError as err:
        raise ValueError(f"model card is incomplete: {err}") from None
