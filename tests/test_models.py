import pytest
import torch
from opacus.validators import ModuleValidator

from fedtrain.config import load_config
from fedtrain.errors import ModelError
from fedtrain.models import ACTIVATIONS, INITIALIZERS, build_model


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_models_forward_for_every_activation(model, activation):
    cfg = load_config(overrides={"model": model, "activation": activation, "dropout": 0.1}).model
    net = build_model(cfg, (1, 8, 8), 10)
    assert net(torch.randn(5, 1, 8, 8)).shape == (5, 10)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_models_are_opacus_compatible(model):
    net = build_model(load_config(overrides={"model": model}).model, (1, 8, 8), 10)
    assert ModuleValidator.validate(net, strict=False) == []


def test_hidden_layers_are_addressable_one_by_one():
    net = build_model(load_config(overrides="hidden-sizes=32,16,8").model, (64,), 3)
    assert [b.linear.out_features for b in net.hidden] == [32, 16, 8]
    assert net.features(torch.randn(2, 64), depth=2).shape == (2, 16)


def test_residual_skips_only_equal_widths():
    net = build_model(load_config(overrides="hidden-sizes=16,16 residual=true").model, (8,), 2)
    assert [b.residual for b in net.hidden] == [False, True]


@pytest.mark.parametrize("init", sorted(INITIALIZERS))
def test_init_schemes_are_seeded_and_distinct(init):
    cfg = load_config(overrides={"init": init}).model
    a, b = build_model(cfg, (64,), 10, seed=1), build_model(cfg, (64,), 10, seed=1)
    assert torch.equal(a.hidden[0].linear.weight, b.hidden[0].linear.weight)
    other_seed = build_model(cfg, (64,), 10, seed=2)
    assert not torch.equal(a.hidden[0].linear.weight, other_seed.hidden[0].linear.weight)
    for other in sorted(set(INITIALIZERS) - {init}):  # each scheme draws differently from every other
        w = build_model(load_config(overrides={"init": other}).model, (64,), 10, seed=1).hidden[0].linear.weight
        assert not torch.allclose(a.hidden[0].linear.weight, w)
    if init != "default":
        assert torch.count_nonzero(a.hidden[0].linear.bias) == 0


def test_orthogonal_init_gives_orthogonal_rows():
    net = build_model(load_config(overrides="init=orthogonal activation=tanh hidden-sizes=32").model, (64,), 10)
    w = net.hidden[0].linear.weight
    assert torch.allclose(w @ w.T, torch.eye(32), atol=1e-5)


def test_cnn_on_tabular_data_is_refused():
    with pytest.raises(ModelError, match="use model='mlp'"):
        build_model(load_config(overrides="model=cnn").model, (13,), 3)
