"""fedtrain.edge: loading exported models, input checks, predictions, the predict command, and no torch."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fedtrain.edge import (
    EdgeError,
    EdgeInputError,
    EdgeModel,
    EdgeModelError,
    InputRangeWarning,
    ModelCard,
    NoCardWarning,
    card_to_props,
)
from fedtrain.edge.cli import add_predict_parser
from fedtrain.errors import FedtrainError

LABELS = ["cat", "dog", "bird"]
SHAPE = [1, 4, 4]
RANGE = [0.0, 255.0]
ROOT = Path(__file__).resolve().parents[1]


# --- models ------------------------------------------------------------------------------------------


def _weights(seed: int = 0, features: int = 16, hidden: int = 8, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "mean": np.float32(100.0),
        "std": np.float32(60.0),
        "w1": rng.normal(size=(features, hidden)).astype(np.float32),
        "b1": rng.normal(size=hidden).astype(np.float32),
        "w2": rng.normal(size=(hidden, classes)).astype(np.float32),
        "b2": rng.normal(size=classes).astype(np.float32),
    }


def reference_logits(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """What the graph computes, in numpy: clip to the range, normalise, flatten, MLP."""
    x = np.clip(np.asarray(x, dtype=np.float32), *RANGE)
    z = ((x - w["mean"]) / w["std"]).reshape(len(x), -1)
    return np.maximum(z @ w["w1"] + w["b1"], 0) @ w["w2"] + w["b2"]


def make_card(**changes: object) -> ModelCard:
    values: dict[str, object] = {
        "input_name": "input",
        "output_name": "logits",
        "input_shape": list(SHAPE),
        "class_labels": list(LABELS),
        "variant": "fp32",
        "input_range": list(RANGE),
        "normalization": {"method": "standard", "folded": True, "clip": True},
    }
    values.update(changes)
    return ModelCard(**values)  # type: ignore[arg-type]


def build_mlp(
    path: Path,
    *,
    card: ModelCard | None = None,
    shape: list[int] = SHAPE,
    seed: int = 0,
    props: dict[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """A raw-input MLP as the exporter writes one (normalisation folded in, clipped to the range), opset 20."""
    features = int(np.prod(shape))
    w = _weights(seed, features=features)
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in w.items()]
    inits += [numpy_helper.from_array(np.float32(RANGE[0]), "lo"), numpy_helper.from_array(np.float32(RANGE[1]), "hi")]
    nodes = [
        helper.make_node("Clip", ["input", "lo", "hi"], ["clipped"]),
        helper.make_node("Sub", ["clipped", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Flatten", ["normed"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    if card is not None:
        helper.set_model_props(model, card_to_props(card))
    if props is not None:
        helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return w


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("models") / "mlp-fp32.onnx"
    return path, build_mlp(path, card=make_card())


def to_ort(onnx_path: Path) -> Path:
    """The ORT-format copy, as the exporter makes it (onnxruntime's own converter)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    convert_onnx_models_to_ort(onnx_path, onnx_path.parent, optimization_styles=[OptimizationStyle.Fixed])
    out = onnx_path.with_suffix(".ort")
    assert out.is_file()
    return out


def samples(n: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, *SHAPE)).astype(np.float32)


# --- loading and predictions ---------------------------------------------------------------------------


def test_predictions_equal_the_numpy_reference(mlp) -> None:
    path, w = mlp
    model = EdgeModel.load(path)
    assert model.input_shape == (1, 4, 4)
    assert model.labels == LABELS
    assert model.has_card and model.card.variant == "fp32"
    x = samples(8)
    logits = model.predict(x)
    assert logits.dtype == np.float32 and logits.shape == (8, 3)
    np.testing.assert_allclose(logits, reference_logits(x, w), rtol=1e-5, atol=1e-4)
    # one sample -> a batch of one; float64 and ints are cast
    np.testing.assert_allclose(model.predict(x[0].astype(np.float64)), logits[:1], rtol=1e-5, atol=1e-4)
    ints = np.round(x).astype(np.int64)
    np.testing.assert_allclose(model.predict(ints), reference_logits(ints, w), rtol=1e-5, atol=1e-4)
    proba = model.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    expected = [LABELS[i] for i in reference_logits(x, w).argmax(axis=1)]
    assert model.classify(x) == expected


