"""The ONNX client's local training equals the torch/Opacus client's on the same batches and noise."""

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
from fedtrain.edge.train.accountant import EdgeAccountant, calibrate_noise, rdp_epsilon
from fedtrain.edge.train.graph import graph_name, load_graph
from fedtrain.edge.train.optim import OPTIMIZERS
from fedtrain.edge.train.sampling import Draws, OsDraws, SeededDraws
from fedtrain.edge.train.trainer import DPSettings, LocalData, balanced_class_weight, train
from fedtrain.export.gradient_graph import publish_gradient_graphs
from fedtrain.models import build_model
from fedtrain.privacy.accountant import ClientAccountant
from fedtrain.privacy.calibration import calibrate_noise as torch_calibrate
from fedtrain.privacy.dp_sgd import dp_train_local
from fedtrain.train import train_local
from fedtrain.train.losses import class_weight_vector

SHAPE, K, N = (1, 8, 8), 10, 150
SMOOTHING = 0.1
# Not the generic defaults, so the DP defaults (hidden-sizes, activation, batch-size) leave them as they are.
DP = {"dp-level": "sample", "dp-max-grad-norm": 1.0}
BASE = {"label-smoothing": SMOOTHING, "hidden-sizes": "64,32", "activation": "tanh", "batch-size": 30}
# The graphs are the MLP's: under sample-level DP an unset model takes the linear DP default. model=mlp is the
# generic default, which counts as set only as an override, not in ``base``.
MLP = {"model": "mlp"}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(base=BASE)
    out = tmp_path_factory.mktemp("graphs")
    kinds = ("clipped", "per-sample", "batch")
    publish_gradient_graphs(build_model(cfg.model, SHAPE, K), cfg, SHAPE, K, out, batch=32, kinds=kinds)
    return out


def _data(seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, N)
    y[y == 3] = 4  # a class absent: class weights of a client that does not hold every class
    return ArrayDataset(rng.normal(size=(N, *SHAPE)).astype(np.float32), y, tuple(str(i) for i in range(K)))


class Recording(Draws):
    """Seeded draws that keep what they drew, to replay them into the torch path."""

    def __init__(self, seed: int) -> None:
        self.inner = SeededDraws(seed)
        self.batches: list[list[int]] = []
        self.noise: list[np.ndarray] = []

    def uniform(self, size: int) -> np.ndarray:
        return self.inner.uniform(size)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        z = self.inner.normal(shape, std)
        self.noise.append(z)
        return z

    def poisson(self, n: int, q: float) -> np.ndarray:
        idx = super().poisson(n, q)
        self.batches.append(idx.tolist())
        return idx


class Replay(Draws):
    """The torch DataLoader's shuffled orders, given to the device trainer."""

    def __init__(self, orders: list[np.ndarray]) -> None:
        self.orders = list(orders)

    def uniform(self, size: int) -> np.ndarray:
        raise AssertionError("no uniforms without DP")

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        raise AssertionError("no noise without DP")

    def permutation(self, n: int) -> np.ndarray:
        return self.orders.pop(0)


def _torch_orders(cfg, seed: int) -> list[np.ndarray]:
    """The orders run_local's loader yields (same loader, same seed), one per epoch."""
    from fedtrain.train.loop import make_loader

    index = ArrayDataset(np.arange(N, dtype=np.float32).reshape(N, 1), np.zeros(N, np.int64), ("0",))
    loader = make_loader(index, cfg.train.batch_size, shuffle=True, seed=seed)
    return [
        np.concatenate([x[:, 0].numpy().astype(np.int64) for x, _ in loader]) for _ in range(cfg.train.local_epochs)
    ]


