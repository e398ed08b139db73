"""``compact``: only attributes equal to the spec's defaults go, and the graph computes the same thing."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from fedtrain.export.graph import compact

F = onnx.TensorProto.FLOAT


def _model(reshape_to: list[int], epsilon: float) -> onnx.ModelProto:
    """x [N, 2, 4] -> InstanceNorm -> Reshape -> Gemm (alpha 1.0 default, beta 0.5 not, transB 1 not)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.ones(2, np.float32), "in_scale"),
        numpy_helper.from_array(np.zeros(2, np.float32), "in_bias"),
        numpy_helper.from_array(np.array(reshape_to, np.int64), "flat_shape"),
        numpy_helper.from_array(rng.normal(size=(3, 8)).astype(np.float32), "fc_weight"),
        numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "fc_bias"),
    ]
    nodes = [
        helper.make_node("InstanceNormalization", ["x", "in_scale", "in_bias"], ["normed"], epsilon=epsilon),
        helper.make_node("Reshape", ["normed", "flat_shape"], ["flat"], name="flatten", allowzero=1),
        helper.make_node("Gemm", ["flat", "fc_weight", "fc_bias"], ["y"], name="fc", alpha=1.0, beta=0.5, transB=1),
    ]
    inputs = [helper.make_tensor_value_info("x", F, ["n", 2, 4])]
    outputs = [helper.make_tensor_value_info("y", F, ["n", 3])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def _attrs(model: onnx.ModelProto) -> dict[str, set[str]]:
    return {n.op_type: {a.name for a in n.attribute} for n in model.graph.node}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"x": x})[0]
    return out


def test_defaults_are_dropped_per_op_and_the_outputs_stay_the_same():
    model = _model([-1, 8], epsilon=1e-5)
    small = compact(model)
    onnx.checker.check_model(small, full_check=True)
    assert _attrs(small) == {"InstanceNormalization": set(), "Reshape": set(), "Gemm": {"beta", "transB"}}
    assert small.ByteSize() < model.ByteSize()
    assert {i.name for i in small.graph.input} == {"x"} and {o.name for o in small.graph.output} == {"y"}
    x = np.random.default_rng(1).normal(size=(3, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(small, x), _run(model, x))


def test_attributes_that_change_the_result_are_kept():
    # allowzero matters once the target shape holds a 0; an epsilon other than 1e-5 is the model's own.
    small = compact(_model([0, -1], epsilon=1e-3))
    assert _attrs(small)["Reshape"] == {"allowzero"}
    assert _attrs(small)["InstanceNormalization"] == {"epsilon"}
