"""torch model -> one self-contained ONNX graph that takes raw features.

The model is exported with torch's dynamo exporter; the run's normalisation is then put in front of it as
three named nodes (scale, shift, clip), so a device needs nothing of fedtrain to feed it. Node metadata
(stack traces with absolute source paths) and intermediate shape annotations are stripped: they are a
large part of a small model's file and say where the training machine keeps its code.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from fedtrain.data import Normalizer
from fedtrain.errors import ExportError

__all__ = [
    "INPUT_NAME",
    "NORMALIZATION_NODES",
    "OPSET",
    "OUTPUT_NAME",
    "compact",
    "export_graph",
    "set_input_clip",
]

OPSET = 20
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_INNER_INPUT = "normalized"
_SCALE, _SHIFT, _CLIP = "fedtrain_normalize_scale", "fedtrain_normalize_shift", "fedtrain_normalize_clip"
NORMALIZATION_NODES = (_SCALE, _SHIFT, _CLIP)  # kept in fp32 by fp16 and int8 conversion
_CLIP_LOW, _CLIP_HIGH = "fedtrain_clip_low", "fedtrain_clip_high"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's noise: a warning per skipped torchvision op (none apply), and deprecations."""
    logger = logging.getLogger("torch")  # torch.onnx, torch.export and dynamo
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        # A failed torch.export prints the traced graph; the error names the layer instead.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _dynamo_export(model: nn.Module, example: torch.Tensor, input_name: str) -> onnx.ModelProto:
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[input_name],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: "batch"},),
            opset_version=OPSET,
            verbose=False,
        )
    if program is None:  # torch returns None only when writing to a file
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def _failing_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The first leaf layer that does not export on its own, e.g. ``'features.0.conv' (Conv3d)``; '' if none."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: inputs.setdefault(name, args[0]))
        for name, m in model.named_modules()
        if not list(m.children()) and name
    ]
    try:
        with torch.no_grad():
            model(example)
    except Exception as err:  # the model does not even run on this input
        return f"the model's forward pass ({type(err).__name__}: {err})"
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    for name, x in inputs.items():
        if not isinstance(x, torch.Tensor):
            continue
        try:
            _dynamo_export(modules[name].eval(), x, "x")
        except Exception as err:
            return f"layer {name!r} ({type(modules[name]).__name__}): {_root_cause(err)}"
    return ""


def _root_cause(err: BaseException) -> str:
    """The innermost cause's first line: torch wraps the real reason (e.g. data-dependent control flow) twice."""
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"


