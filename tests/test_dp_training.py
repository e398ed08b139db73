"""Sample-level and user-level DP end to end on the in-process grid, and DP bad inputs."""

import json

import pytest
import torch
from torch import nn

from fedtrain.config import load_config
from fedtrain.data import build_federated_data
from fedtrain.errors import ConfigError, ModelError
from fedtrain.models import build_model
from fedtrain.privacy import ClientAccountant, check_model, dp_train_local, plan_steps
from fedtrain.results import RunFolder
from fedtrain.runtime import run_inprocess
from fedtrain.train import OPTIMIZERS, evaluate

DP = {"dp_level": "sample", "model": "mlp", "batch_size": 32, "hidden_sizes": "16"}  # not the linear DP default


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_multi_phase_run_epsilon_is_one_accountant_over_all_steps(small_config):
    # Prepare: two phases of two rounds each
    cfg = small_config(plan="finetune,finetune", **DP)
    # Execute
    run_dir = run_inprocess(cfg)
    # Assert
    summary = _summary(run_dir)
    sample = summary["privacy"]["sample"]
    assert summary["rounds"] == 4
    for client in sample["per_client"].values():
        [(sigma, q, steps)] = client["segments"]  # same sampling rate in both phases: one merged segment
        assert steps == client["steps"]
        whole = ClientAccountant("rdp", [(sigma, q, steps)]).epsilon(1e-5)
        last_round_only = ClientAccountant("rdp", [(sigma, q, steps // 4)]).epsilon(1e-5)
        assert client["epsilon"] == pytest.approx(whole, rel=1e-9)
        assert client["epsilon"] > 1.5 * last_round_only
        assert client["epsilon"] <= cfg.privacy.dp_target_epsilon  # calibrated for all 4 rounds
    records = RunFolder(run_dir).read_metrics()
    eps = [r["epsilon_max"] for r in records]
    assert eps == sorted(eps) and eps[-1] == sample["epsilon_max"]
    assert all(
        {"epsilon_mean", "epsilon_min", "delta", "sigma_mean", "sample_rate_mean", "steps_max"} <= r.keys()
        for r in records
    )


def test_resume_keeps_the_accountant(small_config):
    fixed = {**DP, "dp_noise_multiplier": 1.2, "dp_target_epsilon": 50.0}
    straight = _summary(run_inprocess(small_config(num_rounds=4, **fixed)))
    first = run_inprocess(small_config(num_rounds=2, **fixed))
    resumed = _summary(run_inprocess(small_config(num_rounds=4, resume_dir=str(first), **fixed)))
    a, b = straight["privacy"]["sample"]["per_client"], resumed["privacy"]["sample"]["per_client"]
    assert {k: v["steps"] for k, v in a.items()} == {k: v["steps"] for k, v in b.items()}
    assert {k: round(v["epsilon"], 9) for k, v in a.items()} == {k: round(v["epsilon"], 9) for k, v in b.items()}


def test_budget_guard_stops_the_run_and_keeps_results(small_config):
    # A fixed sigma this small spends the budget of 2.0 after one round (measured: 1.87 after it).
    cfg = small_config(num_rounds=10, dp_noise_multiplier=1.2, dp_target_epsilon=2.0, **DP)
    run_dir = run_inprocess(cfg)
    summary = _summary(run_dir)
    assert summary["status"] == "stopped" and "privacy budget" in summary["reason"]
    assert 0 < summary["privacy"]["sample"]["epsilon_max"] <= 2.0
    assert 1 <= summary["rounds"] < 10
    assert (run_dir / "checkpoints" / "latest.pt").is_file()  # the rounds before the stop are kept


def test_returned_weights_load_into_the_plain_model():
    cfg = load_config(overrides={k.replace("_", "-"): v for k, v in DP.items()})
    data = build_federated_data(cfg.data, cfg.partition, 0).clients[0].train
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    trained, result, plan = dp_train_local(model, data, cfg, lr=0.1, seed=0, noise_multiplier=1.0)
    fresh = build_model(cfg.model, data.input_shape, data.num_classes)
    fresh.load_state_dict(trained.state_dict())  # no `_module.` prefix
    assert set(trained.state_dict()) == set(fresh.state_dict())
    assert result.steps == plan.steps_per_call == plan_steps(len(data.y), 32, cfg.train.local_epochs).steps_per_call


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_dp_works_with_every_optimizer(name):
    cfg = load_config(
        overrides={"dp-level": "sample", "model": "mlp", "optimizer": name, "hidden-sizes": "16", "learning-rate": 0.01}
    )
    data = build_federated_data(cfg.data, cfg.partition, 0).clients[1].train
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    before = evaluate(model, data).loss
    # No noise: what moves the weights is the optimizer's step on clipped per-sample gradients.
    lr = 0.005 if name in ("adagrad", "rmsprop", "adam", "adamw") else 0.05  # adaptive steps are larger
    trained, result, _ = dp_train_local(model, data, cfg, lr=lr, seed=0, noise_multiplier=0.0)
    assert torch.isfinite(torch.tensor(result.loss))
    assert evaluate(trained, data).loss < before


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_hooks_and_ghost_give_the_same_update_at_zero_noise(model_name):
    updates = {}
    for mode in ("hooks", "ghost"):
        cfg = load_config(
            overrides={
                "dp-level": "sample",
                "model": model_name,
                "dp-grad-sample-mode": mode,
                "hidden-sizes": "16",
                "dp-max-grad-norm": 0.5,
            }
        )
        data = build_federated_data(cfg.data, cfg.partition, 0).clients[2].train
        model = build_model(cfg.model, data.input_shape, data.num_classes, seed=3)
        trained, _, _ = dp_train_local(model, data, cfg, lr=0.1, seed=5, noise_multiplier=0.0)
        updates[mode] = torch.cat([p.detach().flatten() for p in trained.parameters()])
    assert torch.allclose(updates["hooks"], updates["ghost"], atol=1e-5)


def test_model_opacus_cannot_handle_names_the_layer_and_the_fix():
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))
    with pytest.raises(ModelError, match=r"BatchNorm.*dp-fix-model=true"):
        check_model(net, fix=False)
    fixed = check_model(net, fix=True)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fixed.modules())


