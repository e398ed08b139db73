"""fp32 graph -> fp16, int8 static (QDQ) and int8 dynamic variants, and ORT format, with ONNX Runtime's tools."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from fedtrain.errors import ExportError
from fedtrain.export.graph import INPUT_NAME, NORMALIZATION_NODES, set_input_clip

__all__ = ["MIN_CALIBRATION_SAMPLES", "to_fp16", "to_int8_dynamic", "to_int8_static", "to_ort"]

MIN_CALIBRATION_SAMPLES = 16
_WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice through the root logger; the pre-processing it asks for is done."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and activations in fp16; inputs, outputs and the normalisation stay fp32."""
    from onnxconverter_common.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, node_block_list=list(NORMALIZATION_NODES))


def _normalized(model: onnx.ModelProto, raw: np.ndarray) -> np.ndarray:
    """The normalisation nodes' output for ``raw`` (what the first quantised layer sees)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.insert(0, onnx.helper.make_tensor_value_info("normalized", onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(["normalized"], {INPUT_NAME: raw})[0]
    return out


def to_int8_static(model: onnx.ModelProto, calibration: np.ndarray) -> tuple[onnx.ModelProto, tuple[float, float]]:
    """QDQ int8 (uint8 activations, int8 weights), activation ranges from ``calibration`` (raw inputs).

    The normalised input is first clipped to the range the calibration saw, so no input can land outside
    the first quantised layer's range. Returns the model and that range.

    Raises
    ------
    ExportError
        When fewer than :data:`MIN_CALIBRATION_SAMPLES` samples are given.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) < MIN_CALIBRATION_SAMPLES:
        raise ExportError(
            f"int8-static needs at least {MIN_CALIBRATION_SAMPLES} calibration samples, got {len(calibration)}; "
            "enlarge the server's validation split (val-fraction), use export-calibration=input-range, or leave "
            "int8-static out of export-formats"
        )
    clipped = onnx.ModelProto()
    clipped.CopyFrom(model)
    seen = _normalized(clipped, calibration)
    low, high = float(seen.min()), float(seen.max())
    set_input_clip(clipped, low, high)

    class _Reader(CalibrationDataReader):  # one sample at a time, as a device would feed it
        def __init__(self) -> None:
            self._rows = iter(range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self._rows, None)
            return None if i is None else {INPUT_NAME: calibration[i : i + 1]}

    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        fp32, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(clipped, fp32)
        quant_pre_process(str(fp32), str(pre))
        quantize_static(
            str(pre),
            str(out),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(NORMALIZATION_NODES),
            op_types_to_quantize=list(_WEIGHTED_OPS),  # QDQ around norms and pools costs bytes, gains nothing
        )
        return _trim_qdq(onnx.load(out)), (low, high)


def _trim_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what the quantizer writes that changes nothing but bytes: the output's Q/DQ pair, zero zero-points.

    - The logits are quantised then dequantised right before the graph output; without the pair the last layer
      returns its fp32 result (one rounding fewer, and the pair's nodes and constants gone).
    - A DequantizeLinear of int8 weights or int32 biases carries an all-zero zero-point; the input is optional
      and defaults to zero of the data's own type, so it is left out. (QuantizeLinear keeps its zero-point: its
      type is the output's.)
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in outputs]:
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or uses.get(q.output[0]) != 1:
            continue
        source = producer.get(q.input[0])
        if source is None or uses.get(q.input[0]) != 1 or q.input[0] in outputs:
            continue
        source.output[list(source.output).index(q.input[0])] = dq.output[0]
        graph.node.remove(q)
        graph.node.remove(dq)
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        data, zero = inits.get(node.input[0]), inits.get(node.input[2])
        if data is None or zero is None or data.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.INT32):
            continue
        if not numpy_helper.to_array(zero).any():
            del node.input[2]
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def to_int8_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """int8 weights, activations quantised per call (no calibration; slow for convolutions on x86)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        src, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, nodes_to_exclude=list(NORMALIZATION_NODES),
                         op_types_to_quantize=list(_WEIGHTED_OPS))  # fmt: skip
        return onnx.load(out)


def to_ort(path: Path) -> Path:
    """Write ``path`` in ORT format next to it (``.ort``), for minimal ONNX Runtime builds; the card is kept."""
    import onnxruntime as ort

    target = path.with_suffix(".ort")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no CPU-specific layouts
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.save_model_format", "ORT")
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ExportError(f"{path.name} could not be converted to ORT format: {err}") from None
    return target