def test_top_k_orders_labels_by_probability(mlp) -> None:
    path, w = mlp
    model = EdgeModel.load(path)
    x = samples(5)
    ref = reference_logits(x, w)
    e = np.exp(ref - ref.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    top = model.top_k(x, 2)
    assert len(top) == 5
    for row, pr in zip(top, p, strict=True):
        order = np.argsort(-pr)
        assert [lab for lab, _ in row] == [LABELS[order[0]], LABELS[order[1]]]
        assert row[0][1] == pytest.approx(pr[order[0]], rel=1e-5)
        assert row[0][1] >= row[1][1]
    assert len(model.top_k(x, 10)[0]) == 3  # k beyond the class count: all classes
    with pytest.raises(EdgeInputError, match="k must be"):
        model.top_k(x, 0)


def test_session_is_tuned_for_low_power(mlp) -> None:
    model = EdgeModel.load(mlp[0])
    opts = model.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert EdgeModel.load(mlp[0], threads=2).session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(EdgeModelError, match="threads"):
        EdgeModel.load(mlp[0], threads=0)


def test_torch_export_matches_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    net.eval()
    x = torch.rand(4, *SHAPE) * 255
    path = tmp_path / "torch.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (x,),
            path,
            dynamo=True,
            external_data=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: "batch"},),
        )
    proto = onnx.load(path)
    helper.set_model_props(proto, card_to_props(make_card(input_range=None)))
    onnx.save(proto, path)
    model = EdgeModel.load(path)
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(model.predict(x.numpy()), expected, rtol=1e-5, atol=1e-4)
    assert model.classify(x.numpy()) == [LABELS[i] for i in expected.argmax(axis=1)]


def test_ort_format_loads_and_keeps_the_card(mlp, tmp_path: Path) -> None:
    path, w = mlp
    src = tmp_path / path.name
    src.write_bytes(path.read_bytes())
    ort_path = to_ort(src)
    assert ort_path.read_bytes()[4:8] == b"ORTM"
    model = EdgeModel.load(ort_path)
    assert model.has_card and model.card == EdgeModel.load(path).card
    x = samples(4)
    np.testing.assert_allclose(model.predict(x), reference_logits(x, w), rtol=1e-5, atol=1e-4)
    # the format is read from the file, not its name
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(ort_path.read_bytes())
    assert EdgeModel.load(renamed).classify(x) == model.classify(x)


# --- model file errors ---------------------------------------------------------------------------------


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(EdgeModelError, match=r"nope\.onnx: model file not found"):
        EdgeModel.load(tmp_path / "nope.onnx")
    with pytest.raises(EdgeModelError, match="is a folder"):
        EdgeModel.load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"this is not an onnx model at all", b"\x08\x07" + bytes(range(256)) * 4])
def test_corrupt_or_non_onnx_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(EdgeModelError, match=r"broken\.onnx: not a loadable ONNX or ORT model") as info:
        EdgeModel.load(path)
    assert info.value.__suppress_context__  # no onnxruntime traceback attached
    assert isinstance(info.value, FedtrainError) and isinstance(info.value, ValueError)
    assert info.value.exit_code == 4  # a model error


def test_truncated_model_file(mlp, tmp_path: Path) -> None:
    data = mlp[0].read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgeModelError, match="not a loadable"):
        EdgeModel.load(path)


