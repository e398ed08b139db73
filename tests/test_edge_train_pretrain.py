"""Pretraining on the ONNX client (autoencoder, denoising) equals the torch/Opacus client's; RBM refused."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from fedtrain.config import load_config
from fedtrain.data import ArrayDataset
from fedtrain.edge.train.graph import graph_name, load_graph
from fedtrain.edge.train.sampling import Draws, SeededDraws
from fedtrain.edge.train.trainer import DPSettings, LocalData, train
from fedtrain.errors import ExportError
from fedtrain.export.gradient_graph import build_gradient_graph, publish_gradient_graphs
from fedtrain.federation.onnx_client import _settings
from fedtrain.models import build_model
from fedtrain.pretrain import AUX_PREFIX, pretrain_local

SHAPE, K, N, LAYER = (1, 8, 8), 10, 120, 1
BASE = {"hidden-sizes": "32,16", "activation": "tanh", "pretrain-batch-size": 24, "pretrain-epochs": 1,
        "corruption": 0.3, "pretrain-optimizer": "momentum", "momentum": 0.9}  # fmt: skip


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(base=BASE)
    out = tmp_path_factory.mktemp("graphs")
    model = build_model(cfg.model, SHAPE, K)
    phases = [("autoencoder", LAYER), ("denoising", LAYER)]
    publish_gradient_graphs(model, cfg, SHAPE, K, out, batch=24, phases=phases, kinds=("clipped", "batch"))
    return out


class Recording(Draws):
    """Seeded draws that keep the Poisson batches, the noise and the corruption uniforms, to replay into torch."""

    def __init__(self, seed: int) -> None:
        self.inner = SeededDraws(seed)
        self.batches: list[list[int]] = []
        self.noise: list[np.ndarray] = []
        self.uniforms: list[np.ndarray] = []

    def uniform(self, size: int) -> np.ndarray:
        u = self.inner.uniform(size)
        self.uniforms.append(u)
        return u

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        z = self.inner.normal(shape, std)
        self.noise.append(z)
        return z

    def poisson(self, n: int, q: float) -> np.ndarray:
        idx = np.flatnonzero(self.inner.uniform(n) < q)
        self.batches.append(idx.tolist())
        return idx


@contextlib.contextmanager
def _replay(rec: Recording) -> Iterator[None]:
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    batches, noise, uniforms = list(rec.batches), list(rec.noise), list(rec.uniforms)

    def sampler_iter(self):
        for _ in range(self.steps):
            yield batches.pop(0)

    def fake_noise(std, reference, generator=None, secure_mode=False):
        return torch.from_numpy(noise.pop(0).copy())

    def fake_rand_like(v, *args, **kwargs):  # the denoising objective's corruption draw
        return torch.from_numpy(uniforms.pop(0).reshape(v.shape).astype(np.float32))

    with (
        mock.patch.object(UniformWithReplacementSampler, "__iter__", sampler_iter),
        mock.patch("opacus.optimizers.optimizer._generate_noise", fake_noise),
        mock.patch("fedtrain.pretrain.methods.denoising.torch.rand_like", fake_rand_like),
    ):
        yield
    assert not batches and not noise and not uniforms


@pytest.mark.parametrize("method", ["autoencoder", "denoising"])
def test_one_dp_pretraining_epoch_equals_the_opacus_client(graphs: Path, method: str) -> None:
    cfg = load_config(base={**BASE, "pretrain-method": method, "dp-level": "sample", "plan": "pretrain,finetune"})
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.normal(size=(N, *SHAPE)).astype(np.float32), rng.integers(0, K, N), tuple("0123456789"))
    model = build_model(cfg.model, SHAPE, K, seed=1)
    aux = {AUX_PREFIX + "weight": torch.randn(32, 16) * 0.1, AUX_PREFIX + "bias": torch.zeros(32)}
    params = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    params.update({k: v.numpy().copy() for k, v in aux.items()})
    start = {k: v.copy() for k, v in params.items()}
    graph = load_graph(graphs, graph_name(method, LAYER, True, clipped=True))
    rec = Recording(5)
    settings = _settings(cfg, "pretrain")
    ours = train(graph, params, LocalData(data.x, corruption=cfg.pretrain.corruption), settings, lr=0.05, draws=rec,
                 trainable=list(graph.spec.params), dp=DPSettings(0.7, cfg.privacy.dp_max_grad_norm))  # fmt: skip
    with _replay(rec):
        arrays, theirs = pretrain_local(model, LAYER, aux, data, cfg, seed=5, lr=0.05, noise_multiplier=0.7)
    for k, v in arrays.items():
        np.testing.assert_allclose(params[k], v.numpy(), rtol=0, atol=1e-5, err_msg=k)
    moved = np.abs(params[f"hidden.{LAYER}.linear.weight"] - start[f"hidden.{LAYER}.linear.weight"]).max()
    assert moved > 1e-4  # the layer trained
    for k in (f"hidden.{LAYER - 1}.linear.weight", "head.weight"):
        np.testing.assert_array_equal(params[k], start[k])  # the frozen layer below and the head did not
    assert ours.loss == pytest.approx(theirs.loss, rel=1e-5) and ours.steps == theirs.steps


def test_pretraining_batch_gradient_matches_torch(graphs: Path) -> None:
    """The batch graph's gradient of the mean reconstruction loss equals torch autograd of LayerObjective."""
    from fedtrain.pretrain.objectives import LayerObjective

    cfg = load_config(base={**BASE, "pretrain-method": "autoencoder"})
    model = build_model(cfg.model, SHAPE, K, seed=2)
    objective = LayerObjective(model, LAYER, cfg)
    graph = load_graph(graphs, graph_name("autoencoder", LAYER, False))
    size, n = graph.spec.batch, 17
    rng = np.random.default_rng(1)
    x = np.zeros((size, *SHAPE), np.float32)
    x[:n] = rng.normal(size=(n, *SHAPE))
    mask = np.zeros(size, np.float32)
    mask[:n] = 1.0 / n
    params = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params.update({AUX_PREFIX + k: v.detach().numpy() for k, v in objective.method.aux_state().items()})
    loss, grads = graph.run(params, {"x": x, "mask": mask})
    ref = objective(torch.from_numpy(x[:n])).mean()
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), rel=1e-5)
    torch_grads = {f"hidden.{LAYER}.linear.weight": objective.method.block.linear.weight.grad,
                   f"hidden.{LAYER}.linear.bias": objective.method.block.linear.bias.grad,
                   AUX_PREFIX + "weight": objective.method.head.weight.grad,
                   AUX_PREFIX + "bias": objective.method.head.bias.grad}  # fmt: skip
    for k, g in torch_grads.items():
        assert g is not None
        np.testing.assert_allclose(grads[k], g.numpy(), rtol=0, atol=1e-5, err_msg=k)


def test_rbm_gradient_graph_is_refused() -> None:
    cfg = load_config(base={**BASE, "pretrain-method": "rbm", "plan": "pretrain,finetune"})
    with pytest.raises(ExportError, match="contrastive-divergence"):
        build_gradient_graph(build_model(cfg.model, SHAPE, K), cfg, SHAPE, K, per_sample=True, batch=8,
                             objective="rbm", layer=0)  # fmt: skip
