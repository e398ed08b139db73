"""The one local training loop: every knob acts the same in fine-tuning and pretraining, with and without DP."""

import pytest
import torch
from torch import nn

from fedtrain.config import load_config, parse_overrides
from fedtrain.data import ArrayDataset, build_federated_data
from fedtrain.errors import ConfigError
from fedtrain.models import build_model
from fedtrain.pretrain import pretrain_local
from fedtrain.privacy import dp_train_local
from fedtrain.privacy.dp_sgd import PrivateTraining
from fedtrain.train import train_local
from fedtrain.train.loop import PerSampleLoss, run_local

FINETUNE = ("train_local", "dp_train_local")
PRETRAIN = ("pretrain_local", "dp_pretrain_local")
SMALL = "model=mlp hidden-sizes=16 local-epochs=2 pretrain-epochs=2 pretrain-optimizer=sgd pretrain-learning-rate=0.05"


def _data(cfg) -> ArrayDataset:
    return build_federated_data(cfg.data, cfg.partition, 0).clients[0].train


def _train(entry: str, extra: str = "", *, lr: float | None = 0.05, mu: float = 0.0):
    """Run one entry point from the same start; return the weights before and after (pretraining: layer 0)."""
    dp = entry.startswith("dp_")
    # the extra keys override SMALL's (one --run-config may not name a key twice)
    overrides = {**parse_overrides(SMALL), **parse_overrides(f"{'dp-level=sample ' if dp else ''}{extra}")}
    cfg = load_config(overrides=overrides)
    data = _data(cfg)
    model = build_model(cfg.model, data.input_shape, data.num_classes, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sigma = 0.0 if dp else None  # no noise: what moves the weights is the loop's own work
    if entry in FINETUNE:
        if dp:
            model, _, _ = dp_train_local(model, data, cfg, lr=lr, seed=1, noise_multiplier=sigma, proximal_mu=mu)
        else:
            train_local(model, data, cfg.train, lr=lr, seed=1, proximal_mu=mu)
        return before, model.state_dict()
    torch.manual_seed(0)  # the decoder's initialisation
    after, _ = pretrain_local(model, 0, {}, data, cfg, seed=1, lr=lr, noise_multiplier=sigma, proximal_mu=mu)
    return before, after


def _l1(arrays) -> float:
    return float(arrays["hidden.0.linear.weight"].abs().sum())


def _moved(before, after) -> float:
    return float(torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in before)))


@pytest.mark.parametrize("entry", FINETUNE + PRETRAIN)
def test_l1_shrinks_the_weights_in_every_kind_of_local_training(entry):
    # Pretraining used to ignore l1; under DP-SGD it must be a decoupled step (Opacus drops a loss term's gradient).
    _, plain = _train(entry)
    _, sparse = _train(entry, "l1=0.05")
    assert _l1(sparse) < 0.97 * _l1(plain)


@pytest.mark.parametrize("entry", FINETUNE + PRETRAIN)
def test_proximal_term_pulls_towards_the_start_in_every_kind_of_local_training(entry):
    before, free = _train(entry)
    _, held = _train(entry, mu=20.0)
    assert _moved(before, held) < 0.5 * _moved(before, free)


@pytest.mark.parametrize("entry", ["train_local", "pretrain_local"])
def test_clip_grad_norm_bounds_the_update_in_fine_tuning_and_pretraining(entry):
    # One full-batch SGD step at a huge rate: the update is lr * clipped gradient, so at most lr * clip-grad-norm.
    one_step = "optimizer=sgd batch-size=0 local-epochs=1 pretrain-batch-size=0 pretrain-epochs=1"
    before, free = _train(entry, one_step, lr=100.0)
    _, clipped = _train(entry, f"{one_step} clip-grad-norm=0.001", lr=100.0)
    moved = _moved(before, clipped)
    assert all(torch.isfinite(v).all() for v in clipped.values())
    assert 0 < moved <= 100.0 * 0.001 * (1 + 1e-4) < _moved(before, free)