@contextlib.contextmanager
def _replay_into_opacus(rec: Recording) -> Iterator[None]:
    """Patch Opacus' Poisson sampler and noise to give the device's draws, in the same order."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    batches, noise = list(rec.batches), list(rec.noise)

    def sampler_iter(self):  # one epoch: the sampler's ``steps`` batches
        for _ in range(self.steps):
            yield batches.pop(0)

    def fake_noise(std, reference, generator=None, secure_mode=False):
        z = noise.pop(0)
        assert tuple(z.shape) == tuple(reference.shape)
        return torch.from_numpy(z.copy())

    with (
        mock.patch.object(UniformWithReplacementSampler, "__iter__", sampler_iter),
        mock.patch("opacus.optimizers.optimizer._generate_noise", fake_noise),
    ):
        yield
    assert not batches and not noise  # every draw was used, none left over


CASES = [
    {"optimizer": name, "momentum": 0.9, "weight-decay": 0.01 if name in ("sgd", "adamw", "momentum") else 0.0}
    for name in sorted(OPTIMIZERS)
]


@pytest.mark.parametrize("dp", [True, False], ids=["dp", "no-dp"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c["optimizer"])
def test_one_local_epoch_equals_the_torch_client(graphs: Path, case: dict, dp: bool) -> None:
    extra: dict = {"l1": 1e-4} if case["optimizer"] in ("adam", "momentum") else {}
    if case["optimizer"] in ("adam", "momentum", "rmsprop"):  # under DP only with the opt-in (unaccounted)
        extra.update({"class-weights": "balanced", "dp-allow-unaccounted-statistics": True})
    cfg = load_config(
        base={**BASE, "learning-rate": 0.05, "local-epochs": 1, **case, **extra, **(DP if dp else {})}, overrides=MLP
    )
    # Adaptive optimizers at rates that suit them: at 0.05 RMSprop's first steps are ~10x the rate (chaotic), and
    # Adam's first steps are lr * sign(g), so a float32 rounding in an almost-zero gradient moves a weight by up to
    # 2 lr; at Adam's usual 1e-3 that stays far below 1e-5.
    lr = {"sgd": 0.05, "momentum": 0.05, "nesterov": 0.05, "adam": 0.001, "adamw": 0.001}.get(case["optimizer"], 0.005)
    data, seed, mu, sigma = _data(), 17, 0.01, 0.8
    model = build_model(cfg.model, SHAPE, K, seed=5)
    start = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    cw = balanced_class_weight(data.y, K) if cfg.train.class_weights == "balanced" else None
    if cw is not None:
        torch_cw = class_weight_vector(cfg.train, data.y, K)
        assert torch_cw is not None
        np.testing.assert_allclose(cw, torch_cw.numpy(), rtol=1e-6)
    # DP: clipping inside the graph (what the client uses); the numpy clipping of per-sample gradients for two
    graph = load_graph(graphs, graph_name("finetune", -1, dp, clipped=case["optimizer"] not in ("sgd", "adam")))
    params = {k: v.copy() for k, v in start.items()}
    local = LocalData(data.x, data.y, cw)
    if dp:
        rec = Recording(seed)
        ours = train(graph, params, local, cfg.train, lr=lr, draws=rec, trainable=list(start),
                     dp=DPSettings(sigma, 1.0), proximal_mu=mu)  # fmt: skip
        with _replay_into_opacus(rec):
            model, theirs, _ = dp_train_local(
                model, data, cfg, lr=lr, seed=seed, noise_multiplier=sigma, proximal_mu=mu
            )
        assert len(rec.batches) == 5 and len(rec.noise) == 6 * 5  # noise on every step, an empty batch's too
    else:
        replay = Replay(_torch_orders(cfg, seed))
        ours = train(graph, params, local, cfg.train, lr=lr, draws=replay, trainable=list(start), proximal_mu=mu)
        theirs = train_local(model, data, cfg.train, lr=lr, seed=seed, proximal_mu=mu)
    diffs = {k: float(np.abs(params[k] - p.detach().numpy()).max()) for k, p in model.named_parameters()}
    worst = max(diffs.values())
    moved = max(float(np.abs(params[k] - start[k]).max()) for k in start)
    assert worst < 1e-5, diffs
    assert moved > 5e-4  # the weights did change
    assert ours.loss == pytest.approx(theirs.loss, abs=1e-5)
    assert (ours.num_examples, ours.steps) == (theirs.num_examples, theirs.steps)


def test_frozen_layers_stay_and_are_left_out_of_the_clipping(graphs: Path) -> None:
    cfg = load_config(base={**BASE, "local-epochs": 1, "dp-level": "sample"}, overrides=MLP)
    data, seed = _data(1), 3
    model = build_model(cfg.model, SHAPE, K, seed=2)
    start = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    trainable = [k for k in start if not k.startswith("hidden.0.")]
    params = {k: v.copy() for k, v in start.items()}
    rec = Recording(seed)
    train(load_graph(graphs, "finetune-clipped"), params, LocalData(data.x, data.y), cfg.train, lr=0.05,
          draws=rec, trainable=trainable, dp=DPSettings(1.0, 1.0))  # fmt: skip
    for p in model.hidden[0].parameters():
        p.requires_grad_(False)
    with _replay_into_opacus(rec):
        model, _, _ = dp_train_local(model, data, cfg, lr=0.05, seed=seed, noise_multiplier=1.0)
    for k, p in model.named_parameters():
        np.testing.assert_allclose(params[k], p.detach().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(params["hidden.0.linear.weight"], start["hidden.0.linear.weight"])


def _small(n: int) -> ArrayDataset:
    full = _data(2)
    return ArrayDataset(full.x[:n], full.y[:n], full.classes)


def _empty_seed(n: int, q: float, steps: int, *, every: bool) -> int:
    """A seed of the device's draws whose Poisson batches are all empty (``every``) or mix empty and not."""
    for seed in range(10_000):
        draws = SeededDraws(seed)
        sizes = [len(draws.poisson(n, q)) for _ in range(steps)]
        if (not any(sizes)) if every else (0 in sizes and any(sizes)):
            return seed
    raise AssertionError("no such seed")


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_an_empty_poisson_batch_steps_as_the_torch_client(graphs: Path, optimizer: str) -> None:
    # 6 records at batch-size 2: q = 1/3, 3 steps an epoch; the seed's 9 batches include empty and non-empty ones.
    extra = {"optimizer": optimizer, "momentum": 0.9, "weight-decay": 0.01, "l1": 1e-3}
    cfg = load_config(
        base={**BASE, **DP, **extra, "batch-size": 2, "local-epochs": 3, "learning-rate": 0.05}, overrides=MLP
    )
    data, sigma, mu = _small(6), 0.8, 0.01
    seed = _empty_seed(6, 1 / 3, 9, every=False)
    lr = 0.001 if optimizer == "adam" else 0.05
    model = build_model(cfg.model, SHAPE, K, seed=5)
    start = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    params = {k: v.copy() for k, v in start.items()}
    rec = Recording(seed)
    graph = load_graph(graphs, graph_name("finetune", -1, True, clipped=optimizer != "sgd"))
    ours = train(graph, params, LocalData(data.x, data.y), cfg.train, lr=lr, draws=rec, trainable=list(start),
                 dp=DPSettings(sigma, 1.0), proximal_mu=mu)  # fmt: skip
    assert 0 in [len(b) for b in rec.batches] and len(rec.noise) == 9 * len(start)  # noise on every step
    with _replay_into_opacus(rec):
        model, theirs, _ = dp_train_local(model, data, cfg, lr=lr, seed=seed, noise_multiplier=sigma, proximal_mu=mu)
    for k, p in model.named_parameters():
        np.testing.assert_allclose(params[k], p.detach().numpy(), rtol=0, atol=1e-5)
    assert ours.loss == pytest.approx(theirs.loss, abs=1e-5)
    assert (ours.num_examples, ours.steps) == (theirs.num_examples, theirs.steps) == (6, 9)


