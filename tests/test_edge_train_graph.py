"""Gradient graphs (server side) against torch: per-sample and batch gradients, padding, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from fedtrain.config import load_config
from fedtrain.edge.errors import EdgeModelError
from fedtrain.edge.train.graph import graph_name, load_graph
from fedtrain.errors import ExportError
from fedtrain.export.gradient_graph import build_gradient_graph, check_traceable, graph_spec, publish_gradient_graphs
from fedtrain.models import build_model

SHAPE, K, B = (1, 8, 8), 10, 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    cfg = load_config(base={"label-smoothing": 0.1, "class-weights": "balanced"})
    model = build_model(cfg.model, SHAPE, K, seed=3)
    out = tmp_path_factory.mktemp("graphs")
    manifest = publish_gradient_graphs(model, cfg, SHAPE, K, out, batch=B)
    return cfg, model, out, manifest


def _batch(n: int, seed: int = 0, size: int = B) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.zeros((size, *SHAPE), np.float32)
    y = np.zeros(size, np.int64)
    x[:n] = rng.normal(size=(n, *SHAPE))
    y[:n] = rng.integers(0, K, n)
    cw = rng.uniform(0.5, 2.0, K).astype(np.float32)
    return x, y, cw


def _params(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.named_parameters()}


def test_graph_is_plain_onnx_with_its_spec(setup) -> None:
    _, model, out, manifest = setup
    assert set(manifest["graphs"]) == {"finetune-clipped", "finetune-per-sample", "finetune-batch", "forward-batch"}
    proto = onnx.load(out / manifest["graphs"]["finetune-per-sample"]["file"])
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}  # default domain: any onnxruntime build runs it
    spec = graph_spec(proto)
    assert spec.per_sample and spec.batch == B + 12 and spec.label_smoothing == 0.1  # room for Poisson batches
    assert spec.params == {k: list(v.shape) for k, v in model.named_parameters()}


def test_per_sample_gradients_match_torch_func_with_padding(setup) -> None:
    _, model, out, _ = setup
    graph = load_graph(out, graph_name("finetune", -1, True))
    size = graph.spec.batch
    n = 11  # padded rows
    x, y, cw = _batch(n, size=size)
    mask = np.zeros(size, np.float32)
    mask[:n] = np.linspace(0.5, 1.5, n)
    loss, grads = graph.run(_params(model), {"x": x, "y": y, "mask": mask, "class_weight": cw})
    params = {k: v.detach() for k, v in model.named_parameters()}

    def per_sample(p, xi, yi):
        logits = torch.func.functional_call(model, p, (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0), weight=torch.from_numpy(cw), label_smoothing=0.1,
                               reduction="none")[0]  # fmt: skip

    ref = torch.func.vmap(torch.func.grad_and_value(per_sample), in_dims=(None, 0, 0))(
        params, torch.from_numpy(x[:n]), torch.from_numpy(y[:n])
    )
    m = torch.from_numpy(mask[:n])
    worst = 0.0
    for name, g in grads.items():
        assert g.shape == (size, *params[name].shape)
        want = (ref[0][name] * m.view(-1, *[1] * params[name].dim())).numpy()
        worst = max(worst, float(np.abs(g[:n] - want).max()))
        assert not g[n:].any()  # padded rows give exactly zero
    assert worst < 1e-6
    assert loss == pytest.approx(float((ref[1] * m).sum()), abs=1e-5)


def test_clipped_graph_equals_clipping_the_per_sample_gradients(setup) -> None:
    """Ghost clipping inside the graph gives Opacus' clip of the per-sample gradients, over the trainable ones."""
    _, model, out, _ = setup
    per, clipped = load_graph(out, "finetune-per-sample"), load_graph(out, "finetune-clipped")
    size = per.spec.batch
    n = 20
    x, y, cw = _batch(n, seed=2, size=size)
    mask = np.zeros(size, np.float32)
    mask[:n] = 1.0
    data = {"x": x, "y": y, "mask": mask, "class_weight": cw}
    names = list(per.spec.params)
    trainable = names[2:]  # the first layer frozen
    flags = np.array([k in trainable for k in names], np.float32)
    params = _params(model)
    _, grads = per.run(params, data)
    _, sums = clipped.run(params, {**data, "max_grad_norm": np.array(0.3, np.float32), "trainable": flags})
    norms = np.sqrt(sum(np.square(grads[k].reshape(size, -1)).sum(1) for k in trainable))
    factor = np.minimum(0.3 / (norms + 1e-6), 1.0)
    assert (factor[:n] < 1).any()  # some samples were clipped
    for k in trainable:
        np.testing.assert_allclose(sums[k], np.tensordot(factor, grads[k], axes=1), rtol=0, atol=1e-6)