def test_clip_grad_value_bounds_each_entry_of_the_pretraining_update():
    one_step = "batch-size=0 pretrain-batch-size=0 pretrain-epochs=1 clip-grad-value=0.0001"
    before, after = _train("pretrain_local", one_step, lr=10.0)
    delta = after["hidden.0.linear.weight"] - before["hidden.0.linear.weight"]
    assert 0 < float(delta.abs().max()) <= 10.0 * 0.0001 * (1 + 1e-4)


@pytest.mark.parametrize("entry", PRETRAIN)
def test_pretraining_uses_the_learning_rate_it_is_given(entry):
    # The config's pretrain-learning-rate is 0.05; the round's rate wins.
    before, frozen = _train(entry, lr=0.0)
    _, moved = _train(entry, lr=0.05)
    assert torch.equal(frozen["hidden.0.linear.weight"], before["hidden.0.linear.weight"])
    assert not torch.equal(moved["hidden.0.linear.weight"], before["hidden.0.linear.weight"])
    _, default = _train(entry, lr=None)  # no rate given: the config's
    assert torch.equal(default["hidden.0.linear.weight"], moved["hidden.0.linear.weight"])


@pytest.mark.parametrize("key", ["clip-grad-norm", "clip-grad-value"])
@pytest.mark.parametrize("level", ["sample", "both"])
def test_local_clipping_under_sample_level_dp_is_refused_by_the_loader(key, level):
    with pytest.raises(ConfigError, match=rf"{key}=0\.5 is refused under sample-level DP.*dp-max-grad-norm=1"):
        load_config(overrides=f"dp-level={level} {key}=0.5")
    assert load_config(overrides=f"dp-level=user {key}=0.5").train  # clients train without DP-SGD there


def test_the_loop_refuses_local_clipping_under_a_privacy_engine_for_direct_callers():
    cfg = load_config(overrides="hidden-sizes=16 clip-grad-norm=1")  # valid without DP
    data = _data(cfg)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    with pytest.raises(ConfigError, match="clip-grad-norm cannot be used with DP-SGD"):
        dp_train_local(model, data, cfg, lr=0.1, seed=0, noise_multiplier=1.0)


class _MeanPixel(nn.Module):
    """A per-sample objective of a record alone: squared error of a linear guess of its mean pixel."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.guess = nn.Linear(features, 1, bias=False)  # Opacus has a per-sample gradient rule for it
        nn.init.zeros_(self.guess.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return (self.guess(flat).squeeze(1) - flat.mean(1)) ** 2


@pytest.mark.parametrize("private", [False, True])
def test_any_per_sample_objective_trains_on_the_loop_with_or_without_dp(private):
    cfg = load_config(overrides="optimizer=sgd batch-size=16 local-epochs=3")
    data = _data(cfg)
    objective = _MeanPixel(data.x[0].size)
    x = torch.from_numpy(data.x)
    start = float(objective(x).mean().detach())
    privacy = PrivateTraining(noise_multiplier=0.0, max_grad_norm=1e3, noise_seed=0) if private else None
    result = run_local(objective, PerSampleLoss(), data, cfg.train, lr=0.05, seed=0, privacy=privacy)
    assert float(objective(x).mean().detach()) < 0.3 * start
    assert result.steps == 3 * -(-len(data.y) // 16) and result.num_examples == len(data.y)


@pytest.mark.parametrize(("n", "batch", "epochs"), [(13, 32, 1), (70, 32, 3), (5, 1, 2), (9, 0, 2), (64, 16, 2)])
def test_sliced_batches_are_the_shuffling_loaders_batches(n, batch, epochs):
    import numpy as np

    from fedtrain.train.loop import ShuffledBatches, make_loader

    rng = np.random.default_rng(n)
    ds = ArrayDataset(rng.normal(size=(n, 3)).astype(np.float32), rng.integers(0, 4, n), ("a", "b", "c", "d"))
    loader, sliced = make_loader(ds, batch, shuffle=True, seed=7), ShuffledBatches(ds, batch, 7)
    assert len(sliced) == len(loader)
    for _ in range(epochs):  # each epoch draws again from the same generator
        expected, got = list(loader), list(sliced)
        assert len(got) == len(expected)
        for (xa, ya), (xb, yb) in zip(expected, got, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and ya.dtype == yb.dtype
