"""Contracts every registry entry keeps, parametrised over the registries themselves (like torch's ``optim_db``).

A new entry in any registry below is tested here without an edit: the parameter lists are read
from the registries when the tests are collected.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from opacus import GradSampleModule, PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from fedtrain.aggregation.strategies import STRATEGIES, build_strategy
from fedtrain.config import load_config
from fedtrain.config.loader import flat_keys
from fedtrain.data import load_digits
from fedtrain.data.partition import PARTITIONERS, partition
from fedtrain.errors import ConfigError
from fedtrain.models.zoo import MODELS, build_model
from fedtrain.pretrain.methods import METHODS
from fedtrain.pretrain.objectives import LayerObjective
from fedtrain.privacy.accountant import ACCOUNTANTS, ClientAccountant, epsilon_of
from fedtrain.registry import Registry, RegistryNames
from fedtrain.runtime.grid import InProcessGrid
from fedtrain.train.losses import LOSSES, build_criterion
from fedtrain.train.optimizers import OPTIMIZERS, build_optimizer
from fedtrain.train.schedules import SCHEDULES, learning_rate

# Every registry helper R owns, by its "module:ATTR" (as the schema names it) and the keys that select from it.
REGISTRIES: dict[str, tuple[Registry, tuple[str, ...]]] = {
    "fedtrain.train.optimizers:OPTIMIZERS": (OPTIMIZERS, ("optimizer", "pretrain-optimizer")),
    "fedtrain.train.schedules:SCHEDULES": (SCHEDULES, ("lr-schedule",)),
    "fedtrain.train.losses:LOSSES": (LOSSES, ("loss",)),
    "fedtrain.aggregation.strategies:STRATEGIES": (STRATEGIES, ("strategy",)),
    "fedtrain.pretrain.methods:METHODS": (METHODS, ("pretrain-method",)),
    "fedtrain.privacy.accountant:ACCOUNTANTS": (ACCOUNTANTS, ("dp-accountant",)),
    "fedtrain.data.partition:PARTITIONERS": (PARTITIONERS, ("partitioner",)),
    "fedtrain.models.zoo:MODELS": (MODELS, ("model",)),
}


def _cfg(**overrides: object):
    return load_config(overrides={k.replace("_", "-"): v for k, v in overrides.items()})


# --- optimizers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_lowers_a_least_squares_and_a_logistic_loss(name):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=gen)
    w_true = torch.randn(5, generator=gen)
    problems = {
        "least-squares": (x @ w_true, lambda z, t: ((z - t) ** 2).mean()),
        "logistic": ((x @ w_true > 0).float(), torch.nn.functional.binary_cross_entropy_with_logits),
    }
    for label, (target, loss_fn) in problems.items():
        w = torch.nn.Parameter(torch.zeros(5))
        optimizer = build_optimizer([w], _cfg(optimizer=name).train, lr=0.01)
        losses = []
        for _ in range(30):
            optimizer.zero_grad()
            loss = loss_fn(x @ w, target)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        final = float(loss_fn(x @ w.detach(), target))
        assert math.isfinite(final) and final < 0.95 * losses[0], (label, losses[0], final)


def test_nesterov_without_momentum_is_a_config_error_even_past_the_loader():
    tc = dataclasses.replace(_cfg(optimizer="nesterov").train, momentum=0.0)
    with pytest.raises(ConfigError, match="momentum"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], tc, lr=0.1)


# --- schedules ---------------------------------------------------------------------------------------------------

WARMS_UP = {"warmup"}  # schedules whose definition starts below the base rate


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_gives_positive_finite_rates_at_most_the_base(name):
    base, rounds = 0.2, 12
    tc = _cfg(lr_schedule=name, learning_rate=base).train
    rates = [learning_rate(tc, r, rounds) for r in range(1, rounds + 1)]
    assert all(math.isfinite(r) and 0 < r <= base * (1 + 1e-12) for r in rates), rates
    if name in WARMS_UP:
        assert rates[0] < base
    else:
        assert rates[0] == pytest.approx(base)


def test_warm_up_names_are_registered():
    assert WARMS_UP <= set(SCHEDULES)


# --- losses ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [{}, {"label_smoothing": 0.1, "class_weights": "balanced"}], ids=["plain", "mixed"])
@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_finite_non_negative_and_falls_as_the_true_logit_rises(name, variant):
    labels = np.array([0, 1, 2, 2, 1, 2])
    criterion = build_criterion(_cfg(loss=name, **variant).train, labels, 4)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(len(labels), 4, generator=gen, requires_grad=True)
    y = torch.from_numpy(labels)
    loss = criterion(logits, y)
    value = float(loss.detach())
    assert loss.shape == () and math.isfinite(value) and value >= 0
    loss.backward()
    assert (logits.grad[torch.arange(len(y)), y] < 0).all()  # raising the true logit lowers the loss
    better = logits.detach().clone()
    better[torch.arange(len(y)), y] += 2.0
    assert float(criterion(better, y)) < value
    # Opacus' ghost clipping reads per-sample losses by setting reduction to "none".
    criterion.reduction = "none"
    per_sample = criterion(logits.detach(), y)
    assert per_sample.shape == (len(y),) and (per_sample >= 0).all()


@pytest.mark.parametrize("variant", [{}, {"label_smoothing": 0.1, "class_weights": "balanced"}], ids=["plain", "mixed"])
@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_takes_the_same_step_under_opacus_ghost_clipping(name, variant):
    """With no noise and no effective clipping, a DP step (ghost mode, per-sample losses) is the plain step."""
    labels = np.array([0] * 16 + [1] * 10 + [2] * 6)
    criterion = build_criterion(_cfg(loss=name, **variant).train, labels, 3)
    torch.manual_seed(0)
    x, y = torch.randn(len(labels), 4), torch.from_numpy(labels)
    private, plain = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    plain.load_state_dict(private.state_dict())
    step = torch.optim.SGD(plain.parameters(), lr=1.0)
    criterion(plain(x), y).backward()
    step.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, optimizer, loss_fn, loader = PrivacyEngine(accountant="rdp").make_private(
            module=private, optimizer=torch.optim.SGD(private.parameters(), lr=1.0),
            data_loader=DataLoader(TensorDataset(x, y), batch_size=len(y)), criterion=criterion,
            noise_multiplier=0.0, max_grad_norm=1e6, poisson_sampling=False, grad_sample_mode="ghost",
        )  # fmt: skip
        xb, yb = next(iter(loader))
        optimizer.zero_grad()
        loss_fn(module(xb), yb).backward()
        optimizer.step()
    assert torch.allclose(private.weight, plain.weight, atol=1e-6)
    assert torch.allclose(private.bias, plain.bias, atol=1e-6)


def test_gce_interpolates_cross_entropy_and_mae():
    logits, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 3
    p_true = torch.softmax(logits, 1)[torch.arange(8), y]
    ce = torch.nn.functional.cross_entropy(logits, y)
    near_ce = build_criterion(_cfg(loss="gce", gce_q=1e-4).train, y.numpy(), 3)(logits, y)
    mae = build_criterion(_cfg(loss="gce", gce_q=1.0).train, y.numpy(), 3)(logits, y)
    assert float(near_ce) == pytest.approx(float(ce), rel=1e-3)
    assert float(mae) == pytest.approx(float((1 - p_true).mean()), rel=1e-6)


# --- strategies --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_aggregates_three_train_replies(name):
    cfg = _cfg(strategy=name, num_clients=3, min_clients=3)
    strategy = build_strategy(cfg)
    gen = np.random.default_rng(0)
    global_arrays = {"w": torch.from_numpy(gen.normal(size=(4, 3)).astype(np.float32)), "b": torch.zeros(4)}
    grid = InProcessGrid(ClientApp(), 3, cfg.to_flat())
    messages = list(strategy.configure_train(1, ArrayRecord({k: v.clone() for k, v in global_arrays.items()}),
                                             ConfigRecord({}), grid))  # fmt: skip
    assert len(messages) == 3
    replies = []
    for i, msg in enumerate(messages):
        # Every client moves the model the same way, by a different amount.
        local = {k: v + (i + 1) * 0.1 for k, v in global_arrays.items()}
        content = RecordDict({"arrays": ArrayRecord(local), "metrics": MetricRecord({"num-examples": 10 * (i + 1),
                              "dp-weight": 1, "train_loss": 1.0 / (i + 1)})})  # fmt: skip
        replies.append(Message(content, reply_to=msg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arrays, _metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    out = {k: a.numpy() for k, a in arrays.items()}
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in global_arrays.items()}
    for k, v in out.items():
        assert np.isfinite(v).all()
        assert (v > global_arrays[k].numpy()).all(), f"{name} did not follow three clients that all moved {k} up"


# --- pretraining methods -----------------------------------------------------------------------------------------


def _digits() -> torch.Tensor:
    data = load_digits()
    return torch.from_numpy(data.x / 16.0).float()  # normalize='range'


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("name", METHODS.names())
def test_every_pretraining_method_lowers_reconstruction_error_on_digits(name, layer):
    cfg = _cfg(pretrain_method=name, hidden_sizes="32,16", normalize="range")
    x = _digits()
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 8, 8), 10, seed=0)
    objective = LayerObjective(model, layer, cfg)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=0.01)
    before = float(objective.reconstruction_error(x).mean())
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(f"hidden.{layer}.")}
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = x[torch.randint(len(x), (32,), generator=gen)]
        optimizer.zero_grad()
        loss = objective(batch)
        assert loss.shape == (32,)
        loss.mean().backward()
        optimizer.step()
    after = float(objective.reconstruction_error(x).mean())
    assert after < 0.8 * before, (before, after)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())  # only layer k trained


@pytest.mark.parametrize("name", METHODS.names())
def test_every_pretraining_method_round_trips_its_aux_state(name):
    cfg = _cfg(pretrain_method=name, hidden_sizes="32,16", normalize="range")
    x = _digits()[:64]
    model = build_model(cfg.model, (1, 8, 8), 10, seed=0)
    torch.manual_seed(1)
    first = LayerObjective(model, 0, cfg)
    for t in first.aux_state().values():
        t.add_(0.5)  # aux_state shares storage: move the head away from its initial values
    torch.manual_seed(2)
    second = LayerObjective(build_model(cfg.model, (1, 8, 8), 10, seed=0), 0, cfg)
    assert not torch.allclose(first.reconstruction_error(x), second.reconstruction_error(x))
    second.load_aux_state(first.aux_state())
    assert torch.allclose(first.reconstruction_error(x), second.reconstruction_error(x))
    assert all(k.startswith("pretrain_aux.") for k in first.aux_state())


@pytest.mark.parametrize("name", METHODS.names())
def test_every_pretraining_method_gives_opacus_true_per_sample_gradients(name):
    """Opacus' per-sample gradients average to the batch gradient: no trainable module is hooked twice."""
    cfg = _cfg(pretrain_method=name, hidden_sizes="16", normalize="range")
    model = build_model(cfg.model, (1, 8, 8), 10, seed=0)
    objective = LayerObjective(model, 0, cfg)
    gsm = GradSampleModule(objective)
    try:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gsm(_digits()[:6]).mean().backward()
        trainable = [p for p in objective.parameters() if p.requires_grad]
        assert trainable
        for p in trainable:
            assert torch.allclose(p.grad_sample.mean(0), p.grad, atol=1e-6)
    finally:
        gsm._close()