def test_batch_gradient_matches_torch_autograd(setup) -> None:
    _, model, out, _ = setup
    graph = load_graph(out, graph_name("finetune", -1, False))
    n = 9
    x, y, cw = _batch(n, seed=1)
    mask = np.zeros(B, np.float32)
    mask[:n] = 1.0 / cw[y[:n]].sum()  # the weighted mean nn.CrossEntropyLoss takes
    loss, grads = graph.run(_params(model), {"x": x, "y": y, "mask": mask, "class_weight": cw})
    model.zero_grad()
    crit = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(cw), label_smoothing=0.1)
    ref = crit(model(torch.from_numpy(x[:n])), torch.from_numpy(y[:n]))
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), abs=1e-6)
    for name, p in model.named_parameters():
        assert p.grad is not None
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=0, atol=1e-6)


def test_device_refuses_a_changed_graph_or_another_model(setup, tmp_path: Path) -> None:
    _, model, out, manifest = setup
    for f in out.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    graph = load_graph(tmp_path, "finetune-batch")
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters()}
    graph.check(shapes, SHAPE, K)
    with pytest.raises(EdgeModelError, match=r"head\.weight of shape"):
        graph.check({**shapes, "head.weight": (3, 64)}, SHAPE, K)
    with pytest.raises(EdgeModelError, match="inputs"):
        graph.check(shapes, (1, 4, 4), K)
    path = tmp_path / manifest["graphs"]["finetune-batch"]["file"]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(EdgeModelError, match="sha256"):
        load_graph(tmp_path, "finetune-batch")
    with pytest.raises(EdgeModelError, match="has no graph"):
        load_graph(tmp_path, "denoising-layer0-batch")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"model": "cnn"}, "model='cnn'"),
        ({"dropout": 0.2}, "dropout=0.2"),
        ({"loss": "gce"}, "loss='gce'"),
        ({"activation": "prelu"}, "activation='prelu'"),
    ],
)
def test_unsupported_model_or_objective_is_refused_by_name(overrides: dict, key: str) -> None:
    with pytest.raises(ExportError, match=key):
        check_traceable(load_config(base=overrides), "finetune")


def test_rbm_is_refused_with_the_reason() -> None:
    with pytest.raises(ExportError, match="contrastive-divergence"):
        check_traceable(load_config(base={}), "rbm")


def test_build_refuses_a_model_that_is_not_the_mlp() -> None:
    cfg = load_config(base={})
    with pytest.raises(ExportError, match="MLP"):
        build_gradient_graph(torch.nn.Linear(64, 10), cfg, SHAPE, K, per_sample=True, batch=4)


@pytest.mark.slow  # traces four graphs: about 15 s on 2 shared cores
def test_publish_command_writes_the_manifest_and_checksums(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedtrain.export.gradient_graph import main

    assert main([str(tmp_path / "g"), "--run-config", "hidden-sizes='8' dp-level='sample'"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    kinds = ("finetune-clipped", "finetune-per-sample", "finetune-batch", "forward-batch")
    assert {name for name, _, _ in lines} == set(kinds)
    for name, _, digest in lines:
        load_graph(tmp_path / "g", name)  # the device accepts each: checksum, format, opset
        assert len(digest) == 64


@pytest.mark.parametrize("activation", ["gelu", "sigmoid", "leaky_relu", "elu"])
def test_clipped_graph_of_a_residual_mlp_equals_clipped_torch_func_gradients(activation: str) -> None:
    """Every activation but prelu, with residual blocks: the DP graph's sums are Opacus' clip of torch.func's."""
    cfg = load_config(base={"hidden-sizes": "16,16", "residual": True, "activation": activation})
    model = build_model(cfg.model, SHAPE, K, seed=4)
    proto = build_gradient_graph(model, cfg, SHAPE, K, per_sample=True, batch=12, clipped=True)
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x, y, cw = _batch(12, seed=3, size=12)
    params = {k: v.detach() for k, v in model.named_parameters()}
    feed = {**_params(model), "x": x, "y": y, "mask": np.ones(12, np.float32), "class_weight": cw,
            "max_grad_norm": np.array(0.2, np.float32), "trainable": np.ones(len(params), np.float32)}  # fmt: skip
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))

    def per_sample(p, xi, yi):
        logits = torch.func.functional_call(model, p, (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0), weight=torch.from_numpy(cw), reduction="none")[0]

    grads = torch.func.vmap(torch.func.grad(per_sample), in_dims=(None, 0, 0))(
        params, torch.from_numpy(x), torch.from_numpy(y)
    )
    norms = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in grads.values()))
    factor = (0.2 / (norms + 1e-6)).clamp(max=1.0)
    assert (factor < 1).any()
    for name, g in grads.items():
        want = torch.einsum("i,i...->...", factor, g).numpy()
        np.testing.assert_allclose(out[f"grad.{name}"], want, rtol=0, atol=1e-6, err_msg=name)
