"""The audit's checks: epsilon rebuilt from the plan by an independent oracle, on resume and with any client.

The oracle is Google's dp-accounting (not Opacus, which fedtrain's accountant uses), and the
histories it checks are rebuilt from the plan and the data sizes, not read from fedtrain. A ``prv`` run (the linear
DP recipe's) is checked against Opacus' own PRV accountant, which fedtrain's faster one must equal.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.rdp import RdpAccountant
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtrain.config import load_config
from fedtrain.data import build_federated_data
from fedtrain.federation import build_client_app
from fedtrain.privacy import RDP_ORDERS, plan_steps
from fedtrain.privacy.user_level import adaptive_noise_split, adaptive_release_multiplier
from fedtrain.results import RunFolder
from fedtrain.runtime import run_inprocess
from fedtrain.runtime.grid import InProcessGrid

ROOT = Path(__file__).resolve().parents[1]
DP = {"dp_level": "sample", "normalize": "range", "fraction_evaluate": 0.0}
MULTI_PHASE = {
    **DP, "plan": "pretrain,finetune", "hidden_sizes": "16,8", "pretrain_rounds": 2, "pretrain_batch_size": 64,
    "batch_size": 16, "dp_target_epsilon": 3.0,
}  # fmt: skip


def oracle_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    acc = RdpAccountant(orders=list(RDP_ORDERS))
    for sigma, q, steps in history:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


def planned_history(cfg, pid: int, sigma: float, finetune_rounds: int) -> list[tuple[float, float, int]]:
    """What a client spends, rebuilt from the plan: every layer's pretraining rounds, then fine-tuning."""
    client = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed).clients[pid]
    pre = plan_steps(len(client.train.y), cfg.pretrain.pretrain_batch_size, cfg.pretrain.pretrain_epochs)
    fine = plan_steps(len(client.labeled.y), cfg.train.batch_size, cfg.train.local_epochs)
    layers = cfg.num_hidden_layers * cfg.pretrain.pretrain_rounds
    return [(sigma, pre.sample_rate, layers * pre.steps_per_call), (sigma, fine.sample_rate,
            finetune_rounds * fine.steps_per_call)]  # fmt: skip


def _config(out: Path, **overrides):
    values = {
        "num-clients": 3,
        "min-clients": 2,
        "local-epochs": 1,
        "progress": False,
        "report": False,
        "out-dir": str(out),
    }
    values.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return load_config(overrides=values)


@pytest.fixture(scope="module")
def resumed_multi_phase(tmp_path_factory):
    """A pretrain+finetune DP run cut after 2 fine-tuning rounds, then resumed to 4 (fixed sigma: no declines)."""
    out, fixed = tmp_path_factory.mktemp("runs"), {**MULTI_PHASE, "dp_noise_multiplier": 1.5, "dp_target_epsilon": 50.0}
    first = run_inprocess(_config(out, num_rounds=2, **fixed))
    resumed_cfg = _config(out, num_rounds=4, resume_dir=str(first), **fixed)
    return run_inprocess(resumed_cfg), resumed_cfg


