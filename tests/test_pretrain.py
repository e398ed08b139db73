"""Greedy layer-wise pretraining: RBM gradients, frozen layers, hand-off to fine-tuning, DP accounting."""

import json

import pytest
import torch
from flwr.app import ArrayRecord
from opacus import GradSampleModule

from clients.client_app import app as client_app
from fedtrain.config import load_config
from fedtrain.data import build_federated_data
from fedtrain.models import build_model
from fedtrain.pretrain import AUX_PREFIX, RBM
from fedtrain.privacy import ClientAccountant, plan_steps
from fedtrain.results import RunFolder
from fedtrain.runtime import InProcessGrid, run_inprocess

PRE = {"plan": "pretrain,finetune", "hidden_sizes": "24,12", "pretrain_rounds": 2, "num_rounds": 2}


class Spy:
    """A ClientApp stand-in that records what each train message carried, then runs the real app."""

    def __init__(self):
        self.seen = []

    def __call__(self, msg, context):
        if msg.metadata.message_type == "train":
            config = msg.content["config"]
            self.seen.append((str(config["phase"]), int(config.get("layer", -1)), int(config["global-round"]),
                              msg.content["arrays"].to_torch_state_dict()))  # fmt: skip
        return client_app(msg, context)


def _run_with_spy(cfg):
    spy = Spy()
    run_dir = run_inprocess(cfg, grid=InProcessGrid(spy, cfg.partition.num_clients, cfg.to_flat()))
    return run_dir, spy.seen


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_rbm_surrogate_per_sample_gradients_equal_cd_k(visible):
    torch.manual_seed(0)
    rbm = RBM(torch.nn.Linear(6, 4), visible)
    torch.nn.init.normal_(rbm.visible.weight)
    v0 = torch.rand(5, 6) if visible == "bernoulli" else torch.randn(5, 6)
    vk = rbm.gibbs(v0, k=2)
    # Opacus' per-sample gradients of the surrogate (loss averaged over the batch, as in training)
    gsm = GradSampleModule(rbm)
    gsm(v0, vk).mean().backward()
    w_opacus = rbm.linear.weight.grad_sample  # (B, 4, 6)
    b_opacus = rbm.visible.weight.grad_sample  # (B, 1, 6)
    gsm._close()
    for i in range(len(v0)):
        # Per-sample autograd of the CD-k objective F(v0_i) - F(vk_i)
        plain = RBM(rbm.linear, visible)
        plain.visible.weight.data = rbm.visible.weight.data.clone()
        gw, gb = torch.autograd.grad(
            plain(v0[i : i + 1], vk[i : i + 1]).sum(), [plain.linear.weight, plain.visible.weight]
        )
        assert torch.allclose(w_opacus[i], gw, atol=1e-6)
        assert torch.allclose(b_opacus[i], gb, atol=1e-6)
        # ... which is the contrastive-divergence update: -<h v>_data + <h v>_model, -v0 + vk
        h0 = torch.sigmoid(rbm.linear(v0[i]))
        hk = torch.sigmoid(rbm.linear(vk[i]))
        cd_w = -(torch.outer(h0, v0[i]) - torch.outer(hk, vk[i]))
        assert torch.allclose(w_opacus[i], cd_w.detach(), atol=1e-5)
        assert torch.allclose(b_opacus[i][0], -(v0[i] - vk[i]), atol=1e-6)


@pytest.mark.parametrize("method", ["autoencoder", "denoising", "rbm"])
def test_only_layer_k_and_its_decoder_change_during_its_phase(small_config, method):
    cfg = small_config(plan="pretrain", hidden_sizes="24,12", pretrain_rounds=2, pretrain_method=method)
    run_dir, seen = _run_with_spy(cfg)
    final = RunFolder(run_dir).load_checkpoint()["arrays"]
    by_round = {}
    for _phase, layer, rnd, arrays in seen:
        by_round.setdefault(rnd, (layer, arrays))
    rounds = sorted(by_round)
    assert [by_round[r][0] for r in rounds] == [0, 0, 1, 1]
    snapshots = [by_round[r][1] for r in rounds] + [final]
    for before, after, layer in zip(snapshots[:-1], snapshots[1:], [0, 0, 1, 1], strict=True):
        for key in set(before) & set(after):
            if key.startswith(f"hidden.{layer}.") or key.startswith(AUX_PREFIX):
                continue
            assert torch.equal(before[key], after[key]), key  # bit-identical
        assert not torch.equal(before[f"hidden.{layer}.linear.weight"], after[f"hidden.{layer}.linear.weight"])


def test_weights_leaving_pretraining_are_where_finetuning_starts(small_config, monkeypatch):
    from fedtrain.federation.tracking import Checkpointer

    saved = {}
    original = Checkpointer.payload  # what every checkpoint holds

    def record(self, arrays):
        payload = original(self, arrays)
        saved[payload["state"]["global_round"]] = {k: v.clone() for k, v in payload["arrays"].items()}
        return payload

    monkeypatch.setattr(Checkpointer, "payload", record)
    _run_dir, seen = _run_with_spy(small_config(**PRE))
    first_finetune = next(arrays for phase, _l, _r, arrays in seen if phase == "finetune")
    last_pretrain = saved[4]  # 2 layers x 2 rounds
    assert not any(k.startswith(AUX_PREFIX) for k in first_finetune)
    model_keys = {k for k in last_pretrain if not k.startswith(AUX_PREFIX)}
    assert set(first_finetune) == model_keys
    assert all(torch.equal(first_finetune[k], last_pretrain[k]) for k in model_keys)


