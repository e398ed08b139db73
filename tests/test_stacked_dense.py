"""Ghost clipping on stacked clients gives the clipped per-sample sums that ``vmap(grad)`` gives.

:func:`fedtrain.train.stacked_dense.ghost_private_step` replaces the per-sample gradient tensor of
``fedtrain.train.batched._per_sample_private_step`` for MLPs and the linear model; both are compared here on the
same stacked parameters and padded batches (tolerance: float rounding of a different summation order),
and end to end against the ClientApp in ``tests/test_vectorised.py``.
"""

from __future__ import annotations

import pytest
import torch

from fedtrain.config import load_config
from fedtrain.models import build_model
from fedtrain.train.batched import DPSettings, _per_sample_private_step
from fedtrain.train.stacked_dense import dense_layout, ghost_private_step

K, B, FEATURES, CLASSES = 3, 5, 12, 4


def _case(overrides: dict, frozen: frozenset[str] = frozenset()):
    cfg = load_config(overrides=overrides)
    module = build_model(cfg.model, (FEATURES,), CLASSES, seed=0)
    gen = torch.Generator().manual_seed(1)
    params = {
        n: t.detach() + 0.3 * torch.randn(K, *t.shape, generator=gen)  # clients with different weights
        for n, t in module.named_parameters() if n not in frozen
    }  # fmt: skip
    fixed = {n: t.detach() for n, t in module.named_parameters() if n in frozen}
    x = 3 * torch.randn(K, B, FEATURES, generator=gen)  # large inputs: some samples clipped, some not
    y = torch.randint(0, CLASSES, (K, B), generator=gen)
    mask = torch.ones(K, B)
    mask[1, 3:] = 0  # a client with padding
    mask[2] = 0  # an empty Poisson batch
    weight = torch.ones(K, CLASSES)
    return cfg, module, params, fixed, (x, y, mask, weight)


@pytest.mark.parametrize(
    "overrides",
    [
        {"hidden-sizes": "8,8", "activation": "tanh"},
        {"hidden-sizes": "8,8", "residual": True, "activation": "gelu", "label-smoothing": 0.1},
        {"hidden-sizes": "6", "loss": "gce"},
        {"model": "linear"},
    ],
    ids=["tanh", "residual-gelu-smoothing", "gce", "linear"],
)
@pytest.mark.parametrize("max_grad_norm", [0.05, 1.0, 100.0])
def test_ghost_sums_equal_the_per_sample_gradients_sums(overrides, max_grad_norm):
    cfg, module, params, fixed, batch = _case(overrides)
    layout = dense_layout(module)
    assert layout is not None
    want, want_loss = _per_sample_private_step(module, fixed, cfg.train, DPSettings(max_grad_norm))(params, *batch)
    got, got_loss = ghost_private_step(layout, fixed, cfg.train, max_grad_norm)(params, *batch)
    assert list(got) == list(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    assert all(float(t[2].abs().max()) == 0.0 for t in got.values())  # the empty batch sums to zero


def test_frozen_layers_are_outside_the_clipping_norm():
    frozen = frozenset({"hidden.0.linear.weight", "hidden.0.linear.bias"})
    cfg, module, params, fixed, batch = _case({"hidden-sizes": "8,8"}, frozen)
    layout = dense_layout(module)
    assert layout is not None
    want, _ = _per_sample_private_step(module, fixed, cfg.train, DPSettings(0.1))(params, *batch)
    got, _ = ghost_private_step(layout, fixed, cfg.train, 0.1)(params, *batch)
    assert set(got) == set(params)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides", [{"model": "cnn", "cnn-channels": "4", "cnn-groups": 2}, {"hidden-sizes": "8", "activation": "prelu"}]
)
def test_models_with_other_parameters_keep_the_per_sample_path(overrides):
    cfg = load_config(overrides=overrides)
    shape = (1, 8, 8) if cfg.model.model == "cnn" else (FEATURES,)
    assert dense_layout(build_model(cfg.model, shape, CLASSES, seed=0)) is None