def test_resumed_multi_phase_epsilon_equals_the_oracle_for_the_full_history(resumed_multi_phase):
    run_dir, cfg = resumed_multi_phase
    doc = json.loads((run_dir / "privacy.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    clients = doc["sample"]["clients"]
    assert sorted(clients, key=int) == [str(i) for i in range(cfg.partition.num_clients)]
    for pid, client in clients.items():
        sigma = client["segments"][0]["noise_multiplier"]
        expected = planned_history(cfg, int(pid), sigma, finetune_rounds=4)
        got = [(s["noise_multiplier"], s["sample_rate"], s["steps"]) for s in client["segments"]]
        assert [g == pytest.approx(e) for g, e in zip(got, expected, strict=True)] == [True, True]
        assert client["epsilon"] == pytest.approx(oracle_epsilon(expected, 1e-5), rel=1e-6)
        assert summary["privacy"]["sample"]["per_client"][pid]["epsilon"] == pytest.approx(client["epsilon"])
    assert summary["privacy"]["sample"]["epsilon_max"] == pytest.approx(max(c["epsilon"] for c in clients.values()))


def test_a_resumed_run_past_its_plan_keeps_the_budget(small_config):
    # Calibrated for 2 fine-tuning rounds after pretraining, then resumed with more: the audit saw
    # epsilon fall at the first resumed round and the budget of 3 pass (3.7-3.9 by the oracle).
    first = run_inprocess(small_config(num_rounds=2, **MULTI_PHASE))
    cfg = small_config(num_rounds=5, resume_dir=str(first), **MULTI_PHASE)
    before = RunFolder(first).read_metrics()[-1]["epsilon_max"]
    run_dir = run_inprocess(cfg)
    records = RunFolder(run_dir).read_metrics()
    assert all(r["epsilon_max"] >= before - 1e-12 for r in records[len(records) - 1 :])
    for client in json.loads((run_dir / "privacy.json").read_text())["sample"]["clients"].values():
        history = [(s["noise_multiplier"], s["sample_rate"], s["steps"]) for s in client["segments"]]
        assert len(history) == 2  # pretraining and fine-tuning, both kept
        assert oracle_epsilon(history, 1e-5) <= cfg.privacy.dp_target_epsilon * (1 + 1e-9)


def _docs_script() -> str:
    text = (ROOT / "docs" / "privacy.md").read_text()
    match = re.search(r"<!-- recompute-epsilon -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/privacy.md lost its recompute script"
    return match.group(1)


def test_the_ten_line_script_of_the_docs_recomputes_every_epsilon(resumed_multi_phase, capsys, monkeypatch):
    script = _docs_script()
    code_lines = [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code_lines) <= 10
    run_dir, _ = resumed_multi_phase
    monkeypatch.setattr("sys.argv", ["recompute.py", str(run_dir)])
    exec(compile(script, "docs/privacy.md", "exec"), {"__name__": "__main__"})
    printed = dict(line.split() for line in capsys.readouterr().out.strip().splitlines())
    clients = json.loads((run_dir / "privacy.json").read_text())["sample"]["clients"]
    assert printed.keys() == clients.keys()
    for pid, eps in printed.items():
        assert float(eps) == pytest.approx(clients[pid]["epsilon"], rel=1e-6)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")  # Opacus' log(1 - q), q = 1
def test_a_prv_run_is_recomputed_by_opacus_own_prv_accountant(tmp_path):
    # The linear DP recipe accounts with prv: privacy.json's segments, handed to Opacus' PRVAccountant (not
    # fedtrain's faster domain bound), give every client's epsilon, as docs/privacy.md says an auditor can do.
    from opacus.accountants import PRVAccountant

    cfg = _config(tmp_path, dp_level="sample", dp_target_epsilon=2.0, num_rounds=3)
    assert cfg.privacy.dp_accountant == "prv" and cfg.data.normalize == "dp-standard"  # the DP defaults
    doc = json.loads((run_inprocess(cfg) / "privacy.json").read_text())["sample"]
    assert doc["accountant"] == "prv" and len(doc["clients"]) == 3
    for client in doc["clients"].values():
        acc = PRVAccountant()
        acc.history = [(s["noise_multiplier"], s["sample_rate"], s["steps"]) for s in client["segments"]]
        assert len(acc.history) == 2  # the normalisation release, then DP-SGD
        assert acc.get_epsilon(delta=doc["delta"]) == pytest.approx(client["epsilon"], rel=1e-3)
        assert client["epsilon"] <= doc["target_epsilon"]


def test_metrics_name_aggregates_as_aggregates(small_config):
    run_dir = run_inprocess(small_config(**DP))
    record = RunFolder(run_dir).read_metrics()[-1]
    assert {"sigma_mean", "sample_rate_mean", "steps_max"} <= record.keys()
    assert not {"sigma", "sample_rate", "steps"} & record.keys()


# --- a standard Flower ClientApp, shaped like Flower's quickstart --------------------------------------


def stock_client_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"].to_torch_state_dict()
        noisy = {k: v + 0.01 * torch.randn_like(v) for k, v in arrays.items()}
        metrics = MetricRecord({"train_loss": 0.5, "num-examples": 10})
        return Message(RecordDict({"arrays": ArrayRecord(noisy), "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"eval_loss": 0.7, "eval_acc": 0.25, "num-examples": 10})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def _run_stock(cfg) -> Path:
    from fedtrain.federation.server import RUN_DIR_STATE_KEY
    from server.server_app import app as server_app

    run_config = cfg.to_flat()
    grid = InProcessGrid(stock_client_app(), cfg.partition.num_clients, run_config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    try:
        server_app(grid, context)
    except Exception:  # the server re-raises after writing a failed summary
        pass
    return Path(str(context.state[RUN_DIR_STATE_KEY]["run-dir"]))


def test_a_client_without_dp_is_never_counted_as_private(small_config):
    run_dir = _run_stock(small_config(**DP))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "no client ran DP" in summary["reason"] and "dp-history" in summary["reason"]
    assert summary["privacy"]["sample"]["clients_with_dp"] == 0
    assert not (run_dir / "checkpoints" / "best.pt").exists()


def test_stock_metric_names_are_read(small_config):
    run_dir = _run_stock(small_config(fraction_evaluate=1.0))
    records = RunFolder(run_dir).read_metrics()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert records[-1]["train_loss"] == pytest.approx(0.5)
    assert records[-1]["client_eval_accuracy"] == pytest.approx(0.25)
    assert records[-1]["client_eval_loss"] == pytest.approx(0.7)


# --- user-level DP with clients that decline -----------------------------------------------------------


@pytest.mark.parametrize("clipping", ["server", "client", "adaptive-server", "adaptive-client"])
def test_declined_clients_stay_in_the_user_level_cohort(small_config, clipping):
    # A fixed sigma this small exhausts the sample-level budget of most clients mid-run; the
    # user-level mechanism must still average the whole sampled cohort it scales its noise for.
    cfg = small_config(
        **{**DP, "dp_level": "both"}, num_clients=4, min_clients=1, num_rounds=6, dp_noise_multiplier=1.0,
        dp_target_epsilon=3.5, dp_user_clipping=clipping,
    )  # fmt: skip
    run_dir = run_inprocess(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    records = RunFolder(run_dir).read_metrics()
    assert any(r["declined"] for r in records), "the setting should make clients decline"
    assert summary["status"] in ("completed", "stopped") and "no usable client update" not in summary.get("reason", "")
    user = json.loads((run_dir / "privacy.json").read_text())["user"]
    rounds = len(records)
    assert sum(r["count"] for r in user["releases"]) == rounds
    assert all(r["sample_size"] == 4 and r["noise_multiplier"] == pytest.approx(1.0) for r in user["releases"])
    oracle = dp_accounting.rdp.RdpAccountant(orders=user["rdp_orders"])
    oracle.compose(dp_accounting.GaussianDpEvent(1.0), rounds)
    assert user["epsilon"] == pytest.approx(oracle.get_epsilon(user["delta"]), rel=1e-6)


def test_a_resumed_user_level_run_continues_the_noise_and_the_clipping_norm(small_config):
    # Reseeding on resume added the first rounds' noise again: two global models then cancel it.
    user = {"dp_level": "user", "dp_user_clipping": "adaptive-server", "normalize": "range"}
    straight = run_inprocess(small_config(num_rounds=4, **user))
    first = run_inprocess(small_config(num_rounds=2, **user))
    resumed = run_inprocess(small_config(num_rounds=4, resume_dir=str(first), **user))
    a, b = RunFolder(straight).load_checkpoint()["arrays"], RunFolder(resumed).load_checkpoint()["arrays"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adaptive_noise_uses_the_norm_that_clipped_and_the_norm_moves_towards_the_quantile(small_config, monkeypatch):
    import flwr.serverapp.strategy.dp_adaptive_clipping as flower_adaptive

    clipped_at, noised_at = [], []
    clip, stdv = flower_adaptive.adaptive_clip_inputs_inplace, flower_adaptive.compute_stdv

    def spy_clip(arrays, norm):
        clipped_at.append(norm)
        return clip(arrays, norm)

    def spy_stdv(z, norm, k):
        noised_at.append(norm)
        return stdv(z, norm, k)

    monkeypatch.setattr(flower_adaptive, "adaptive_clip_inputs_inplace", spy_clip)
    monkeypatch.setattr(flower_adaptive, "compute_stdv", spy_stdv)
    # A tiny initial norm clips every update: the norm must grow (Flower's own update shrinks it).
    # Little count noise (z = 0.1, 6 clients: std 0.05 on the clipped share), so every round sees all clipped.
    cfg = small_config(dp_level="user", dp_user_clipping="adaptive-server", dp_user_clipping_norm=1e-4,
                       dp_user_noise_multiplier=0.1, num_clients=6, num_rounds=4, normalize="range")  # fmt: skip
    run_inprocess(cfg)
    per_round = clipped_at[::6]  # 6 clients a round, all clipped at that round's norm
    assert noised_at == per_round
    assert per_round == sorted(per_round) and per_round[-1] > per_round[0]


def test_the_round_that_ends_a_phase_is_accounted(small_config):
    # A fixed sigma that spends the budget within a few rounds: the phase stops on min-clients after some
    # clients trained in that last round; their spend must reach the ledger.
    cfg = small_config(**DP, num_rounds=10, min_clients=3, dp_noise_multiplier=1.0, dp_target_epsilon=3.5)
    grid = InProcessGrid(build_client_app(), 3, cfg.to_flat())
    run_dir = run_inprocess(cfg, grid=grid)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped"
    clients = json.loads((run_dir / "privacy.json").read_text())["sample"]["clients"]
    for context in grid.contexts.values():
        pid = str(context.node_config["partition-id"])
        own = context.state.config_records["fedtrain-dp"]
        assert sum(seg["steps"] for seg in clients[pid]["segments"]) == sum(own["steps"])


@pytest.mark.parametrize(("z", "k"), [(1.0, 10), (0.5, 4), (2.0, 100)])
def test_adaptive_clipping_releases_exactly_the_configured_noise(z, k):
    from flwr.supercore.differential_privacy import compute_adaptive_noise_params

    count_stddev, handed_to_flower = adaptive_noise_split(z, k)
    flower_count, flower_update = compute_adaptive_noise_params(handed_to_flower, k, count_stddev)
    assert adaptive_release_multiplier(flower_update, flower_count, k, k) == pytest.approx(z)
    # Fewer updates than sampled: the same noise on a smaller sum is a weaker mechanism.
    assert adaptive_release_multiplier(flower_update, flower_count, k, max(1, k // 2)) < z


def test_adaptive_run_accounts_the_releases_it_made(small_config):
    cfg = small_config(dp_level="user", dp_user_clipping="adaptive-server", num_rounds=3)
    run_dir = run_inprocess(cfg)
    user = json.loads((run_dir / "privacy.json").read_text())["user"]
    assert sum(r["count"] for r in user["releases"]) == 3
    assert all(math.isclose(r["noise_multiplier"], 1.0) for r in user["releases"])
    assert np.isfinite(user["epsilon"])


def test_the_user_level_recipe_learns(tmp_path):
    # The README's user-level example (the audit's adaptive-server run ended at chance, loss 2.2 -> 9.1).
    cfg = load_config(
        file=ROOT / "benchmarks" / "configs" / "user-dp-digits.toml",
        overrides={"num-rounds": 20, "seed": 11, "progress": False, "report": False, "out-dir": str(tmp_path)},
    )
    summary = json.loads((run_inprocess(cfg) / "summary.json").read_text())
    assert summary["final"]["accuracy"] > 0.5  # chance is 0.1
    assert summary["privacy"]["user"]["epsilon"] < 10
    assert not summary["warnings"]


def test_weak_user_level_dp_is_warned_about(small_config):
    run_dir = run_inprocess(small_config(dp_level="user", num_rounds=1))
    warnings = json.loads((run_dir / "summary.json").read_text())["warnings"]
    assert any("will likely swamp training" in w for w in warnings)


def test_noise_from_os_entropy_is_not_reproducible(small_config):
    cfg = small_config(**DP, dp_noise_seed="os", num_rounds=1)
    a, b = (RunFolder(run_inprocess(cfg)).load_checkpoint()["arrays"] for _ in range(2))
    assert not all(torch.equal(a[k], b[k]) for k in a)


def _poisson_masks(cfg, monkeypatch) -> list[list[int]]:
    """Every Poisson batch Opacus drew in one run of ``cfg`` (its sampler's index lists, in order)."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    drawn: list[list[int]] = []
    original = UniformWithReplacementSampler.__iter__

    def spy(self):
        for batch in original(self):
            drawn.append([int(i) for i in batch])
            yield batch

    monkeypatch.setattr(UniformWithReplacementSampler, "__iter__", spy)
    run_inprocess(cfg)
    monkeypatch.setattr(UniformWithReplacementSampler, "__iter__", original)
    return drawn


def test_poisson_sampling_draws_from_the_noise_seed(small_config, monkeypatch):
    # Under dp-noise-seed=os the batches' membership must not follow from the published seed either, or the
    # accountant's amplification by subsampling would not hold against whoever knows it.
    run = small_config(**DP, num_rounds=1)
    assert _poisson_masks(run, monkeypatch) == _poisson_masks(run, monkeypatch)  # dp-noise-seed=run: reproducible
    os_seeded = small_config(**DP, dp_noise_seed="os", num_rounds=1)
    first, second = _poisson_masks(os_seeded, monkeypatch), _poisson_masks(os_seeded, monkeypatch)
    assert len(first) > 10 and first != second


@pytest.mark.parametrize("clipping", ["server", "client", "adaptive-server", "adaptive-client"])
def test_user_level_dp_runs_every_phase_of_a_pretraining_plan(small_config, clipping):
    cfg = small_config(dp_level="user", dp_user_clipping=clipping, plan="pretrain,finetune", pretrain_rounds=1,
                       num_rounds=1, normalize="range")  # fmt: skip
    run_dir = run_inprocess(cfg)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    releases = json.loads((run_dir / "privacy.json").read_text())["user"]["releases"]
    assert sum(r["count"] for r in releases) == 2  # one pretraining layer, one fine-tuning round


def test_the_adaptive_norm_carries_across_phases(small_config, monkeypatch):
    import flwr.serverapp.strategy.dp_adaptive_clipping as flower_adaptive

    clipped_at = []
    clip = flower_adaptive.adaptive_clip_inputs_inplace

    def spy(arrays, norm):
        clipped_at.append(norm)
        return clip(arrays, norm)

    monkeypatch.setattr(flower_adaptive, "adaptive_clip_inputs_inplace", spy)
    cfg = small_config(dp_level="user", dp_user_clipping="adaptive-server", dp_user_clipping_norm=1e-4,
                       dp_user_noise_multiplier=0.1, num_clients=6, plan="pretrain,finetune", pretrain_rounds=2,
                       num_rounds=2, normalize="range")  # fmt: skip
    run_inprocess(cfg)
    per_round = clipped_at[::6]  # pretrain-1 rounds 1-2, then finetune rounds 1-2
    assert len(per_round) == 4 and all(a < b for a, b in itertools.pairwise(per_round))
