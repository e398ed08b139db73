"""The DP recipe's building blocks (issue 17): the linear model and server-side iterate averaging."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedtrain.aggregation.averaging import IterateAverager
from fedtrain.config import load_config
from fedtrain.errors import ConfigError
from fedtrain.models import LinearModel, build_model
from fedtrain.results import RunFolder
from fedtrain.runtime import run_inprocess


def _record(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full((2, 3), value, dtype=np.float32)), "b": Array(np.zeros(3, np.float32))})


def test_linear_model_is_one_affine_map():
    model = build_model(load_config(overrides="model=linear").model, (1, 8, 8), 10, seed=0)
    assert isinstance(model, LinearModel)
    assert sum(p.numel() for p in model.parameters()) == 64 * 10 + 10
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_polyak_is_the_mean_of_the_iterates_from_start():
    avg = IterateAverager("polyak", start=2)
    outs = [avg.update(_record(v), r) for r, v in enumerate([10.0, 1.0, 2.0, 6.0], start=1)]
    assert float(outs[0]["w"].numpy()[0, 0]) == 10.0  # before start: the iterate itself
    assert [float(o["w"].numpy()[0, 0]) for o in outs[1:]] == [1.0, 1.5, 3.0]
    assert float(avg.iterate_record(_record(0.0))["w"].numpy()[0, 0]) == 6.0  # the last iterate is kept


def test_ema_weights_follow_the_warmed_up_decay():
    avg = IterateAverager("ema", decay=0.9)
    values, expected, ema = [4.0, 0.0, 8.0, 2.0], [], 0.0
    for n, v in enumerate(values):
        d = 0.0 if n == 0 else min(0.9, (1 + n) / (10 + n))
        ema = d * ema + (1 - d) * v
        expected.append(ema)
        got = float(avg.update(_record(v), n + 1)["w"].numpy()[0, 0])
        assert got == pytest.approx(ema, rel=1e-6)


def test_averager_state_round_trips():
    avg = IterateAverager("ema", decay=0.8)
    for r, v in enumerate([1.0, 3.0], start=1):
        avg.update(_record(v), r)
    copy = IterateAverager("ema", decay=0.8)
    copy.load_state_dict(avg.state_dict())
    a, b = avg.update(_record(5.0), 3), copy.update(_record(5.0), 3)
    assert np.array_equal(a["w"].numpy(), b["w"].numpy()) and copy.count == avg.count == 3


def test_server_averaging_evaluates_the_average_and_resumes_exactly(small_config):
    opts = {"server_averaging": "ema", "server_ema_decay": 0.5, "fraction_evaluate": 0.0}
    plain = RunFolder(run_inprocess(small_config(num_rounds=3, fraction_evaluate=0.0))).load_checkpoint()["arrays"]
    straight = run_inprocess(small_config(num_rounds=3, **opts))
    first = run_inprocess(small_config(num_rounds=2, **opts))
    resumed = run_inprocess(small_config(num_rounds=3, resume_dir=str(first), **opts))
    wa, wb = RunFolder(straight).load_checkpoint()["arrays"], RunFolder(resumed).load_checkpoint()["arrays"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the iterate and the average both came back
    assert not all(torch.equal(wa[k], plain[k]) for k in wa)  # the checkpoint holds the average, not the iterate
    a, b = RunFolder(straight).read_metrics(), RunFolder(resumed).read_metrics()
    assert [r["test_accuracy"] for r in a] == [r["test_accuracy"] for r in b]


def test_dp_standard_release_is_composed_into_every_clients_accountant(small_config):
    from fedtrain.privacy.accountant import epsilon_of
    from fedtrain.privacy.calibration import calibrate_noise
    from fedtrain.privacy.dp_normalize import normalization_epsilon, normalization_segments

    cfg = small_config(dp_level="sample", normalize="dp-standard", normalize_dp_share=0.2, dp_target_epsilon=2.0)
    ((z, q, steps),) = normalization_segments(cfg)
    assert (q, steps) == (1.0, 1) and normalization_epsilon(cfg) == pytest.approx(0.4, rel=0.01)
    run_dir = run_inprocess(cfg)
    privacy = json.loads((run_dir / "privacy.json").read_text())["sample"]
    assert privacy["normalization"]["noise_multiplier"] == z and privacy["normalization"]["share"] == 0.2
    for client in privacy["clients"].values():
        segs = [(s["noise_multiplier"], s["sample_rate"], s["steps"]) for s in client["segments"]]
        assert segs[0] == (z, 1.0, 1) and len(segs) == 2  # the release, then DP-SGD at its own sigma
        assert client["epsilon"] == pytest.approx(epsilon_of("rdp", segs, 1e-5))
        assert 1.9 < client["epsilon"] <= 2.0 * (1 + 1e-9)  # within the budget, counting the release
        alone = calibrate_noise(target_epsilon=2.0, delta=1e-5, segments=[segs[1][1:]], mechanism="rdp")
        assert segs[1][0] > alone  # DP-SGD was calibrated for what the release left: more noise than without it
        assert epsilon_of("rdp", segs[1:], 1e-5) < 2.0  # (RDP composes sub-additively: 0.4 + 1.96 -> 2.0)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy"]["outside_budget"] == [] and summary["status"] == "completed"


def test_dp_standard_statistics_are_near_the_pooled_ones_at_large_budget():
    from fedtrain.data import load_digits
    from fedtrain.data.dp_normalize import dp_standard_statistics

    x = load_digits().x
    parts = np.array_split(x, 10)
    shift, scale = dp_standard_statistics(parts, 16.0, clip=100.0, noise_multiplier=1e-6, seed=0)
    assert np.allclose(shift, x.mean(0), atol=1e-3)
    assert np.allclose(scale, np.maximum(x.std(0), 0.05 * 16), atol=1e-3)
    noisy, _ = dp_standard_statistics(parts, 16.0, clip=4.0, noise_multiplier=5.0, seed=0)
    assert not np.allclose(noisy, shift, atol=1e-2)  # the noise is really there


@pytest.mark.parametrize(
    "overrides",
    [
        "normalize=dp-standard",
        "normalize=dp-standard dp-level=user",
        "normalize=dp-standard dp-level=sample dp-noise-multiplier=1.0",
    ],
)
def test_dp_standard_without_a_sample_level_budget_is_refused(overrides):
    with pytest.raises(ConfigError, match="dp-standard"):
        load_config(overrides=overrides)


def test_augment_shifts_images_by_whole_pixels():
    from fedtrain.train.augment import augment_images

    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 3, 4] = 1.0
    torch.manual_seed(0)
    out = augment_images(x, max_shift=1, max_rotation=0.0)
    peaks = [tuple(int(v) for v in (o[0] == o[0].max()).nonzero()[0]) for o in out]
    assert all(abs(r - 3) <= 1 and abs(c - 4) <= 1 for r, c in peaks)
    assert len(set(peaks)) > 3  # several shifts were drawn
    assert torch.allclose(out.sum((1, 2, 3)), torch.ones(64), atol=1e-5)  # whole-pixel moves keep the mass


def test_fold_averages_each_records_augmentations():
    from fedtrain.train.augment import fold_grad_samples

    p = torch.nn.Parameter(torch.zeros(3))
    p.grad_sample = torch.arange(12.0).view(4, 3)  # 2 records x 2 augmentations
    fold_grad_samples([p], 2)
    assert torch.equal(p.grad_sample, torch.tensor([[1.5, 2.5, 3.5], [7.5, 8.5, 9.5]]))


def test_augmentation_multiplicity_under_dp_sgd_clips_per_record(small_config):
    from fedtrain.data import build_federated_data
    from fedtrain.privacy.dp_sgd import dp_train_local

    cfg = small_config(dp_level="sample", model="linear", augment="shift-rotate", augment_multiplicity=4,
                       batch_size=16, local_epochs=1, normalize="range")  # fmt: skip
    data = build_federated_data(cfg.data, cfg.partition, 0).clients[0].train
    seen: list[int] = []
    import fedtrain.train.augment as augment_mod

    fold = augment_mod.fold_grad_samples

    def spy(params, k):
        seen.append(next(p for p in params if getattr(p, "grad_sample", None) is not None).grad_sample.shape[0])
        fold(params, k)
        assert all(p.grad_sample.shape[0] * k == seen[-1] for p in params)

    augment_mod.fold_grad_samples = spy
    try:
        model = build_model(cfg.model, data.input_shape, data.num_classes, seed=0)
        before = [p.detach().clone() for p in model.parameters()]
        _, result, plan = dp_train_local(model, data, cfg, lr=0.5, seed=0, noise_multiplier=1.0)
    finally:
        augment_mod.fold_grad_samples = fold
    assert seen and all(n % 4 == 0 for n in seen)  # 4 augmentations of every sampled record
    assert result.steps == plan.steps_per_call  # the accountant's steps are unchanged
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_augmentation_without_dp_trains_and_refuses_tabular_inputs(small_config):
    from fedtrain.data import ArrayDataset
    from fedtrain.train import train_local

    cfg = small_config(augment="shift", augment_multiplicity=2)
    rng = np.random.default_rng(0)
    tabular = ArrayDataset(rng.random((20, 5)).astype(np.float32), rng.integers(0, 2, 20), ("a", "b"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 2))
    with pytest.raises(ConfigError, match="image inputs"):
        train_local(model, tabular, cfg.train, lr=0.1, seed=0)
    run_dir = run_inprocess(small_config(augment="shift-rotate", augment_multiplicity=2, num_rounds=2))
    assert RunFolder(run_dir).read_metrics()[-1]["test_accuracy"] > 0.5


def test_small_budget_defaults_pick_the_linear_recipe_and_keep_what_the_user_set():
    from fedtrain.config.dp_defaults import dp_default_changes, linear_dp_defaults

    small = load_config(overrides="dp-level=sample dp-target-epsilon=1")
    assert (small.model.model, small.train.optimizer, small.train.batch_size) == ("linear", "sgd", 128)
    assert small.strategy.server_averaging == "ema" and small.strategy.num_rounds == 15
    assert (small.data.normalize, small.data.normalize_dp_share) == ("dp-standard", 0.3)
    assert all(small.to_flat()[k] == v for k, v in linear_dp_defaults(1.0).items())
    assert set(linear_dp_defaults(1.0)) - {"local-epochs"} <= set(dp_default_changes(small))  # 2 is generic
    assert "hidden-sizes" not in dp_default_changes(small)  # MLP keys do not apply to the linear model
    mlp = load_config(overrides="dp-level=sample dp-target-epsilon=1 model=mlp")  # the user's model: MLP recipe
    assert (mlp.model.model, mlp.model.hidden_sizes, mlp.train.batch_size) == ("mlp", "128", 16)
    mine = load_config(overrides="dp-level=sample dp-target-epsilon=1 batch-size=32 num-rounds=20")
    assert (mine.model.model, mine.train.batch_size, mine.strategy.num_rounds) == ("linear", 32, 20)
    assert load_config(file=None, overrides=small.to_flat()) == small  # resolved once: final


@pytest.mark.parametrize("epsilon", [3.0, 8.0])
def test_the_linear_recipe_is_the_default_at_larger_budgets_too(epsilon):
    # benchmarks/results/privacy_utility.md, row linear-dpstd: 30 rounds and a 10 % share of the budget
    from fedtrain.config.dp_defaults import SMALL_EPSILON, dp_default_changes, linear_dp_defaults

    assert epsilon >= SMALL_EPSILON
    cfg = load_config(overrides=f"dp-level=sample dp-target-epsilon={epsilon:g}")
    flat = cfg.to_flat()
    expected = {
        "model": "linear",
        "optimizer": "sgd",
        "batch-size": 128,
        "local-epochs": 2,
        "learning-rate": 1.0,
        "num-rounds": 30,
        "server-averaging": "ema",
        "normalize": "dp-standard",
        "normalize-dp-share": 0.1,
        "dp-accountant": "prv",
    }
    assert linear_dp_defaults(epsilon) == expected
    assert {k: flat[k] for k in expected} == expected
    assert {"model", "optimizer", "batch-size", "learning-rate", "server-averaging", "normalize"} <= set(
        dp_default_changes(cfg)
    )
    assert load_config(file=None, overrides=flat) == cfg  # resolved once: final
    # What the user set is kept; the rest of the recipe still applies.
    mine = load_config(
        overrides=f"dp-level=sample dp-target-epsilon={epsilon:g} model=linear batch-size=64 learning-rate=0.5 "
        "num-rounds=12 normalize-dp-share=0.2 server-averaging=polyak"
    )
    assert (mine.model.model, mine.train.batch_size, mine.train.learning_rate) == ("linear", 64, 0.5)
    assert (mine.strategy.num_rounds, mine.strategy.server_averaging) == (12, "polyak")
    assert (mine.data.normalize, mine.data.normalize_dp_share) == ("dp-standard", 0.2)
    assert (mine.train.optimizer, mine.train.local_epochs) == ("sgd", 2)
    # The MLP recipe where the linear one does not apply: the user's model, a pretrain stage, a fixed sigma, and
    # the ONNX client runtime (its gradient graphs cover the MLP only).
    for extra in ("model=mlp", "plan='pretrain,finetune'", "dp-noise-multiplier=1.0", "client-runtime='onnx'"):
        mlp = load_config(overrides=f"dp-level=sample dp-target-epsilon={epsilon:g} {extra}")
        assert (mlp.model.model, mlp.model.hidden_sizes, mlp.model.activation) == ("mlp", "128", "tanh"), extra
        assert (mlp.train.batch_size, mlp.data.normalize, mlp.strategy.server_averaging) == (16, "range", "none")
    # An MLP-only key chooses the MLP (and keeps its own value), with the rest of the MLP recipe.
    for extra, (sizes, activation) in {"hidden-sizes='64'": ("64", "tanh"), "activation=relu": ("128", "relu")}.items():
        mlp = load_config(overrides=f"dp-level=sample dp-target-epsilon={epsilon:g} {extra}")
        assert (mlp.model.model, mlp.model.hidden_sizes, mlp.model.activation) == ("mlp", sizes, activation), extra
        assert (mlp.train.batch_size, mlp.data.normalize) == (16, "range"), extra
    chosen = load_config(overrides=f"dp-level=sample dp-target-epsilon={epsilon:g} model=linear hidden-sizes='64'")
    assert (chosen.model.model, chosen.data.normalize) == ("linear", "dp-standard")  # the model key decides


@pytest.mark.parametrize(
    "overrides",
    [
        "dp-target-epsilon=1 dp-noise-seed='os'",
        "dp-target-epsilon=1 normalize='range'",
        "dp-target-epsilon=0.05",  # a release at 30 % of it would cost less than any Gaussian release can
        "dp-target-epsilon=3 normalize-dp-share=0.005",  # the user's share: too small to release
    ],
)
def test_small_budget_recipe_keeps_range_where_dp_standard_cannot_run_or_was_not_wanted(overrides):
    from fedtrain.config.dp_defaults import dp_default_changes

    cfg = load_config(overrides=f"dp-level=sample {overrides}")  # loads: no dp-standard refusal
    assert cfg.model.model == "linear" and cfg.data.normalize == "range"
    assert "normalize-dp-share" not in dp_default_changes(cfg)  # a share without the release is not applied


@pytest.mark.slow  # ONNX export: about 25 s on a shared machine
def test_the_exported_model_is_the_average_not_the_last_iterate(small_config):
    cfg = small_config(num_rounds=3, fraction_evaluate=0.0, server_averaging="polyak", plan="finetune,export",
                       export_formats="fp32", export_latency_calls=0, export_checkpoint="latest",
                       export_ort=False)  # fmt: skip
    run_dir = run_inprocess(cfg)
    last = RunFolder(run_dir).read_metrics()[-1]
    exported = json.loads((run_dir / "export" / "export.json").read_text())
    fp32 = next(r for r in exported["rows"] if r["format"] == "fp32")
    assert fp32["accuracy"] == pytest.approx(last["test_accuracy"], abs=1e-9)  # the model the run evaluated
    state = RunFolder(run_dir).load_checkpoint("latest")["state"]["strategy"]["server-averaging"]
    iterate, average = state["iterate"], state["average"]
    assert int(state["count"]) == 3 and any(not torch.equal(iterate[k], average[k]) for k in iterate)


def test_multiplicity_of_an_identity_augmentation_changes_nothing_under_dp(small_config):
    # k copies of each record with no shift: averaged before clipping, they are that record's own gradient, so the
    # clipped sum, the noise and the weights are those of the run without augmentation. Averaging after clipping,
    # or clipping each copy, would differ wherever a record's gradient is clipped.
    from fedtrain.results import RunFolder
    from fedtrain.runtime import run_inprocess

    dp = {"dp_level": "sample", "num_rounds": 1, "dp_max_grad_norm": 0.1, "dp_grad_sample_mode": "hooks"}
    plain = run_inprocess(small_config(**dp, run_name="plain"))
    same = run_inprocess(small_config(**dp, augment="shift", augment_shift=0.0, augment_multiplicity=4, run_name="k4"))
    a, b = (RunFolder(r).load_checkpoint("latest")["arrays"] for r in (plain, same))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("augment-multiplicity=4", "nothing to multiply with augment='none'"),
        ("augment=shift dp-level=sample dp-grad-sample-mode=ghost", "dp-grad-sample-mode='hooks'"),
        ("normalize=dp-standard dp-level=sample dp-noise-seed=os", "dp-noise-seed='run'"),
        ("normalize=dp-standard dp-level=sample client-runtime=onnx", "client-runtime='torch'"),
        ("normalize=dp-standard dp-level=sample dp-target-epsilon=0.05", "raise normalize-dp-share or dp-target"),
    ],
)
def test_recipe_keys_that_would_be_ignored_or_weaker_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=overrides)


def test_node_data_recipe_centres_on_the_servers_own_file_when_it_has_one():
    # dp-standard cannot run on node data (no statistics round yet); standard fitted on server-data-path reads no
    # client record, so the recipe takes it there, and range without a server file.
    from fedtrain.config.dp_defaults import dp_default_changes

    node = "dp-level=sample dp-target-epsilon=1 data-source=node"
    with_file = load_config(overrides=f"{node} server-data-path='server.npz'")
    assert (with_file.model.model, with_file.data.normalize) == ("linear", "standard")
    assert "normalize-dp-share" not in dp_default_changes(with_file)
    bare = load_config(overrides=f"{node} classes='0,1' input-shape='1,8,8' input-max=16")
    assert bare.data.normalize == "range"
    mine = load_config(overrides=f"{node} server-data-path='server.npz' normalize='range'")
    assert mine.data.normalize == "range"  # what the user set is kept
