"""Load an exported model with onnxruntime, tuned for a low-power device, and run it."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]  # no py.typed marker

from fedtrain.edge.card import ModelCard, card_from_props
from fedtrain.edge.checks import check_input
from fedtrain.edge.errors import EdgeInputError, EdgeModelError, NoCardWarning

__all__ = ["EdgeModel", "session_options"]

_ORT_MAGIC = b"ORTM"  # the flatbuffer file identifier of an ORT-format model, at bytes 4..8
_GRAPH_DTYPES: dict[str, type[np.floating[Any]]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def session_options(threads: int = 1, *, ort_format: bool = False) -> ort.SessionOptions:
    """Session options for a small device: few threads, no busy-waiting, one operator at a time.

    Spinning keeps idle cores busy polling for work, which costs power and latency on a shared core;
    a sequential executor with one inter-op thread never starts a second pool.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if ort_format:
        opts.add_session_config_entry("session.load_model_format", "ORT")
    opts.log_severity_level = 3  # errors only: onnxruntime's own warnings are not the device user's to act on
    return opts


class EdgeModel:
    """An exported fedtrain model (``.onnx`` or ``.ort``) ready to classify raw features.

    Use :meth:`load`; ``card`` is the model card (a minimal one derived from the graph when the file has none).
    """

    def __init__(self, path: Path, session: ort.InferenceSession, card: ModelCard, *, has_card: bool) -> None:
        self.path = path
        self.session = session
        self.card = card
        self.has_card = has_card
        self._dtype = _graph_dtype(path, session, card.input_name)

    @classmethod
    def load(cls, path: str | Path, *, threads: int = 1) -> EdgeModel:
        """Load a model file and read its card.

        Raises
        ------
        EdgeModelError
            When the file is missing, not an ONNX/ORT model, or carries a damaged card or one that disagrees
            with the graph.
        """
        path = Path(path)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise EdgeModelError(f"threads must be an integer >= 1, got {threads!r}")
        if not path.exists():
            raise EdgeModelError(
                f"{path}: model file not found; pass an .onnx or .ort file that `fedtrain export` wrote"
            )
        if not path.is_file():
            raise EdgeModelError(f"{path}: is a folder, not a model file; pass one .onnx or .ort file in it")
        with path.open("rb") as fh:
            ort_format = fh.read(8)[4:8] == _ORT_MAGIC
        try:
            session = ort.InferenceSession(
                str(path),
                sess_options=session_options(threads, ort_format=ort_format),
                providers=["CPUExecutionProvider"],
            )
        except Exception as err:  # onnxruntime raises its own pybind classes (Fail, InvalidProtobuf, ...)
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise EdgeModelError(
                f"{path}: not a loadable ONNX or ORT model ({reason}); re-export it, or copy it again if the "
                "transfer may have cut it short"
            ) from None
        props = session.get_modelmeta().custom_metadata_map
        try:
            card = card_from_props(props)
        except ValueError as err:
            raise EdgeModelError(f"{path}: damaged model card: {err}") from None
        if card is None:
            card = _card_from_graph(path, session)
            warnings.warn(
                f"{path}: carries no fedtrain model card (not a fedtrain export?); it still runs, with the input "
                f"shape {card.input_shape} and labels '0'..'{len(card.class_labels) - 1}' taken from the graph, "
                "and no range check",
                NoCardWarning,
                stacklevel=2,
            )
            return cls(path, session, card, has_card=False)
        _check_card_against_graph(path, session, card)
        return cls(path, session, card, has_card=True)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape (no batch dimension)."""
        return tuple(self.card.input_shape)

    @property
    def labels(self) -> list[str]:
        """Class label of each logit, in order."""
        return [str(label) for label in self.card.class_labels]

    def check_input(self, x: Any) -> np.ndarray:
        """``x`` (one sample or a batch) checked and cast, as a batch; see :func:`fedtrain.edge.check_input`."""
        return check_input(x, self.card.input_shape, input_range=self.card.input_range, dtype=self._dtype)

    def predict(self, x: Any) -> np.ndarray:
        """Logits, float32, of shape ``(batch, num_classes)`` (a single sample gives a batch of one)."""
        batch = self.check_input(x)
        (logits,) = self.session.run([self.card.output_name], {self.card.input_name: batch})
        return np.asarray(logits, dtype=np.float32).reshape(len(batch), -1)

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities (softmax of the logits), ``(batch, num_classes)``."""
        logits = self.predict(x).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)  # stable: exp never overflows
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def top_k(self, x: Any, k: int = 3) -> list[list[tuple[str, float]]]:
        """Per sample, the ``k`` most probable ``(label, probability)`` pairs, most probable first."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise EdgeInputError(f"k must be an integer >= 1, got {k!r}")
        proba = self.predict_proba(x)
        k = min(k, proba.shape[1])
        order = np.argsort(-proba, axis=1, kind="stable")[:, :k]  # ties: the lower class index first
        labels = self.labels
        return [[(labels[j], float(p[j])) for j in row] for p, row in zip(proba, order, strict=True)]

    def classify(self, x: Any) -> list[str]:
        """The most probable label of each sample."""
        labels = self.labels
        return [labels[i] for i in self.predict(x).argmax(axis=1)]

    def __repr__(self) -> str:
        return (
            f"EdgeModel({str(self.path)!r}, variant={self.card.variant!r}, input_shape={self.input_shape}, "
            f"classes={len(self.card.class_labels)})"
        )


def _fixed_dims(dims: list[Any]) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in dims]


def _card_from_graph(path: Path, session: ort.InferenceSession) -> ModelCard:
    """A minimal card for a model exported elsewhere: its single input and first output, labels 0..n-1."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise EdgeModelError(f"{path}: has {len(inputs)} inputs and no model card; a classifier takes one input")
    in_dims, out_dims = _fixed_dims(inputs[0].shape), _fixed_dims(outputs[0].shape)
    if not in_dims or any(d is None for d in in_dims[1:]):
        raise EdgeModelError(
            f"{path}: input {inputs[0].name!r} has shape {inputs[0].shape}; without a model card every dimension "
            "but the batch must be fixed"
        )
    if not out_dims or out_dims[-1] is None:
        raise EdgeModelError(f"{path}: output {outputs[0].name!r} has no fixed class dimension ({outputs[0].shape})")
    n = out_dims[-1]
    return ModelCard(
        input_name=inputs[0].name,
        output_name=outputs[0].name,
        input_shape=[int(d) for d in in_dims[1:] if d is not None],
        class_labels=[str(i) for i in range(n)],
        variant="unknown",
    )