def test_model_without_card_warns_and_still_runs(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    w = build_mlp(path)
    with pytest.warns(NoCardWarning, match="no fedtrain model card"):
        model = EdgeModel.load(path)
    assert not model.has_card
    assert model.input_shape == (1, 4, 4)
    assert model.labels == ["0", "1", "2"]
    x = samples(3)
    np.testing.assert_allclose(model.predict(x), reference_logits(x, w), rtol=1e-5, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no range check without a card
        model.predict(x * 10)


@pytest.mark.parametrize(
    ("props", "match"),
    [
        ({"fedtrain.format": "not json"}, "not valid JSON"),
        ({"fedtrain.format": '"fedtrain-onnx-card-v0"'}, "format"),
        ({**card_to_props(make_card()), "fedtrain.input_name": '"x"'}, "names input 'x'"),
        ({**card_to_props(make_card()), "fedtrain.input_shape": "[1, 4, 5]"}, "input shape"),
        ({**card_to_props(make_card()), "fedtrain.class_labels": '["a", "b"]'}, "2 class labels"),
        ({k: v for k, v in card_to_props(make_card()).items() if k != "fedtrain.class_labels"}, "incomplete"),
    ],
)
def test_damaged_card_is_a_clear_error(tmp_path: Path, props: dict[str, str], match: str) -> None:
    path = tmp_path / "damaged.onnx"
    build_mlp(path, props=props)
    with pytest.raises(EdgeModelError, match=match) as info:
        EdgeModel.load(path)
    assert "damaged.onnx" in str(info.value)


# --- input checks --------------------------------------------------------------------------------------


def test_wrong_shape_names_expected_and_got(mlp) -> None:
    model = EdgeModel.load(mlp[0])
    with pytest.raises(EdgeInputError, match=r"input shape \(2, 16\) does not match the model: expected \(1, 4, 4\)"):
        model.predict(np.zeros((2, 16), np.float32))
    with pytest.raises(EdgeInputError, match=r"reshape to \(-1, \*\(1, 4, 4\)\)"):
        model.predict(np.zeros((2, 16), np.float32))
    with pytest.raises(EdgeInputError, match=r"\(4, 4\)"):
        model.predict(np.zeros((4, 4), np.float32))
    with pytest.raises(EdgeInputError, match="empty"):
        model.predict(np.zeros((0, 1, 4, 4), np.float32))


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((1, 4, 4), np.complex64),
        np.full((1, 4, 4), "a"),
        np.empty((1, 4, 4), dtype=object),
        np.zeros((1, 4, 4), bool),
    ],
    ids=["complex", "str", "object", "bool"],
)
def test_wrong_dtype_is_an_error(mlp, x: np.ndarray) -> None:
    model = EdgeModel.load(mlp[0])
    with pytest.raises(EdgeInputError, match=f"dtype {x.dtype} is not a real number type"):
        model.predict(x)


def test_ragged_input_is_an_error(mlp) -> None:
    model = EdgeModel.load(mlp[0])
    with pytest.raises(EdgeInputError, match="rectangular"):
        model.predict([[1.0, 2.0], [3.0]])


def test_nan_and_inf_name_count_and_first_index(mlp) -> None:
    model = EdgeModel.load(mlp[0])
    x = samples(3)
    x[1, 0, 2, 3] = np.nan
    x[2, 0, 0, 0] = np.inf
    x[2, 0, 1, 1] = np.nan
    with pytest.raises(EdgeInputError, match=r"3 non-finite values \(2 NaN, 1 inf.*first at index \(1, 0, 2, 3\)"):
        model.predict(x)
    one = samples(1)[0]
    one[0, 3, 1] = -np.inf
    with pytest.raises(EdgeInputError, match=r"1 non-finite values \(0 NaN, 1 inf.*index \(0, 3, 1\)"):
        model.predict(one)
    # float64 beyond float32's range becomes inf in the cast: caught too
    big = samples(1).astype(np.float64)
    big[0, 0, 0, 0] = 1e300
    with pytest.raises(EdgeInputError, match="after the cast to float32"):
        model.predict(big)