def test_dp_bad_inputs(small_config):
    with pytest.raises(ConfigError, match=r"dp-target-epsilon=0\.0 is out of range: must be > 0\.0"):
        load_config(overrides="dp-level=sample dp-target-epsilon=0")
    with pytest.raises(ConfigError, match=r"dp-max-grad-norm=0\.0 is out of range"):
        load_config(overrides="dp-level=sample dp-max-grad-norm=0")
    with pytest.raises(ConfigError, match="sampler='weighted' is refused under sample-level DP"):
        load_config(overrides="dp-level=sample sampler=weighted")
    with pytest.raises(ConfigError, match="needs strategy='fedavg'"):
        load_config(overrides="dp-level=user strategy=krum")
    with pytest.raises(ConfigError, match=r"dp-delta=0.05 is not below 1/\(records per client\).*Use dp-delta="):
        run_inprocess(small_config(dp_delta=0.05, **DP))
    with pytest.raises(ConfigError, match="smallest epsilon reachable is about"):
        run_inprocess(small_config(dp_target_epsilon=1e-4, batch_size=0, num_rounds=300, **{"dp_level": "sample"}))


@pytest.mark.parametrize("clipping", ["server", "client", "adaptive-server", "adaptive-client"])
def test_user_level_dp_reports_its_own_epsilon(small_config, clipping):
    cfg = small_config(dp_level="user", dp_user_clipping=clipping, min_clients=3, dp_user_noise_multiplier=2.0)
    summary = _summary(run_inprocess(cfg))
    user = summary["privacy"]["user"]
    assert summary["status"] == "completed" and user["rounds"] == 2 and user["epsilon"] > 0
    assert user["delta"] == cfg.privacy.dp_user_delta and "sample" not in summary["privacy"]


def test_user_level_budget_stops_the_run(small_config):
    cfg = small_config(
        dp_level="user", min_clients=3, num_rounds=10, dp_user_noise_multiplier=2.0, dp_user_max_epsilon=3.0
    )
    summary = _summary(run_inprocess(cfg))
    assert summary["status"] == "stopped" and "user-level privacy budget" in summary["reason"]
    assert summary["privacy"]["user"]["epsilon"] <= 3.0


def test_both_levels_reported_separately(small_config):
    summary = _summary(
        run_inprocess(small_config(dp_level="both", min_clients=3, **{k: v for k, v in DP.items() if k != "dp_level"}))
    )
    assert summary["privacy"]["sample"]["epsilon_max"] > 0 and summary["privacy"]["user"]["epsilon"] > 0


def test_client_side_clipping_mod_clips_the_update(small_config):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from clients.client_app import app
    from fedtrain.runtime import InProcessGrid

    cfg = small_config(dp_level="user", dp_user_clipping="client")
    grid = InProcessGrid(app, 3, cfg.to_flat())  # sets the sender identity messages need
    data = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)
    start = build_model(cfg.model, data.input_shape, len(data.classes)).state_dict()
    norms = {}
    for clip in (None, 0.01):
        config = ConfigRecord({"lr": 0.1, "global-round": 1, **({"clipping_norm": clip} if clip else {})})
        msg = Message(RecordDict({"arrays": ArrayRecord(start), "config": config}), 1001, "train")
        msg.metadata.__dict__["_message_id"] = "m1"
        context: Context = grid.contexts[1001]
        reply = app(msg, context).content["arrays"].to_torch_state_dict()
        norms[clip] = float(torch.sqrt(sum(((reply[k] - start[k]) ** 2).sum() for k in start)))
    assert norms[None] > 0.05 and norms[0.01] == pytest.approx(0.01, rel=1e-4)


def test_report_plots_epsilon_against_round(small_config):
    run_dir = run_inprocess(small_config(report=True, **DP))
    assert (run_dir / "epsilon.png").is_file()
    # accuracy, loss, epsilon; no per-client label counts under DP (private, outside the budget)
    assert (run_dir / "report.html").read_text().count("data:image/png") == 3
    assert not (run_dir / "label_distribution.png").exists()


def test_physical_batches_do_not_change_the_logical_steps():
    cfg = load_config(overrides="dp-level=sample model=mlp hidden-sizes=16 batch-size=32 dp-max-physical-batch-size=8")
    data = build_federated_data(cfg.data, cfg.partition, 0).clients[0].train
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    before = [p.detach().clone() for p in model.parameters()]
    trained, result, plan = dp_train_local(model, data, cfg, lr=0.1, seed=0, noise_multiplier=1.0)
    assert result.steps == plan.steps_per_call == cfg.train.local_epochs * -(-len(data.y) // 32)
    assert any(not torch.equal(a, b) for a, b in zip(before, trained.parameters(), strict=True))


def test_auto_grad_sample_mode():
    from fedtrain.privacy import choose_grad_sample_mode

    assert choose_grad_sample_mode("auto", "mlp", 256) == "ghost"
    assert choose_grad_sample_mode("auto", "mlp", 0) == "ghost"  # full batch
    assert choose_grad_sample_mode("auto", "mlp", 32) == "hooks"
    assert choose_grad_sample_mode("auto", "cnn", 256) == "hooks"
    assert choose_grad_sample_mode("ew", "cnn", 64) == "ew"
