"""Under DP-SGD an empty Poisson batch is a step: noise on a zero sum, over the expected batch size.

The accountant counts every Poisson step, empty ones included, so every counted step must release noise (Opacus
steps on the zero-length batches its DPDataLoader yields). Here, on 3 records at batch-size 1 (q = 1/3), seeds
whose batches are all empty move the weights by the noise alone, and mixed seeds match between the trainers.
The edge trainer's cases are in tests/test_edge_train.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import torch

from fedtrain.config import load_config
from fedtrain.data import ArrayDataset
from fedtrain.models import build_model
from fedtrain.privacy import dp_train_local
from fedtrain.train.batched import ClientJob, DPSettings, _poisson_batches, train_clients

LR, SIGMA = 0.1, 1.0
SGD = {"optimizer": "sgd", "momentum": 0.0, "weight-decay": 0.0}


def _cfg(**extra: object):
    base = {"dp-level": "sample", "batch-size": 1, "local-epochs": 1, "hidden-sizes": "4", **SGD}
    return load_config(overrides={**base, **extra})


def _data(n: int = 3) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.normal(size=(n, 5)).astype(np.float32), np.arange(n) % 2, ("a", "b"))


def _sizes(seed: int, n: int, batch: int, epochs: int = 1) -> list[int]:
    """The Poisson batch sizes Opacus draws for noise seed ``seed`` (tests/test_vectorised.py checks the draw)."""
    job = ClientJob(x=np.zeros((n, 1), np.float32), y=np.zeros(n, np.int64), seed=0, class_weight=torch.ones(2),
                    noise_seed=seed, noise_multiplier=0.0)  # fmt: skip
    cfg = _cfg(**{"batch-size": batch, "local-epochs": epochs}).train
    batches, _ = _poisson_batches(job, cfg, {"w": torch.Size([1])}, DPSettings(1.0))
    return [len(b) for b in batches]


def _seed(predicate, n: int = 3, batch: int = 1, epochs: int = 1) -> int:
    return next(s for s in range(10_000) if predicate(_sizes(s, n, batch, epochs)))


ALL_EMPTY = _seed(lambda sizes: not any(sizes))
MIXED = _seed(lambda sizes: 0 in sizes and any(sizes), n=6, batch=2, epochs=2)  # empty and non-empty steps


@contextmanager
def _opacus_noise() -> Iterator[list[torch.Tensor]]:
    """Every Gaussian draw Opacus adds (hooks/ew and ghost optimizers), in order."""
    import opacus.optimizers.optimizer as plain
    import opacus.optimizers.optimizer_fast_gradient_clipping as ghost

    drawn: list[torch.Tensor] = []
    real = plain._generate_noise

    def recorded(std, reference, generator=None, secure_mode=False):
        z = real(std, reference, generator, secure_mode)
        drawn.append(z.clone())
        return z

    with mock.patch.object(plain, "_generate_noise", recorded), mock.patch.object(ghost, "_generate_noise", recorded):
        yield drawn


@pytest.mark.parametrize(
    "extra",
    [{"dp-grad-sample-mode": m} for m in ("hooks", "ghost", "ew")]
    + [{"dp-grad-sample-mode": "hooks", "dp-max-physical-batch-size": 1}],
    ids=["hooks", "ghost", "ew", "physical-batches"],
)
def test_the_torch_client_steps_on_noise_alone_for_an_empty_batch(extra: dict) -> None:
    cfg = _cfg(**extra)
    data = _data()
    model = build_model(cfg.model, data.input_shape, data.num_classes, seed=1)
    start = [p.detach().clone() for p in model.parameters()]
    with _opacus_noise() as drawn:
        trained, result, plan = dp_train_local(model, data, cfg, lr=LR, seed=ALL_EMPTY, noise_multiplier=SIGMA)
    params = list(trained.parameters())
    assert result.steps == plan.steps_per_call == 3 and len(drawn) == 3 * len(params)  # a noisy step each
    assert result.loss == 0.0  # no record seen (not NaN)
    ebs = 1  # Opacus' expected batch size int(3 * 1/3)
    for i, (p, p0) in enumerate(zip(params, start, strict=True)):
        noise = sum(drawn[s * len(params) + i] for s in range(3))
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.detach(), p0 - LR * noise / ebs, rtol=0, atol=1e-6)
    assert all(not torch.equal(p, p0) for p, p0 in zip(params, start, strict=True))


def test_weight_decay_and_penalties_apply_on_an_empty_step() -> None:
    cfg = _cfg(**{"weight-decay": 0.1, "l1": 0.01, "dp-grad-sample-mode": "hooks"})
    data = _data()
    model = build_model(cfg.model, data.input_shape, data.num_classes, seed=1)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    with _opacus_noise() as drawn:
        trained, _, _ = dp_train_local(model, data, cfg, lr=LR, seed=ALL_EMPTY, noise_multiplier=SIGMA)
    names = list(expected)
    for s in range(3):  # SGD with coupled weight decay, then the decoupled L1 step on weight matrices
        for i, n in enumerate(names):
            p = expected[n] - LR * (drawn[s * len(names) + i] + 0.1 * expected[n])
            expected[n] = p - LR * 0.01 * torch.sign(p) if n.endswith("weight") and p.dim() > 1 else p
    for n, p in trained.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=0, atol=1e-6)


def _job(data: ArrayDataset, seed: int) -> ClientJob:
    return ClientJob(x=data.x, y=data.y, seed=seed, class_weight=torch.ones(2), noise_seed=seed, noise_multiplier=SIGMA)


def test_the_vectorised_trainer_steps_on_noise_alone_for_an_empty_batch() -> None:
    cfg = _cfg()
    data = _data()
    model = build_model(cfg.model, data.input_shape, data.num_classes, seed=1)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shapes = {n: p.shape for n, p in model.named_parameters()}
    batches, noise = _poisson_batches(_job(data, ALL_EMPTY), cfg.train, shapes, DPSettings(1.0))
    assert [len(b) for b in batches] == [0, 0, 0] and len(noise) == 3  # the noise of every counted step
    [result] = train_clients(model, start, [_job(data, ALL_EMPTY)], cfg.train, lr=LR, dp=DPSettings(1.0))
    assert result.loss == 0.0
    for n, p in result.state.items():
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, start[n] - LR * sum(step[n] for step in noise), rtol=0, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_the_vectorised_trainer_equals_the_torch_client_with_empty_batches(optimizer: str) -> None:
    cfg = _cfg(**{"batch-size": 2, "local-epochs": 2, "optimizer": optimizer, "momentum": 0.9, "weight-decay": 0.01,
                  "dp-grad-sample-mode": "hooks"})  # fmt: skip
    data = _data(6)
    assert 0 in _sizes(MIXED, 6, 2, 2)
    lr = 0.01 if optimizer == "adam" else LR
    model = build_model(cfg.model, data.input_shape, data.num_classes, seed=1)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    [batched] = train_clients(model, start, [_job(data, MIXED)], cfg.train, lr=lr, dp=DPSettings(1.0))
    trained, result, _ = dp_train_local(model, data, cfg, lr=lr, seed=MIXED, noise_multiplier=SIGMA)
    for n, p in trained.state_dict().items():
        torch.testing.assert_close(batched.state[n], p, rtol=0, atol=1e-5)
    assert batched.loss == pytest.approx(result.loss, rel=1e-6)