def test_values_outside_the_range_warn_and_are_clipped(mlp) -> None:
    path, w = mlp
    model = EdgeModel.load(path)
    x = samples(2)
    x[0, 0, 0, 0] = -5.0
    x[1, 0, 3, 3] = 400.0
    x[1, 0, 3, 2] = 300.0
    with pytest.warns(InputRangeWarning, match=r"3 input values lie outside .*\[0\.0, 255\.0\] \(1 below, 2 above"):
        logits = model.predict(x)
    np.testing.assert_allclose(logits, reference_logits(np.clip(x, *RANGE), w), rtol=1e-5, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(samples(2))  # inside the range: silent


# --- the predict command -------------------------------------------------------------------------------


def run_predict(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The predict subcommand through an argparse parser like the fedtrain CLI's, with its error handling."""
    parser = argparse.ArgumentParser(prog="fedtrain")
    add_predict_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["predict", *argv])
    try:
        code = args.func(args)
    except FedtrainError as err:
        print(f"error: {err}", file=sys.stderr)
        code = err.exit_code
    out, err_text = capsys.readouterr()
    return code, out, err_text


def test_predict_npz_with_ground_truth(mlp, tmp_path: Path, capsys) -> None:
    path, w = mlp
    x = samples(10)
    pred = reference_logits(x, w).argmax(axis=1)
    y = pred.copy()
    y[:3] = (y[:3] + 1) % 3  # three wrong on purpose
    np.savez(tmp_path / "in.npz", x=x, y=y)
    code, out, _ = run_predict([str(path), str(tmp_path / "in.npz"), "--top-k", "2"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 11
    assert lines[0].split()[:1] == ["0"] and lines[0].split()[1] == LABELS[pred[0]]
    assert lines[0].count(" 0.") + lines[0].count(" 1.0") == 2  # two labels with probabilities
    assert sum("(wrong)" in line for line in lines) == 3
    assert lines[-1] == "accuracy 0.7000 (7/10)"
    code, out, _ = run_predict([str(path), str(tmp_path / "in.npz"), "--json", "--top-k", "3"], capsys)
    doc = json.loads(out)
    assert doc["accuracy"] == pytest.approx(0.7) and doc["samples"] == 10
    assert [p["top_k"][0]["label"] for p in doc["predictions"]] == [LABELS[i] for i in pred]
    assert all(len(p["top_k"]) == 3 for p in doc["predictions"])
    assert doc["predictions"][0]["true"] == LABELS[y[0]]


def test_predict_npz_single_array_and_string_labels(mlp, tmp_path: Path, capsys) -> None:
    path, w = mlp
    x = samples(4)
    np.savez(tmp_path / "only.npz", features=x)
    code, out, _ = run_predict([str(path), str(tmp_path / "only.npz")], capsys)
    assert code == 0 and "accuracy" not in out and len(out.splitlines()) == 4
    truth = np.array([LABELS[i] for i in reference_logits(x, w).argmax(axis=1)])
    np.savez(tmp_path / "named.npz", x=x, y=truth)
    code, out, _ = run_predict([str(path), str(tmp_path / "named.npz")], capsys)
    assert out.splitlines()[-1] == "accuracy 1.0000 (4/4)"
    np.savez(tmp_path / "two.npz", a=x, b=x)
    code, _, err = run_predict([str(path), str(tmp_path / "two.npz")], capsys)
    assert code == 3 and err.startswith("error: ") and "'x'" in err and len(err.splitlines()) == 1
    np.savez(tmp_path / "bad_y.npz", x=x, y=np.array(["zebra"] * 4))
    code, _, err = run_predict([str(path), str(tmp_path / "bad_y.npz")], capsys)
    assert code == 3 and "zebra" in err


def test_predict_csv_with_label_column(mlp, tmp_path: Path, capsys) -> None:
    path, w = mlp
    x = samples(5)
    pred = reference_logits(x, w).argmax(axis=1)
    rows = ["label," + ",".join(f"p{i}" for i in range(16))]
    rows += [f"{LABELS[p]}," + ",".join(f"{v:.6f}" for v in xi.ravel()) for p, xi in zip(pred, x, strict=True)]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")
    code, out, _ = run_predict([str(path), str(tmp_path / "in.csv")], capsys)
    assert code == 0
    assert [line.split()[1] for line in out.splitlines()[:-1]] == [LABELS[p] for p in pred]
    assert out.splitlines()[-1] == "accuracy 1.0000 (5/5)"
    # no header, no labels
    (tmp_path / "plain.csv").write_text(
        "\n".join(rows[1:]).replace("cat,", "").replace("dog,", "").replace("bird,", "")
    )
    code, out, _ = run_predict([str(path), str(tmp_path / "plain.csv")], capsys)
    assert code == 0 and len(out.splitlines()) == 5 and "accuracy" not in out
    (tmp_path / "narrow.csv").write_text("a,b\n1,2\n")
    code, _, err = run_predict([str(path), str(tmp_path / "narrow.csv")], capsys)
    assert code == 3 and "2 feature columns; the model takes 16" in err


def _png(path: Path, pixels: np.ndarray, mode: str = "L") -> None:
    from PIL import Image

    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(path)


def test_predict_one_png_and_a_folder_of_pngs(mlp, tmp_path: Path, capsys) -> None:
    pytest.importorskip("PIL")
    path, w = mlp
    x = np.round(samples(4)).astype(np.uint8)
    pred = reference_logits(x.astype(np.float32), w).argmax(axis=1)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, xi in enumerate(x):
        _png(flat / f"img{i}.png", xi[0])
    code, out, _ = run_predict([str(path), str(flat / "img2.png"), "--top-k", "3"], capsys)
    assert code == 0 and out.split()[:2] == ["img2.png", LABELS[pred[2]]]
    code, out, _ = run_predict([str(path), str(flat)], capsys)
    assert [line.split()[:2] for line in out.splitlines()] == [[f"img{i}.png", LABELS[p]] for i, p in enumerate(pred)]
    # <label>/ subfolders are the ground truth; an RGB, larger image is converted to grey and resized
    classed = tmp_path / "classed"
    for i, p in enumerate(pred):
        (classed / LABELS[p]).mkdir(parents=True, exist_ok=True)
        _png(classed / LABELS[p] / f"img{i}.png", x[i, 0])
    (classed / LABELS[0]).mkdir(exist_ok=True)
    _png(classed / LABELS[0] / "big.png", np.full((8, 8, 3), 200), mode="RGB")
    code, out, _ = run_predict([str(path), str(classed), "--json"], capsys)
    doc = json.loads(out)
    assert doc["samples"] == 5
    big = next(p for p in doc["predictions"] if p["sample"].endswith("big.png"))
    expected_big = LABELS[int(reference_logits(np.full((1, 1, 4, 4), 200.0, np.float32), w).argmax())]
    assert big["top_k"][0]["label"] == expected_big
    assert doc["correct"] == 4 + (expected_big == LABELS[0])


def test_predict_rgb_model_reads_rgb_channels(tmp_path: Path, capsys) -> None:
    pytest.importorskip("PIL")
    path = tmp_path / "rgb.onnx"
    w = build_mlp(path, card=make_card(input_shape=[3, 2, 2]), shape=[3, 2, 2])
    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
    _png(tmp_path / "c.png", img, mode="RGB")
    code, out, _ = run_predict([str(path), str(tmp_path / "c.png"), "--json"], capsys)
    assert code == 0
    chw = img.transpose(2, 0, 1)[None].astype(np.float32)
    ref = reference_logits(chw, w)
    e = np.exp(ref - ref.max())
    assert json.loads(out)["predictions"][0]["top_k"][0]["probability"] == pytest.approx(float(e.max() / e.sum()))


def test_predict_errors_are_one_line(mlp, tmp_path: Path, capsys) -> None:
    path = mlp[0]
    code, _, err = run_predict([str(tmp_path / "none.onnx"), str(tmp_path / "x.npz")], capsys)
    assert code == 4 and err.count("\n") == 1 and "model file not found" in err
    code, _, err = run_predict([str(path), str(tmp_path / "x.npz")], capsys)
    assert code == 3 and "input not found" in err
    (tmp_path / "x.txt").write_text("1")
    code, _, err = run_predict([str(path), str(tmp_path / "x.txt")], capsys)
    assert code == 3 and "'.txt'" in err
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    code, _, err = run_predict([str(path), str(tmp_path / "bad.npz")], capsys)
    assert code == 3 and "not a readable .npz" in err
    (tmp_path / "bad.png").write_bytes(b"not a png")
    code, _, err = run_predict([str(path), str(tmp_path / "bad.png")], capsys)
    assert code == 3 and "not a readable image" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_predict([str(path), str(tmp_path / "empty")], capsys)
    assert code == 3 and "no images found" in err
    code, _, err = run_predict([str(path), str(tmp_path / "x.txt"), "--top-k", "0"], capsys)
    assert code == 3 and "--top-k" in err
    x = samples(2)
    x[0, 0, 0, 0] = 1000.0
    np.savez(tmp_path / "far.npz", x=x)
    code, _, err = run_predict([str(path), str(tmp_path / "far.npz")], capsys)
    assert code == 0 and err.startswith("warning: 1 input values lie outside")
    assert issubclass(EdgeInputError, EdgeError)


def test_predict_is_wired_into_the_fedtrain_command(mlp, tmp_path: Path, capsys) -> None:
    from fedtrain import cli

    parser = cli.build_parser()
    if "predict" not in parser._subparsers._group_actions[0].choices:  # type: ignore[union-attr]
        pytest.skip("fedtrain/cli.py does not register `predict` yet")
    np.savez(tmp_path / "in.npz", x=samples(3))
    assert cli.main(["predict", str(mlp[0]), str(tmp_path / "in.npz")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert cli.main(["predict", str(tmp_path / "none.onnx"), str(tmp_path / "in.npz")]) == 4


# --- no torch on the device ----------------------------------------------------------------------------

_NO_TORCH_SCRIPT = """
import contextlib, io, json, sys
sys.path.insert(0, {site!r})
result = {{}}
for name in ("torch", "flwr", "sklearn", "onnx"):
    try:
        __import__(name)
    except ImportError:
        result[name] = "missing"
    else:
        result[name] = "importable"
from fedtrain.edge import EdgeModel
import numpy as np
x = np.load({npz!r})["x"]
result["api"] = EdgeModel.load({model!r}).classify(x)
result["ort"] = EdgeModel.load({ort_model!r}).classify(x)
from fedtrain.edge.__main__ import main
for key, argv in (("cli", [{npz!r}, "--json"]), ("png", [{png!r}])):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result[key + "_code"] = main(["predict", {model!r}, *argv])
    result[key] = buf.getvalue()
result["loaded"] = sorted(m for m in ("torch", "flwr", "sklearn", "onnx", "matplotlib") if m in sys.modules)
print(json.dumps(result))
"""


def _site_without_torch(dest: Path) -> Path:
    """A folder holding only numpy, onnxruntime, Pillow and the fedtrain package (as symlinks)."""
    import importlib.util

    dest.mkdir()
    site = Path(np.__file__).resolve().parents[1]
    for name in ("numpy", "onnxruntime", "PIL"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        pkg = Path(next(iter(spec.submodule_search_locations)))
        (dest / name).symlink_to(pkg)
    for libs in site.glob("*.libs"):  # the shared libraries auditwheel vendors next to a package (numpy.libs)
        if libs.name.split(".")[0] in ("numpy", "onnxruntime", "pillow"):
            (dest / libs.name).symlink_to(libs)
    (dest / "fedtrain").symlink_to(ROOT / "fedtrain")
    return dest


def test_runs_in_a_process_that_cannot_import_torch(mlp, tmp_path: Path) -> None:
    path, w = mlp
    x = samples(6)
    np.savez(tmp_path / "in.npz", x=x, y=reference_logits(x, w).argmax(axis=1))
    src = tmp_path / path.name
    src.write_bytes(path.read_bytes())
    ort_model = to_ort(src)
    png = tmp_path / "one.png"
    try:
        _png(png, np.round(x[0, 0]))
    except ImportError:
        pytest.skip("Pillow not installed")
    site = _site_without_torch(tmp_path / "site")
    script = _NO_TORCH_SCRIPT.format(
        site=str(site), model=str(path), ort_model=str(ort_model), npz=str(tmp_path / "in.npz"), png=str(png)
    )
    # -I: no PYTHONPATH, no user site; -S: not even the venv's site-packages (where torch is)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] == result["flwr"] == result["sklearn"] == result["onnx"] == "missing"
    expected = [LABELS[i] for i in reference_logits(x, w).argmax(axis=1)]
    assert result["api"] == expected and result["ort"] == expected
    assert result["cli_code"] == 0 and result["png_code"] == 0
    assert result["png"].split()[:2] == ["one.png", expected[0]]
    doc = json.loads(result["cli"])
    assert [p["top_k"][0]["label"] for p in doc["predictions"]] == expected
    assert doc["accuracy"] == 1.0
    assert result["loaded"] == []


@pytest.mark.slow
def test_documented_edge_install_in_a_fresh_venv(mlp, tmp_path: Path) -> None:
    """The install line of docs/edge.md, from PyPI, into a venv without torch (minutes; needs the network)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(ROOT)], check=True, timeout=600)
    req = ROOT / "deploy" / "edge-requirements.txt"
    subprocess.run([py, "-m", "pip", "install", "-q", "-r", str(req)], check=True, timeout=600)
    x = samples(3)
    np.savez(tmp_path / "in.npz", x=x)
    probe = "import importlib.util as u; assert u.find_spec('torch') is None and u.find_spec('flwr') is None"
    subprocess.run([py, "-c", probe], check=True, cwd=tmp_path)
    proc = subprocess.run(
        [py, "-m", "fedtrain.edge", "predict", str(mlp[0]), str(tmp_path / "in.npz")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[1] for line in proc.stdout.splitlines()] == [
        LABELS[i] for i in reference_logits(x, mlp[1]).argmax(axis=1)
    ]


def test_bench_measures_single_sample_latency(mlp, capsys) -> None:
    from fedtrain.edge.__main__ import main
    from fedtrain.edge.bench import measure_latency

    stats = measure_latency(EdgeModel.load(mlp[0]), calls=20, warmup=2)
    assert 0 < stats["min_s"] <= stats["median_s"] <= stats["p90_s"] < 1.0
    assert main(["bench", str(mlp[0]), "--calls", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["calls"] == 10 and out["median_us"] > 0
    assert main(["bench", str(mlp[0]) + ".missing"]) == 4


def test_quantized_and_fp16_variants_run_like_fp32(mlp, tmp_path: Path) -> None:
    from onnxconverter_common import float16
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, w = mlp
    x = samples(6)
    ref = reference_logits(x, w)
    q8 = tmp_path / "mlp-int8-dynamic.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(path, q8, weight_type=QuantType.QInt8)
        half = float16.convert_float_to_float16(onnx.load(path), keep_io_types=True)
    onnx.save(half, tmp_path / "mlp-fp16.onnx")
    assert any(n.op_type.startswith(("MatMulInteger", "DynamicQuantize")) for n in onnx.load(q8).graph.node)
    for file, tol in ((q8, 0.5), (tmp_path / "mlp-fp16.onnx", 0.05)):
        model = EdgeModel.load(file)
        assert model.has_card and model.labels == LABELS  # the quantizer and the converter keep metadata_props
        logits = model.predict(x)
        assert logits.dtype == np.float32
        np.testing.assert_allclose(logits, ref, atol=tol * float(np.abs(ref).max()))