def test_pretraining_reports_reconstruction_and_filters(small_config):
    run_dir = run_inprocess(small_config(report=True, **PRE))
    records = RunFolder(run_dir).read_metrics()
    pre = [r for r in records if r["phase"].startswith("pretrain")]
    assert [(r["phase"], r["layer"]) for r in pre] == [
        ("pretrain-1", 1),
        ("pretrain-1", 1),
        ("pretrain-2", 2),
        ("pretrain-2", 2),
    ]
    assert all(r["recon_error"] > 0 for r in pre)
    assert (run_dir / "filters.png").is_file() and (run_dir / "reconstruction.png").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [p["name"] for p in summary["phases"]] == ["pretrain-1", "pretrain-2", "finetune"]
    assert summary["best"]["round"] in (5, 6)  # chosen among fine-tuning rounds only


def test_labeled_fraction_limits_finetuning_data_only():
    cfg = load_config(overrides="labeled-fraction=0.1")
    fd = build_federated_data(cfg.data, cfg.partition, 0)
    for client in fd.clients:
        assert len(client.labeled.y) == max(1, round(0.1 * len(client.train.y)))
        assert set(map(tuple, client.labeled.x.reshape(len(client.labeled.y), -1).tolist())) <= set(
            map(tuple, client.train.x.reshape(len(client.train.y), -1).tolist())
        )


def test_linear_probe_keeps_pretrained_layers_frozen(small_config):
    _run_dir, seen = _run_with_spy(small_config(freeze_rounds=1, **{**PRE, "num_rounds": 3}))
    finetune = [(r, a) for phase, _l, r, a in seen if phase == "finetune"]
    first = {r: a for r, a in reversed(finetune)}  # the first message of each round
    r1, r2, r3 = sorted(first)
    for key in first[r1]:
        if key.startswith("hidden."):
            assert torch.equal(first[r1][key], first[r2][key])  # frozen in round 1
    assert not torch.equal(first[r2]["hidden.0.linear.weight"], first[r3]["hidden.0.linear.weight"])
    assert not torch.equal(first[r1]["head.weight"], first[r2]["head.weight"])


@pytest.mark.parametrize("method", ["autoencoder", "rbm"])
def test_dp_accountant_steps_equal_the_sum_over_phases(small_config, method):
    cfg = small_config(dp_level="sample", pretrain_method=method, batch_size=16, pretrain_batch_size=32, **PRE)
    summary = json.loads((run_inprocess(cfg) / "summary.json").read_text())
    assert summary["status"] == "completed"
    fd = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)
    for pid, client in summary["privacy"]["sample"]["per_client"].items():
        data = fd.clients[int(pid)]
        pre = plan_steps(len(data.train.y), 32, 1).steps_per_call
        fine = plan_steps(len(data.labeled.y), 16, 1).steps_per_call
        assert client["steps"] == 2 * 2 * pre + 2 * fine
        assert client["epsilon"] <= cfg.privacy.dp_target_epsilon
        # One accountant over both sampling rates, not one per phase.
        q_pre = plan_steps(len(data.train.y), 32, 1).sample_rate
        q_fine = plan_steps(len(data.labeled.y), 16, 1).sample_rate
        sigma = client["segments"][0][0]
        assert client["segments"] == [[sigma, q_pre, 4 * pre], [sigma, q_fine, 2 * fine]]
        whole = ClientAccountant("rdp", [(sigma, q_pre, 4 * pre), (sigma, q_fine, 2 * fine)])
        assert client["epsilon"] == pytest.approx(whole.epsilon(1e-5), rel=1e-6)


def test_pretraining_needs_an_mlp():
    from fedtrain.errors import ConfigError

    with pytest.raises(ConfigError, match="layer-wise pretraining needs model='mlp'"):
        load_config(overrides="plan=pretrain,finetune model=cnn")


def test_pretrained_model_is_a_plain_model(small_config):
    run_dir = run_inprocess(small_config(**PRE))
    arrays = RunFolder(run_dir).load_checkpoint()["arrays"]
    cfg = small_config(**PRE)
    model = build_model(cfg.model, (1, 8, 8), 10)
    model.load_state_dict(ArrayRecord(arrays).to_torch_state_dict())


def test_resume_between_pretraining_phases(small_config):
    # A run that fails when layer 2's phase starts resumes with layer 2 and ends where an uncut run ends.
    cfg = small_config(plan="pretrain", hidden_sizes="24,12", pretrain_rounds=2)
    straight = run_inprocess(cfg)

    def fail_at_layer_2(msg, context):
        if msg.metadata.message_type == "train" and int(msg.content["config"].get("layer", -1)) == 1:
            raise RuntimeError("node lost")
        return client_app(msg, context)

    cut = run_inprocess(cfg, grid=InProcessGrid(fail_at_layer_2, 3, cfg.to_flat()))
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "failed" and "node lost" in summary["reason"]  # an error reply, as on Flower
    state = RunFolder(cut).load_checkpoint()["state"]
    assert (state["stage_index"], state["stage_round"]) == (0, 2)  # end of pretrain-1
    resumed = run_inprocess(small_config(plan="pretrain", hidden_sizes="24,12", pretrain_rounds=2, resume_dir=str(cut)))
    a = RunFolder(straight).load_checkpoint()["arrays"]
    b = RunFolder(resumed).load_checkpoint()["arrays"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["phase"] for r in RunFolder(resumed).read_metrics()] == ["pretrain-1"] * 2 + ["pretrain-2"] * 2
