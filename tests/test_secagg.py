"""SecAgg+ as a round exchange: the unmasked aggregate, dropouts in every stage, policies, DP, accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedtrain.errors import ConfigError
from fedtrain.federation import build_client_app
from fedtrain.results import RunFolder
from fedtrain.runtime import InProcessGrid, run_inprocess

SECAGG = {"secure_aggregation": True}


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _records(run_dir: Path) -> list[dict]:
    return RunFolder(run_dir).read_metrics()


def _losing(node_index: int, stage: str, rounds: tuple[int, ...] = (1,), count: int = 1):
    """A ClientApp whose nodes ``node_index .. node_index+count-1`` fail in SecAgg+ ``stage`` of ``rounds``."""
    app = build_client_app()
    first = 1001

    def client(msg: Message, context: Context) -> Message:
        config = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        lost = first + node_index <= msg.metadata.dst_node_id < first + node_index + count
        if config is not None and lost and config.get(Key.STAGE) == stage and int(msg.metadata.group_id) in rounds:
            raise RuntimeError(f"node lost in {stage}")
        return app(msg, context)

    return client


def test_the_unmasked_aggregate_is_fedavg_within_the_quantisation_bound(small_config):
    plain = small_config(num_rounds=1, run_name="plain")
    masked = small_config(num_rounds=1, run_name="masked", **SECAGG)
    a = RunFolder(run_inprocess(plain)).load_checkpoint("latest")["arrays"]
    run_dir = run_inprocess(masked)
    b = RunFolder(run_dir).load_checkpoint("latest")["arrays"]
    (record,) = _records(run_dir)
    # Each of K clients quantises its scaled update with step 2c/q (stochastic rounding: error below one step, plus
    # up to a quarter step as Flower rounds in float32); the server divides the sum by W = sum(n_i / max_weight).
    from fedtrain.data import build_federated_data

    sizes = [len(cl.train.y) for cl in build_federated_data(masked.data, masked.partition, 0).clients]
    c, q, k = record["secagg_clipping_range"], masked.secagg.secagg_quantization_range, record["clients_trained"]
    step, total_weight = 2 * c / q, sum(n / max(sizes) for n in sizes)
    bound = 1.25 * k * step / total_weight
    worst = max(float((a[key] - b[key]).abs().max()) for key in a)
    assert b["hidden.0.linear.weight"].dtype == a["hidden.0.linear.weight"].dtype  # cast back from float64
    assert 0 < worst <= bound, (worst, bound)  # masked, so not bit-equal; within the bound


@pytest.mark.parametrize("stage", ["setup", "share_keys", "collect_masked_vectors", "unmask"])
def test_a_node_lost_in_any_stage_is_survived(small_config, stage):
    cfg = small_config(num_clients=5, min_clients=3, num_rounds=2, **SECAGG)
    run_dir = run_inprocess(cfg, grid=InProcessGrid(_losing(0, stage), 5, cfg.to_flat()))
    summary, first = _summary(run_dir), _records(run_dir)[0]
    assert summary["status"] == "completed", summary.get("reason")
    # Counted once; the others' updates kept (one lost in unmask had sent its update: it is unmasked and kept too).
    assert first["failures"] == 1 and first["clients_trained"] == (5 if stage == "unmask" else 4)
    if stage in ("setup", "share_keys"):  # Flower halts here: fedtrain retries without the lost node
        assert first["secagg_attempts"] == 2 and first["secagg_halted"]
    else:  # recovered by the protocol itself
        assert first["secagg_attempts"] == 1


@pytest.mark.parametrize(("policy", "status"), [("skip", "completed"), ("stop", "stopped"), ("retry", "stopped")])
def test_beyond_the_threshold_the_policy_applies(small_config, policy, status):
    # 5 clients, all hold shares, threshold 4: losing 2 in the unmask stage leaves too few shares.
    cfg = small_config(num_clients=5, min_clients=3, num_rounds=2, secagg_reconstruction_threshold=4,
                       secagg_halt_policy=policy, **SECAGG)  # fmt: skip
    client = _losing(0, "unmask", rounds=(1, 2), count=2)
    run_dir = run_inprocess(cfg, grid=InProcessGrid(client, 5, cfg.to_flat()))
    summary = _summary(run_dir)
    assert summary["status"] == status, summary.get("reason")
    if policy == "skip":
        records = _records(run_dir)
        assert all(r["secagg_halted"] for r in records)  # marked in metrics.jsonl, with the stage
        assert "unmask" in records[0]["secagg_halted"][0]
    else:
        assert "halted in unmask" in summary["reason"]
        last = _records(run_dir)[-1]  # the round that stopped the run is in metrics.jsonl, with its stage
        assert "halted in unmask" in last["halted"] and "unmask" in last["secagg_halted"][0]
        assert _summary(run_dir)["secure_aggregation"]["halted_rounds"]


def test_secagg_with_sample_level_dp_accounts_as_without(small_config):
    # normalize=range in both: DP-SGD alone (dp-standard under SecAgg+ is the test below)
    dp = {"dp_level": "sample", "num_rounds": 2, "hidden_sizes": "16", "normalize": "range"}
    plain = _summary(run_inprocess(small_config(**dp, run_name="plain")))
    masked_dir = run_inprocess(small_config(**dp, run_name="masked", **SECAGG))
    masked = _summary(masked_dir)
    assert masked["status"] == "completed"
    assert masked["privacy"]["sample"]["epsilon_max"] == pytest.approx(plain["privacy"]["sample"]["epsilon_max"])
    assert (masked_dir / "privacy.json").is_file()


def test_defaults_reach_the_same_accuracy_with_and_without_secagg(tmp_path):
    from fedtrain.config import load_config

    base = {"progress": False, "report": False, "out-dir": str(tmp_path)}
    plain = _summary(run_inprocess(load_config(overrides={**base, "run-name": "plain"})))
    masked = _summary(run_inprocess(load_config(overrides={**base, "run-name": "masked", "secure-aggregation": True})))
    assert abs(plain["final"]["accuracy"] - masked["final"]["accuracy"]) <= 0.005


@pytest.mark.parametrize(("overrides", "message"), [
    ({"strategy": "krum"}, r"SecAgg\+ hides"),
    ({"dp_level": "user", "dp_user_clipping": "server"}, "cannot clip"),
    ({"secagg_num_shares": 2}, "whole number above 2"),
    ({"secagg_num_shares": 5, "secagg_reconstruction_threshold": 5}, "must be below"),
    ({"secagg_num_shares": 6}, "odd count"),
    ({"secagg_modulus_range": 3000000}, "power of two"),
    ({"round_exchange": "message", "secure_aggregation": True, "secagg_num_shares": 2.5}, "whole number"),
])  # fmt: skip
def test_bad_secagg_settings_are_config_errors(small_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        small_config(**{**SECAGG, **overrides})


def test_clipped_values_are_counted_and_warned_about(small_config):
    run_dir = run_inprocess(small_config(num_rounds=1, secagg_clipping_range=0.001, **SECAGG))
    (record,) = _records(run_dir)
    assert record["secagg_clipped"] > 0 and 0 < record["secagg_clipped_fraction"] <= 1
    assert any("clipped" in w for w in _summary(run_dir)["warnings"])
    assert np.isfinite(record["test_loss"])


def test_the_report_has_a_secure_aggregation_section(small_config):
    cfg = small_config(num_clients=5, min_clients=3, num_rounds=2, report=True, **SECAGG)
    run_dir = run_inprocess(cfg, grid=InProcessGrid(_losing(0, "setup", rounds=(1, 2)), 5, cfg.to_flat()))
    secagg = _summary(run_dir)["secure_aggregation"]
    assert secagg["shares"] == 4 and secagg["threshold"] == 2  # the retry ran with the 4 remaining clients
    assert secagg["retried_rounds"] == 2 and secagg["halted_rounds"][0]["stages"] == ["setup"]
    page = (run_dir / "report.html").read_text()
    assert "<h2>Secure aggregation</h2>" in page and "rounds retried" in page


def test_user_level_noise_on_the_unmasked_mean_has_the_promised_std(small_config):
    # Updates of ~0 (a vanishing learning rate): the change of the global model is the server's noise alone,
    # whose std user-level DP promises to be z * C / K on every coordinate.
    z, c, k = 1.0, 0.5, 3
    cfg = small_config(num_rounds=1, dp_level="user", dp_user_clipping="client", dp_user_noise_multiplier=z,
                       dp_user_clipping_norm=c, learning_rate=1e-12, hidden_sizes="64", **SECAGG)  # fmt: skip
    before = build_initial(cfg)
    run_dir = run_inprocess(cfg)
    after = RunFolder(run_dir).load_checkpoint("latest")["arrays"]
    diff = np.concatenate([(after[key] - before[key]).numpy().ravel() for key in before])
    assert _summary(run_dir)["privacy"]["user"]["epsilon"] > 0
    assert diff.std() == pytest.approx(z * c / k, rel=0.05)  # measured on ~5k coordinates
    assert abs(diff.mean()) < 3 * z * c / k / np.sqrt(diff.size)


def test_both_dp_levels_with_secagg(small_config):
    cfg = small_config(num_rounds=2, dp_level="both", dp_user_clipping="client", dp_user_noise_multiplier=0.1,
                       hidden_sizes="16", **SECAGG)  # fmt: skip
    summary = _summary(run_inprocess(cfg))
    assert summary["status"] == "completed", summary.get("reason")
    assert summary["privacy"]["sample"]["epsilon_max"] > 0 and summary["privacy"]["user"]["epsilon"] > 0


def build_initial(cfg):
    from fedtrain.data import build_federated_data
    from fedtrain.models import build_model

    data = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)
    return build_model(cfg.model, data.input_shape, len(data.classes), seed=cfg.runtime.seed).state_dict()


def test_a_retried_round_accounts_exactly_the_training_that_ran(small_config):
    # A node lost in setup: the attempt ends before anyone trains (it could not be unmasked), the retry without it
    # trains the others once.
    cfg = small_config(num_clients=5, min_clients=3, num_rounds=2, dp_level="sample", hidden_sizes="16", **SECAGG)
    grid = InProcessGrid(_losing(0, "setup"), 5, cfg.to_flat())
    run_dir = run_inprocess(cfg, grid=grid)
    assert _records(run_dir)[0]["secagg_attempts"] == 2 and _summary(run_dir)["status"] == "completed"
    assert all(r["declined"] == 0 for r in _records(run_dir))  # no client spent its budget twice in round 1
    ledger = json.loads((run_dir / "privacy.json").read_text())["sample"]["clients"]
    for context in grid.contexts.values():  # the server's ledger equals every client's own accountant
        own = context.state.config_records["fedtrain-dp"]
        pid = str(context.node_config["partition-id"])
        assert sum(seg["steps"] for seg in ledger[pid]["segments"]) == sum(own["steps"])
    from fedtrain.data import build_federated_data
    from fedtrain.privacy.dp_sgd import plan_steps

    clients = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed).clients
    for context in grid.contexts.values():
        pid = int(context.node_config["partition-id"])
        call = plan_steps(len(clients[pid].labeled.y), cfg.train.batch_size, cfg.train.local_epochs).steps_per_call
        steps = sum(context.state.config_records["fedtrain-dp"]["steps"])
        # Lost in round 1's setup: it trained in round 2 only. The others: the retry and round 2.
        assert steps == (1 if pid == 0 else 2) * call


def test_budget_spent_in_a_halted_attempt_is_accounted(small_config):
    # Two nodes lost in unmask, beyond the threshold: everyone trained (collect stage) before the round halted.
    cfg = small_config(num_clients=5, min_clients=3, num_rounds=2, dp_level="sample", hidden_sizes="16",
                       secagg_reconstruction_threshold=4, secagg_halt_policy="stop", **SECAGG)  # fmt: skip
    grid = InProcessGrid(_losing(0, "unmask", count=2), 5, cfg.to_flat())
    run_dir = run_inprocess(cfg, grid=grid)
    assert _summary(run_dir)["status"] == "stopped"
    ledger = json.loads((run_dir / "privacy.json").read_text())["sample"]["clients"]
    assert len(ledger) == 5
    for context in grid.contexts.values():
        own = context.state.config_records["fedtrain-dp"]
        assert sum(own["steps"]) > 0  # it trained, and the server knows it
        assert sum(seg["steps"] for seg in ledger[str(context.node_config["partition-id"])]["segments"]) == sum(
            own["steps"]
        )


def test_user_level_dp_survives_a_dropout_as_a_zero_update(small_config):
    cfg = small_config(num_clients=5, min_clients=3, num_rounds=2, dp_level="user", dp_user_clipping="client",
                       dp_user_noise_multiplier=0.1, **SECAGG)  # fmt: skip
    run_dir = run_inprocess(cfg, grid=InProcessGrid(_losing(0, "collect_masked_vectors"), 5, cfg.to_flat()))
    summary = _summary(run_dir)
    assert summary["status"] == "completed", summary.get("reason")
    assert [r["clients_trained"] for r in _records(run_dir)] == [4, 5]
    assert _records(run_dir)[0].get("secagg_clipped", 0) == 0  # the range is C: nothing can be clipped


def _without_dp_evidence(partitions: set[int]):
    """A ClientApp whose ``partitions`` strip the DP evidence from their SecAgg+ reply (a client without DP-SGD)."""
    from fedtrain import wire

    app = build_client_app()

    def client(msg: Message, context: Context) -> Message:
        reply = app(msg, context)
        metrics = reply.content.config_records.get("fitres.metrics")
        if metrics is not None and int(context.node_config["partition-id"]) in partitions:
            for key in (*wire.DP_EVIDENCE, wire.DP_HISTORY):
                metrics.pop(key, None)
        return reply

    return client


def test_a_reply_without_dp_evidence_is_left_out_of_the_masked_sum(small_config):
    # One of four clients sends a masked update but no DP evidence: it is dropped before the masked vectors are
    # summed, Flower unmasks the round without it, and the other three are aggregated and accounted.
    cfg = small_config(num_clients=4, min_clients=2, num_rounds=2, dp_level="sample", **SECAGG)
    run_dir = run_inprocess(cfg, grid=InProcessGrid(_without_dp_evidence({0}), 4, cfg.to_flat()))
    summary, records = _summary(run_dir), _records(run_dir)
    assert summary["status"] == "completed", summary.get("reason")
    assert [r["clients_trained"] for r in records] == [3, 3]
    assert all(sorted(r["trained_partitions"]) == [1, 2, 3] for r in records)
    assert all(r["secagg_attempts"] == 1 and r["secagg_halted"] == [] for r in records)
    assert set(summary["privacy"]["sample"]["per_client"]) == {"1", "2", "3"}  # never counted as private
    arrays = RunFolder(run_dir).load_checkpoint("latest")["arrays"]
    assert all(np.isfinite(v.numpy()).all() for v in arrays.values())
    assert records[-1]["test_accuracy"] > 0.2


def test_a_secagg_run_where_no_client_ran_dp_fails_saying_so(small_config):
    cfg = small_config(num_clients=3, min_clients=2, num_rounds=2, dp_level="sample", **SECAGG)
    run_dir = run_inprocess(cfg, grid=InProcessGrid(_without_dp_evidence({0, 1, 2}), 3, cfg.to_flat()))
    summary = _summary(run_dir)
    assert summary["status"] == "failed"
    assert summary["reason"].startswith("no client ran DP: all 3 replies lacked DP evidence")
    assert "left out of the masked sum" in summary["reason"]


def test_dp_defaults_centre_inside_the_budget_under_secagg_as_without(tmp_path):
    # The DP defaults' normalize=dp-standard runs under SecAgg+ too: the same normaliser, epsilon and accuracy.
    from fedtrain.config import load_config

    base = {"dp-level": "sample", "num-rounds": 3, "progress": False, "report": False, "out-dir": str(tmp_path)}
    plain_cfg = load_config(overrides={**base, "run-name": "plain"})
    masked_cfg = load_config(overrides={**base, "run-name": "masked", "secure-aggregation": True})
    assert plain_cfg.data.normalize == masked_cfg.data.normalize == "dp-standard"
    plain, masked = _summary(run_inprocess(plain_cfg)), _summary(run_inprocess(masked_cfg))
    assert masked["status"] == "completed"
    assert masked["privacy"]["sample"]["epsilon_max"] == pytest.approx(plain["privacy"]["sample"]["epsilon_max"])
    assert abs(plain["final"]["accuracy"] - masked["final"]["accuracy"]) <= 0.005
    # the same normaliser and training: the losses differ by SecAgg+'s quantisation (about 1e-5 on each weight)
    assert masked["final"]["loss"] == pytest.approx(plain["final"]["loss"], abs=1e-3)