def _check_card_against_graph(path: Path, session: ort.InferenceSession, card: ModelCard) -> None:
    """A card that disagrees with its graph would feed the wrong tensor or name the wrong class: refuse it."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    fix = "re-export the model"
    if card.input_name not in inputs:
        raise EdgeModelError(
            f"{path}: model card names input {card.input_name!r}; the graph has {sorted(inputs)}; {fix}"
        )
    if card.output_name not in outputs:
        raise EdgeModelError(
            f"{path}: model card names output {card.output_name!r}; the graph has {sorted(outputs)}; {fix}"
        )
    dims = _fixed_dims(inputs[card.input_name].shape)[1:]
    shape = list(card.input_shape)
    if len(dims) != len(shape) or any(d is not None and d != s for d, s in zip(dims, shape, strict=False)):
        raise EdgeModelError(
            f"{path}: model card input shape {shape} does not match the graph's {inputs[card.input_name].shape}; {fix}"
        )
    n_out = _fixed_dims(outputs[card.output_name].shape)[-1:]
    if n_out and n_out[0] is not None and n_out[0] != len(card.class_labels):
        raise EdgeModelError(
            f"{path}: model card has {len(card.class_labels)} class labels, the graph's output has {n_out[0]}; {fix}"
        )
    if card.input_range is not None and len(card.input_range) != 2:
        raise EdgeModelError(f"{path}: model card input_range must be [low, high], got {card.input_range!r}; {fix}")


def _graph_dtype(path: Path, session: ort.InferenceSession, name: str) -> type[np.floating[Any]]:
    kind = next(i.type for i in session.get_inputs() if i.name == name)
    if kind not in _GRAPH_DTYPES:
        raise EdgeModelError(f"{path}: input {name!r} is {kind}; fedtrain models take float32 (or float16)")
    return _GRAPH_DTYPES[kind]
