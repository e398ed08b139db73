import itertools
import math

import numpy as np
import pytest
import torch

from fedtrain.config import load_config
from fedtrain.data import ArrayDataset, build_federated_data
from fedtrain.models import build_model
from fedtrain.train import OPTIMIZERS, SCHEDULES, evaluate, learning_rate, train_local
from fedtrain.train.losses import build_criterion, proximal_term


def _client_data():
    cfg = load_config()
    return build_federated_data(cfg.data, cfg.partition, 0).clients[0].train


LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.05, "rmsprop": 0.001, "adam": 0.005, "adamw": 0.005}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_lowers_the_loss(name):
    data = _client_data()
    cfg = load_config(overrides={"optimizer": name, "learning-rate": LR[name], "local-epochs": 1})
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    before = evaluate(model, data).loss
    train_local(model, data, cfg.train, lr=LR[name], seed=0)
    assert evaluate(model, data).loss < before


@pytest.mark.parametrize("batch_size", [0, 1, 16])
def test_gradient_descent_forms_set_by_batch_size(batch_size):
    data = _client_data()
    cfg = load_config(overrides={"optimizer": "sgd", "batch-size": batch_size, "local-epochs": 1})
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    result = train_local(model, data, cfg.train, lr=0.01 if batch_size == 1 else 0.1, seed=0)
    n = len(data.y)
    assert result.steps == {0: 1, 1: n, 16: math.ceil(n / 16)}[batch_size]


def test_schedules():
    def lrs(schedule, **kw):
        cfg = load_config(overrides={"lr-schedule": schedule, "learning-rate": 1.0, **kw}).train
        return [learning_rate(cfg, r, 10) for r in range(1, 11)]

    assert set(SCHEDULES) == {"constant", "step", "exponential", "cosine", "warmup"}
    assert lrs("constant") == [1.0] * 10
    assert lrs("step", **{"lr-step-rounds": 4, "lr-gamma": 0.5})[:9] == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25]
    assert lrs("exponential", **{"lr-gamma": 0.5})[2] == 0.25
    cos = lrs("cosine")
    assert cos[0] == 1.0 and all(a > b for a, b in itertools.pairwise(cos)) and cos[-1] > 0
    assert lrs("warmup", **{"warmup-rounds": 3})[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_gradient_clipping_bounds_the_update():
    data = _client_data()
    base = load_config(overrides="optimizer=sgd batch-size=0 local-epochs=1")
    clipped = load_config(overrides="optimizer=sgd batch-size=0 local-epochs=1 clip-grad-norm=0.001")
    moves = []
    for cfg in (base, clipped):
        model = build_model(cfg.model, data.input_shape, data.num_classes)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        train_local(model, data, cfg.train, lr=1.0, seed=0)
        moves.append(float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm()))
    assert moves[1] <= 0.001 + 1e-6 < moves[0]


def test_proximal_term_pulls_towards_global_weights():
    data = _client_data()
    cfg = load_config(overrides="local-epochs=3")
    drift = []
    for mu in (0.0, 10.0):
        model = build_model(cfg.model, data.input_shape, data.num_classes)
        start = [p.detach().clone() for p in model.parameters()]
        train_local(model, data, cfg.train, lr=0.05, seed=0, proximal_mu=mu)
        drift.append(float(proximal_term(model, start).detach()))
    assert drift[1] < drift[0]


def test_l1_and_l2_penalties_shrink_weights():
    data = _client_data()
    norms = []
    for extra in ("", "l1=0.01", "weight-decay=0.1"):
        cfg = load_config(overrides="local-epochs=3 " + extra)
        model = build_model(cfg.model, data.input_shape, data.num_classes)
        train_local(model, data, cfg.train, lr=0.05, seed=0)
        norms.append(float(model.hidden[0].linear.weight.detach().abs().sum()))
    assert norms[1] < norms[0] and norms[2] < norms[0]


def test_balanced_class_weights_and_label_smoothing():
    cfg = load_config(overrides="class-weights=balanced label-smoothing=0.1").train
    labels = np.array([0] * 9 + [1])
    crit = build_criterion(cfg, labels, 3)
    assert crit.weight.tolist() == pytest.approx([10 / 18, 5.0, 1.0])
    assert crit.label_smoothing == 0.1


def test_evaluate_counts_accuracy():
    class Const(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 1.0]]).repeat(len(x), 1)

    ds = ArrayDataset(np.zeros((4, 2), np.float32), np.array([1, 1, 0, 1]), ("a", "b"))
    assert evaluate(Const(), ds).accuracy == 0.75


def test_weighted_sampler_balances_the_classes_it_draws():
    import numpy as np

    from fedtrain.data import ArrayDataset
    from fedtrain.train import make_loader

    y = np.array([0] * 90 + [1] * 10, dtype=np.int64)
    ds = ArrayDataset(np.zeros((100, 4), dtype=np.float32), y, ("a", "b"))
    drawn = np.concatenate([b[1].numpy() for e in range(20) for b in make_loader(ds, 10, shuffle=True, seed=e,
                                                                                   class_balanced=True)])  # fmt: skip
    assert 0.4 < (drawn == 1).mean() < 0.6  # uniform sampling would give 0.1
    plain = np.concatenate([b[1].numpy() for b in make_loader(ds, 10, shuffle=True)])
    assert (plain == 1).mean() == 0.1
