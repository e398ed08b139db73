"""The gradient-graph contract, device side: load a graph, check its checksum and spec, run it.

:mod:`fedtrain.export.gradient_graph` (server, torch) writes the graphs; this module (numpy and onnxruntime
only) reads them. The names, the spec and the manifest live here so both sides share one definition.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedtrain.edge.errors import EdgeModelError

__all__ = [
    "GRADIENT_FORMAT",
    "GRADIENT_PREFIX",
    "MANIFEST",
    "OPSET",
    "GradientGraph",
    "GradientSpec",
    "graph_name",
    "load_graph",
]

GRADIENT_FORMAT = "fedtrain-gradient-graph-v1"
GRADIENT_PREFIX = "fedtrain.gradient."
MANIFEST = "gradient-graphs.json"
OPSET = 20  # the export's opset (fedtrain.export.graph.OPSET); a device refuses a graph that needs a newer one


@dataclass
class GradientSpec:
    """What a gradient graph computes; stored in its metadata and checked by the device."""

    objective: str  # "finetune" | "autoencoder" | "denoising"
    per_sample: bool
    batch: int  # the physical batch the graph was traced at
    input_shape: list[int]
    num_classes: int
    params: dict[str, list[int]]  # trainable parameter -> shape, in input order
    frozen: dict[str, list[int]] = field(default_factory=dict)  # inputs that get no gradient (pretraining)
    layer: int = -1  # pretraining: the hidden layer trained
    label_smoothing: float = 0.0
    clipped: bool = False  # per-sample graph that clips to max_grad_norm and sums inside (outputs the sums)
    opset: int = OPSET
    format: str = GRADIENT_FORMAT


def graph_name(objective: str, layer: int, per_sample: bool, *, clipped: bool = False) -> str:
    """The manifest key of one graph, e.g. ``finetune-clipped``, ``autoencoder-layer0-batch``, ``forward-batch``."""
    where = f"-layer{layer}" if layer >= 0 else ""
    kind = "batch" if not per_sample else "clipped" if clipped else "per-sample"
    return f"{objective}{where}-{kind}"


def spec_from_props(props: Mapping[str, str], where: str) -> GradientSpec:
    """The spec in a graph's metadata; an error naming ``where`` when it is missing or of another format."""
    ours = {k[len(GRADIENT_PREFIX) :]: v for k, v in props.items() if k.startswith(GRADIENT_PREFIX)}
    try:
        values: dict[str, Any] = {k: json.loads(v) for k, v in ours.items()}
    except json.JSONDecodeError as err:
        raise EdgeModelError(f"{where}: damaged gradient-graph metadata ({err}); publish the graphs again") from None
    if values.get("format") != GRADIENT_FORMAT:
        raise EdgeModelError(
            f"{where}: not a fedtrain gradient graph of format {GRADIENT_FORMAT!r} (found {values.get('format')!r}); "
            "publish the run's graphs with fedtrain.export.gradient_graph"
        )
    known = set(GradientSpec.__dataclass_fields__)
    return GradientSpec(**{k: v for k, v in values.items() if k in known})


class GradientGraph:
    """One loaded gradient graph: ``run`` maps parameters and a padded batch to the loss and gradients."""

    def __init__(self, session: Any, spec: GradientSpec, where: str) -> None:
        self.session, self.spec, self.where = session, spec, where
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]
        self.grad_names = [o[len("grad.") :] for o in self.outputs if o.startswith("grad.")]

    def run(
        self, params: Mapping[str, np.ndarray], data: Mapping[str, np.ndarray]
    ) -> tuple[float, dict[str, np.ndarray]]:
        """``(loss, {name: gradient})``: per-sample gradients ``(B, *shape)`` or the batch's ``shape``."""
        feed: dict[str, np.ndarray] = {}
        for name in self.inputs:
            value = params.get(name) if name in params else data.get(name)
            if value is None:
                raise EdgeModelError(
                    f"{self.where}: the graph needs input {name!r}, which the model received does not have (it has "
                    f"{sorted(params)}); publish the graphs of this run's model again"
                )
            feed[name] = value
        out = self.session.run(self.outputs, feed)
        loss = float(out[0])
        return loss, dict(zip(self.grad_names, out[1:], strict=True))

    def check(self, expected: Mapping[str, tuple[int, ...]], input_shape: tuple[int, ...], num_classes: int) -> None:
        """Refuse a graph whose parameters, input shape or classes differ from the model received."""
        s = self.spec
        wanted = {**s.params, **s.frozen}
        for name, shape in wanted.items():
            got = expected.get(name)
            if got is None or list(got) != list(shape):
                raise EdgeModelError(
                    f"{self.where}: the graph expects {name} of shape {shape}, the server sent "
                    f"{'none' if got is None else list(got)}; publish the graphs of this run's model again"
                )
        if list(input_shape) != list(s.input_shape) or num_classes != s.num_classes:
            raise EdgeModelError(
                f"{self.where}: the graph was made for inputs {s.input_shape} and {s.num_classes} classes, this run "
                f"has {list(input_shape)} and {num_classes}; publish the graphs of this run again"
            )


def load_graph(folder: Path, name: str, *, threads: int = 1) -> GradientGraph:
    """Load graph ``name`` from a published folder, checking its sha256 against the manifest and its opset.

    Raises
    ------
    EdgeModelError
        When the manifest or the graph is missing, the checksum differs, or the graph needs a newer opset.
    """
    import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]

    from fedtrain.edge.runtime import session_options

    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise EdgeModelError(
            f"{manifest_path}: no gradient-graph manifest; set node config gradient-graphs to the folder that "
            "fedtrain.export.gradient_graph.publish_gradient_graphs wrote for this run"
        )
    manifest = json.loads(manifest_path.read_text())
    entry = manifest.get("graphs", {}).get(name)
    if entry is None:
        raise EdgeModelError(
            f"{manifest_path}: has no graph {name!r} (it has {sorted(manifest.get('graphs', {}))}); publish the graphs "
            "for this phase"
        )
    path = folder / str(entry["file"])
    data = path.read_bytes() if path.is_file() else b""
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise EdgeModelError(
            f"{path}: sha256 {digest[:12]}... is not the manifest's {entry['sha256'][:12]}...; copy the graph again"
        )
    session = ort.InferenceSession(data, sess_options=session_options(threads), providers=["CPUExecutionProvider"])
    spec = spec_from_props(session.get_modelmeta().custom_metadata_map, str(path))
    if spec.opset > OPSET:
        raise EdgeModelError(f"{path}: needs opset {spec.opset}, this device runtime knows up to {OPSET}")
    return GradientGraph(session, spec, str(path))
