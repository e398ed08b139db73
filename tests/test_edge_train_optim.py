"""The ONNX client's numpy optimizers against torch.optim on the same gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtrain.config import load_config
from fedtrain.edge.errors import EdgeModelError
from fedtrain.edge.train.optim import OPTIMIZERS, build_optimizer
from fedtrain.train.optimizers import OPTIMIZERS as TORCH_OPTIMIZERS
from fedtrain.train.optimizers import build_optimizer as torch_optimizer


def test_the_device_has_every_optimizer_of_the_registry() -> None:
    assert set(OPTIMIZERS) == set(TORCH_OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_matches_torch_optim_over_steps(name: str, weight_decay: float) -> None:
    cfg = load_config(base={"optimizer": name, "momentum": 0.9, "weight-decay": weight_decay}).train
    rng = np.random.default_rng(0)
    start = {"w": rng.normal(size=(5, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    tensors = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in start.items()}
    ref = torch_optimizer(list(tensors.values()), cfg, 0.01)
    params = {k: v.copy() for k, v in start.items()}
    ours = build_optimizer(name, 0.01, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for _ in range(20):
        grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in start.items()}
        for k, t in tensors.items():
            t.grad = torch.from_numpy(grads[k].copy())
        ref.step()
        ours.step(params, grads)
    for k, t in tensors.items():
        np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=0, atol=1e-6)
        assert not np.allclose(params[k], start[k])  # it did move


def test_unknown_optimizer_and_nesterov_without_momentum_are_refused() -> None:
    with pytest.raises(EdgeModelError, match="optimizer='lbfgs'"):
        build_optimizer("lbfgs", 0.1, momentum=0.9, weight_decay=0.0)
    with pytest.raises(EdgeModelError, match="momentum > 0"):
        build_optimizer("nesterov", 0.1, momentum=0.0, weight_decay=0.0)