# --- partitioners ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_clients", [5, 10])
@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_every_partitioner_returns_a_disjoint_cover(name, num_clients):
    labels = load_digits().y
    parts = partition(name, labels, num_clients, seed=0)
    assert len(parts) == num_clients
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) and np.array_equal(np.sort(joined), np.arange(len(labels)))
    again = partition(name, labels, num_clients, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))  # seeded


# --- models ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_for_digits_and_gives_logits(name):
    cfg = _cfg(model=name).model
    model = build_model(cfg, (1, 8, 8), 10, seed=3)
    logits = model(torch.rand(7, 1, 8, 8))
    assert logits.shape == (7, 10) and torch.isfinite(logits).all()
    again = build_model(cfg, (1, 8, 8), 10, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


# --- accountants -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ACCOUNTANTS.names())
def test_every_accountant_gives_an_epsilon_that_grows_with_steps(name):
    eps = [epsilon_of(name, [(1.0, 0.02, steps)], 1e-5) for steps in (10, 100, 1000)]
    assert all(math.isfinite(e) and e > 0 for e in eps) and eps[0] < eps[1] < eps[2], eps
    acc = ClientAccountant(name)
    acc.record(1.0, 0.02, 100)
    assert acc.epsilon(1e-5) == pytest.approx(eps[1])


# --- the schema and unknown names --------------------------------------------------------------------------------


def test_registry_backed_schema_keys_take_their_choices_from_the_registry():
    backed = {key: f.metadata["choices"] for key, (_, f) in flat_keys().items()
              if isinstance(f.metadata["choices"], RegistryNames)}  # fmt: skip
    expected = {key: target for target, (_, keys) in REGISTRIES.items() for key in keys}
    assert {k: v.target for k, v in backed.items() if v.target in REGISTRIES} == expected
    for key, target in expected.items():
        registry = REGISTRIES[target][0]
        assert tuple(backed[key]) == registry.names() and len(registry) > 0
        assert registry.key == REGISTRIES[target][1][0]


@pytest.mark.parametrize("target", list(REGISTRIES))
def test_an_unknown_name_is_a_config_error_naming_the_choices(target):
    registry, keys = REGISTRIES[target]
    with pytest.raises(ConfigError) as err:
        registry.get("no-such-entry")
    assert registry.key in str(err.value) and all(n in str(err.value) for n in registry.names())
    for key in keys:
        with pytest.raises(ConfigError) as err:
            load_config(overrides={key: "no-such-entry"})
        assert key in str(err.value) and all(n in str(err.value) for n in registry.names())


def test_builders_refuse_an_unknown_name_with_a_config_error():
    """Past the loader (a config built in code), every builder still raises ConfigError, never a bare ValueError."""
    cfg = _cfg()
    bogus = "no-such-entry"
    calls = {
        "optimizer": lambda: build_optimizer([torch.nn.Parameter(torch.zeros(1))],
                                             dataclasses.replace(cfg.train, optimizer=bogus), 0.1),
        "lr-schedule": lambda: learning_rate(dataclasses.replace(cfg.train, lr_schedule=bogus), 1, 1),
        "loss": lambda: build_criterion(dataclasses.replace(cfg.train, loss=bogus), np.array([0]), 2),
        "strategy": lambda: build_strategy(dataclasses.replace(cfg, strategy=dataclasses.replace(cfg.strategy,
                                                                                                 strategy=bogus))),
        "pretrain-method": lambda: LayerObjective(
            build_model(cfg.model, (1, 8, 8), 10),
            0,
            dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, pretrain_method=bogus)),
        ),
        "dp-accountant": lambda: ClientAccountant(bogus),
        "partitioner": lambda: partition(bogus, np.arange(10) % 2, 2, seed=0),
        "model": lambda: build_model(dataclasses.replace(cfg.model, model=bogus), (1, 8, 8), 10),
    }  # fmt: skip
    assert set(calls) == {keys[0] for _, keys in REGISTRIES.values()}
    for key, call in calls.items():
        with pytest.raises(ConfigError, match=key):
            call()