def test_an_empty_poisson_batch_moves_the_weights_by_the_noise_alone(graphs: Path) -> None:
    # 3 records at batch-size 1: q = 1/3 and Opacus' expected batch size int(3 q) = 1; every batch of the seed empty.
    cfg = load_config(base={**BASE, **DP, "optimizer": "sgd", "momentum": 0.0, "weight-decay": 0.0,
                            "batch-size": 1, "local-epochs": 1}, overrides=MLP)  # fmt: skip
    data, lr = _small(3), 0.05
    seed = _empty_seed(3, 1 / 3, 3, every=True)
    model = build_model(cfg.model, SHAPE, K, seed=5)
    start = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    params = {k: v.copy() for k, v in start.items()}
    rec = Recording(seed)
    result = train(load_graph(graphs, "finetune-clipped"), params, LocalData(data.x, data.y), cfg.train, lr=lr,
                   draws=rec, trainable=list(start), dp=DPSettings(1.0, 1.0))  # fmt: skip
    assert result.steps == 3 and result.loss == 0.0 and len(rec.noise) == 3 * len(start)
    for i, k in enumerate(start):
        noise = sum(rec.noise[s * len(start) + i] for s in range(3))
        np.testing.assert_allclose(params[k], start[k] - np.float32(lr) * noise, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "history",
    [[(1.1, 0.25, 40)], [(0.8, 0.01, 1000), (1.5, 0.1, 30)], [(3.0, 1.0, 5)], [(0.5, 0.3, 7)], [(5.0, 0.002, 20000)]],
)
def test_epsilon_equals_the_torch_clients(history: list[tuple[float, float, int]]) -> None:
    ours, theirs = EdgeAccountant("rdp"), ClientAccountant("rdp")
    for segment in history:
        ours.record(*segment)
        theirs.record(*segment)
    assert ours.state_dict() == theirs.state_dict()
    assert abs(ours.epsilon(1e-5) - theirs.epsilon(1e-5)) < 1e-9
    assert abs(rdp_epsilon(history, 1e-6) - theirs.epsilon(1e-6)) < 1e-9


def test_the_device_accountant_uses_the_torch_clients_orders_and_sigma_ceiling() -> None:
    from fedtrain.edge.train import accountant
    from fedtrain.privacy import accountant as torch_accountant
    from fedtrain.privacy import calibration

    assert accountant.RDP_ORDERS == torch_accountant.RDP_ORDERS and accountant.MAX_SIGMA == calibration.MAX_SIGMA
    acc = EdgeAccountant("rdp", [(1.0, 0.1, 5), (1.2, 0.1, 3)])
    assert EdgeAccountant.from_state_dict(acc.state_dict()) == acc


def test_calibration_gives_the_torch_clients_sigma() -> None:
    for target, segments in ((3.0, [(0.25, 200)]), (1.0, [(0.1, 50), (0.25, 400)])):
        ours = calibrate_noise(target_epsilon=target, delta=1e-5, segments=segments)
        assert ours == torch_calibrate(target_epsilon=target, delta=1e-5, segments=segments, mechanism="rdp")


def test_prv_is_refused_on_the_device() -> None:
    from fedtrain.edge.errors import EdgeModelError

    with pytest.raises(EdgeModelError, match="dp-accountant='prv'"):
        EdgeAccountant("prv")


def test_os_draws_are_gaussian_and_fresh() -> None:
    d = OsDraws()
    z = d.normal((200_000,), 2.0)
    assert z.dtype == np.float32 and abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 2.0) < 0.03
    assert not np.array_equal(d.normal((8,), 1.0), d.normal((8,), 1.0))
    idx = d.poisson(100_000, 0.25)
    assert abs(len(idx) / 100_000 - 0.25) < 0.01