def _strip(model: onnx.ModelProto) -> None:
    """Drop node and graph metadata, doc strings and intermediate shape annotations (re-inferred at load)."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    del model.graph.metadata_props[:]  # torch.export's graph signature and range constraints
    for value in [*model.graph.input, *model.graph.output]:
        del value.metadata_props[:]  # torch.export's input spec and original names
    del model.metadata_props[:]
    model.graph.doc_string = ""
    model.doc_string = ""


def _prepend_normalization(model: onnx.ModelProto, normalizer: Normalizer, input_shape: tuple[int, ...]) -> None:
    """``clip(raw * (1/scale) + (-shift/scale))`` in front of the graph, fp32, with named nodes."""
    graph = model.graph
    (inner,) = [i for i in graph.input if i.name == _INNER_INPUT]
    raw = onnx.ValueInfoProto()
    raw.CopyFrom(inner)
    raw.name = INPUT_NAME
    scale = np.asarray(normalizer.scale, dtype=np.float64).reshape(input_shape)
    shift = np.asarray(normalizer.shift, dtype=np.float64).reshape(input_shape)
    clip = float(normalizer.clip) if normalizer.clip is not None else float("inf")
    graph.initializer.extend(
        [
            numpy_helper.from_array((1.0 / scale).astype(np.float32), "fedtrain_scale"),
            numpy_helper.from_array((-shift / scale).astype(np.float32), "fedtrain_shift"),
            numpy_helper.from_array(np.array(-clip, dtype=np.float32), _CLIP_LOW),
            numpy_helper.from_array(np.array(clip, dtype=np.float32), _CLIP_HIGH),
        ]
    )
    nodes = [
        helper.make_node("Mul", [INPUT_NAME, "fedtrain_scale"], ["fedtrain_scaled"], name=_SCALE),
        helper.make_node("Add", ["fedtrain_scaled", "fedtrain_shift"], ["fedtrain_shifted"], name=_SHIFT),
        helper.make_node("Clip", ["fedtrain_shifted", _CLIP_LOW, _CLIP_HIGH], [_INNER_INPUT], name=_CLIP),
    ]
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    graph.input.remove(inner)
    graph.input.insert(0, raw)


def set_input_clip(model: onnx.ModelProto, low: float, high: float) -> None:
    """Narrow the clip of the normalised input to ``[low, high]`` (the calibrated range, before int8 layers)."""
    for init in model.graph.initializer:
        if init.name in (_CLIP_LOW, _CLIP_HIGH):
            current = float(numpy_helper.to_array(init))
            value = max(current, low) if init.name == _CLIP_LOW else min(current, high)
            init.CopyFrom(numpy_helper.from_array(np.array(value, dtype=np.float32), init.name))


def export_graph(model: nn.Module, input_shape: tuple[int, ...], normalizer: Normalizer) -> onnx.ModelProto:
    """The model (eval mode, weights as they are) as an ONNX graph over raw inputs of ``input_shape``.

    Raises
    ------
    ExportError
        When torch cannot export the model, naming the first layer that does not export.
    """
    model = model.eval()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    try:
        proto = _dynamo_export(model, example, _INNER_INPUT)
    except Exception as err:
        culprit = _failing_layer(model, example) or _root_cause(err)
        raise ExportError(
            f"{type(model).__name__} cannot be exported to ONNX: {culprit}; replace that layer with one ONNX "
            f"supports (opset {OPSET}), or export its checkpoint yourself"
        ) from None
    _strip(proto)
    _prepend_normalization(proto, normalizer, input_shape)
    proto.producer_name = "fedtrain"
    return proto


# Attribute values that are the ONNX spec's defaults (opset 20), per op: writing them out costs bytes and changes
# nothing. Per op, because one name has different defaults (Gemm's alpha is 1.0, LeakyRelu's 0.01).
_ALL_ONES, _ALL_ZEROS = "ones", "zeros"
_WINDOW = {"auto_pad": b"NOTSET", "dilations": _ALL_ONES, "strides": _ALL_ONES, "pads": _ALL_ZEROS}
_DEFAULTS: dict[str, dict[str, object]] = {
    "Conv": {**_WINDOW, "group": 1},
    "ConvInteger": {**_WINDOW, "group": 1},
    "QLinearConv": {**_WINDOW, "group": 1},
    "MaxPool": {**_WINDOW, "ceil_mode": 0, "storage_order": 0},
    "AveragePool": {**_WINDOW, "ceil_mode": 0},
    "Reshape": {"allowzero": 0},
    "Gemm": {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
    "GroupNormalization": {"epsilon": 1e-5, "stash_type": 1},
    "InstanceNormalization": {"epsilon": 1e-5},
    "Shape": {"start": 0},
}


def _is_default(op_type: str, attr: onnx.AttributeProto) -> bool:
    want = _DEFAULTS[op_type].get(attr.name)
    if want is None:
        return False
    value = helper.get_attribute_value(attr)
    if want == _ALL_ONES:
        return isinstance(value, list) and all(v == 1 for v in value)
    if want == _ALL_ZEROS:
        return isinstance(value, list) and all(v == 0 for v in value)
    if isinstance(want, float):
        return bool(np.float32(value) == np.float32(want))  # stored as float32: 1e-5 reads back as 9.99999975e-06
    return bool(value == want)


def _redundant(node: onnx.NodeProto, attr: onnx.AttributeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """Whether dropping ``attr`` leaves ``node`` doing the same: it equals the default, or cannot matter.

    A Reshape's ``allowzero`` only matters where its target shape holds a 0; with a constant shape free of
    zeros it is redundant whatever its value.
    """
    if _is_default(node.op_type, attr):
        return True
    if node.op_type != "Reshape" or attr.name != "allowzero" or len(node.input) < 2:
        return False
    shape = inits.get(node.input[1])
    return shape is not None and bool(numpy_helper.to_array(shape).all())


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with short tensor names, no node names, no shape annotations and only the opsets its nodes use.

    Names like ``hidden.0.linear.weight_DequantizeLinear_Output`` are stored at every use; in a small int8
    model they are a tenth of the file. Attributes equal to the spec's defaults are dropped. The graph's input
    and output keep their names.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        node.name = ""  # optional in ONNX; runtimes name nodes themselves
        if node.op_type in _DEFAULTS and node.domain in ("", "ai.onnx"):
            kept_attrs = [a for a in node.attribute if not _redundant(node, a, inits)]
            del node.attribute[:]
            node.attribute.extend(kept_attrs)
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for init in graph.initializer:
        init.name = short(init.name)
    del graph.value_info[:]
    used = {node.domain for node in graph.node}
    kept = [op for op in out.opset_import if op.domain in used or op.domain in ("", "ai.onnx")]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out
