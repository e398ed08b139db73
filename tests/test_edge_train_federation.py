"""A federation with torch and ONNX Runtime clients: one ServerApp, the same reply layout, DP over both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedtrain import wire
from fedtrain.data import data_source, server_data, spec_to_config
from fedtrain.edge.errors import EdgeModelError
from fedtrain.export.gradient_graph import publish_run_graphs
from fedtrain.federation.client import handle_train
from fedtrain.federation.dp_plan import planned_segments as torch_segments
from fedtrain.federation.onnx_client import check_supported, planned_segments, runtime_of
from fedtrain.models import build_model
from fedtrain.runtime import run_inprocess

DP_GRAPHS = ("clipped", "forward")  # what a DP client runs: trace no more
# model=mlp: ONNX nodes named in their node config are not seen by the DP defaults, whose linear model the
# gradient graphs do not cover
DP = {"dp_level": "sample", "model": "mlp", "batch_size": 30, "hidden_sizes": "16", "num_clients": 4, "num_rounds": 3}


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    """What a SuperNode sets before it calls a ClientApp (a Message needs it when built outside a run)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


def _node_configs(graphs: Path, n: int) -> list[dict]:
    return [{"client-runtime": "onnx", "gradient-graphs": str(graphs)} if i % 2 == 0 else {} for i in range(n)]


def test_mixed_runtimes_complete_a_dp_run_with_one_accountant_each(small_config, tmp_path: Path) -> None:
    cfg = small_config(**DP)
    graphs = tmp_path / "graphs"
    publish_run_graphs(cfg, graphs, kinds=DP_GRAPHS)
    run_dir = run_inprocess(cfg, node_configs=_node_configs(graphs, 4))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 3
    per_client = summary["privacy"]["sample"]["per_client"]
    assert len(per_client) == 4  # ONNX clients' replies carry the same DP evidence and history
    for client in per_client.values():
        assert 0 < client["epsilon"] <= cfg.privacy.dp_target_epsilon
    assert summary["final"]["accuracy"] > 0.3  # it learned (10 classes: chance is 0.1)


def test_onnx_reply_has_the_torch_reply_layout(small_config, tmp_path: Path) -> None:
    """Same request to a torch and an ONNX node: the same record names, array names, shapes and metric keys."""
    cfg = small_config(**DP)
    graphs = tmp_path / "graphs"
    publish_run_graphs(cfg, graphs, kinds=DP_GRAPHS)
    spec = server_data(cfg).spec
    model = build_model(cfg.model, spec.input_shape, len(spec.classes))
    config = ConfigRecord({wire.PHASE: "finetune", wire.LR: 0.1, wire.GLOBAL_ROUND: 1, **spec_to_config(spec)})
    content = RecordDict({wire.ARRAYS: ArrayRecord(model.state_dict()), wire.CONFIG: config})
    replies = {}
    for runtime in ("torch", "onnx"):
        node = {"partition-id": 0, "num-partitions": 4, "client-runtime": runtime, "gradient-graphs": str(graphs)}
        context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=cfg.to_flat())
        msg = Message(content, dst_node_id=1, message_type="train")
        replies[runtime] = handle_train(msg, context).content
    torch_reply, onnx_reply = replies["torch"], replies["onnx"]
    assert set(torch_reply.keys()) == set(onnx_reply.keys())
    ta, oa = torch_reply.array_records[wire.ARRAYS], onnx_reply.array_records[wire.ARRAYS]
    assert list(ta.keys()) == list(oa.keys())
    for k in ta:
        assert (ta[k].shape, ta[k].dtype, ta[k].stype) == (oa[k].shape, oa[k].dtype, oa[k].stype)
        assert np.isfinite(oa[k].numpy()).all()
    tm, om = torch_reply.metric_records[wire.METRICS], onnx_reply.metric_records[wire.METRICS]
    assert set(tm.keys()) == set(om.keys())
    for key in (wire.DP_SIGMA, wire.DP_SAMPLE_RATE, wire.DP_STEPS, wire.DP_EPSILON, wire.NUM_EXAMPLES):
        assert om[key] == pytest.approx(tm[key], rel=1e-9), key  # same plan, same sigma, same epsilon
    assert dict(torch_reply.config_records[wire.DP_HISTORY]) == dict(onnx_reply.config_records[wire.DP_HISTORY])


def test_planned_segments_equal_the_torch_clients(small_config) -> None:
    for overrides in ({}, {"plan": "pretrain,finetune", "pretrain_rounds": 2, "hidden_sizes": "16,8"}):
        cfg = small_config(**{**DP, **overrides})
        client = data_source(cfg, {"partition-id": 1, "num-partitions": 4}).client_data(server_data(cfg).spec)
        assert planned_segments(cfg, client) == torch_segments(cfg, client)


def test_runtime_switch_and_refusals(small_config) -> None:
    cfg = small_config()
    assert runtime_of(cfg, {}) == "torch" and runtime_of(cfg, {"client-runtime": "onnx"}) == "onnx"
    assert runtime_of(small_config(client_runtime="onnx"), {}) == "onnx"
    with pytest.raises(EdgeModelError, match="client-runtime='tf'"):
        runtime_of(cfg, {"client-runtime": "tf"})
    with pytest.raises(EdgeModelError, match="model='cnn'"):
        check_supported(small_config(model="cnn"))
    with pytest.raises(EdgeModelError, match="dp-accountant='prv'"):
        check_supported(small_config(dp_level="sample", dp_accountant="prv"))
    with pytest.raises(EdgeModelError, match="pretrain-method='rbm'"):
        check_supported(small_config(plan="pretrain,finetune", pretrain_method="rbm"))
    # a node that chose onnx in its own node config, in a run whose keys it would not honour
    with pytest.raises(EdgeModelError, match="augment='shift'"):
        check_supported(small_config(augment="shift"))
    with pytest.raises(EdgeModelError, match="normalize='dp-standard'"):
        check_supported(small_config(dp_level="sample", normalize="dp-standard"))


@pytest.mark.slow  # ten graphs to trace (two layers and fine-tuning), then a three-phase run: about a minute
def test_onnx_clients_pretrain_and_finetune_with_dp(small_config, tmp_path: Path) -> None:
    phases = {"plan": "pretrain,finetune", "pretrain_method": "denoising", "pretrain_rounds": 1}
    cfg = small_config(**{**DP, "num_rounds": 2, "hidden_sizes": "16,8", **phases})
    graphs = tmp_path / "graphs"
    manifest = publish_run_graphs(cfg, graphs, kinds=DP_GRAPHS)
    assert {"denoising-layer0-clipped", "denoising-layer1-clipped", "finetune-clipped"} <= set(manifest["graphs"])
    nodes = [{"client-runtime": "onnx", "gradient-graphs": str(graphs)}] * 4
    summary = json.loads((run_inprocess(cfg, node_configs=nodes) / "summary.json").read_text())
    assert summary["status"] == "completed" and [p["name"] for p in summary["phases"]][:2] == [
        "pretrain-1",
        "pretrain-2",
    ]
    for client in summary["privacy"]["sample"]["per_client"].values():  # one accountant over both phases
        assert 0 < client["epsilon"] <= cfg.privacy.dp_target_epsilon


@pytest.mark.slow  # SecAgg+'s four stages per round: half a minute on 2 shared cores
def test_mixed_runtimes_under_secagg_with_both_dp_levels(small_config, tmp_path: Path) -> None:
    """SecAgg+ (legacy layout, masked sums) and user-level clipping take ONNX nodes' replies unchanged."""
    cfg = small_config(num_rounds=2, dp_level="both", dp_user_clipping="client", dp_user_noise_multiplier=0.1,
                       hidden_sizes="16", secure_aggregation=True)  # fmt: skip
    graphs = tmp_path / "graphs"
    publish_run_graphs(cfg, graphs, kinds=DP_GRAPHS)
    run_dir = run_inprocess(cfg, node_configs=_node_configs(graphs, cfg.partition.num_clients))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary.get("reason")
    assert summary["privacy"]["sample"]["epsilon_max"] > 0 and summary["privacy"]["user"]["epsilon"] > 0
    assert len(summary["privacy"]["sample"]["per_client"]) == cfg.partition.num_clients


def test_budget_guard_declines_as_the_torch_client(small_config, tmp_path: Path) -> None:
    """A round that would pass the budget is declined by both runtimes alike: weights back as sent, same figures."""
    cfg = small_config(**{**DP, "dp_noise_multiplier": 0.8, "dp_target_epsilon": 2.0})
    graphs = tmp_path / "graphs"
    publish_run_graphs(cfg, graphs, kinds=DP_GRAPHS)
    spec = server_data(cfg).spec
    model = build_model(cfg.model, spec.input_shape, len(spec.classes))
    config = ConfigRecord({wire.PHASE: "finetune", wire.LR: 0.1, wire.GLOBAL_ROUND: 3, **spec_to_config(spec)})
    content = RecordDict({wire.ARRAYS: ArrayRecord(model.state_dict()), wire.CONFIG: config})
    spent = {"mechanism": "rdp", "sigma": [0.8], "q": [0.25], "steps": [40]}  # earlier rounds: epsilon just under 2
    replies = {}
    for runtime in ("torch", "onnx"):
        node = {"partition-id": 0, "num-partitions": 4, "client-runtime": runtime, "gradient-graphs": str(graphs)}
        state = RecordDict({"fedtrain-dp": ConfigRecord(spent)})
        context = Context(run_id=1, node_id=1, node_config=node, state=state, run_config=cfg.to_flat())
        replies[runtime] = handle_train(Message(content, dst_node_id=1, message_type="train"), context).content
    tm, om = (replies[r].metric_records[wire.METRICS] for r in ("torch", "onnx"))
    assert tm[wire.DP_DECLINED] == om[wire.DP_DECLINED] == 1 and om[wire.NUM_EXAMPLES] == 0
    assert abs(float(om[wire.DP_EPSILON]) - float(tm[wire.DP_EPSILON])) < 1e-9
    sent = model.state_dict()
    for k, v in replies["onnx"].array_records[wire.ARRAYS].items():
        np.testing.assert_array_equal(v.numpy(), sent[k].numpy())


def test_the_shipped_client_app_loads_where_torch_cannot_be_imported() -> None:
    # A torch-free SuperNode loads clients.client_app:app (what flwr runs); each node picks its handlers at its
    # first message, so only a node on client-runtime='torch' ever imports torch.
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "for m in ('torch', 'opacus', 'sklearn'): sys.modules[m] = None\n"
        "import clients.client_app as c\n"
        "from fedtrain.federation.handlers import runtime_handlers\n"
        "from flwr.app import Context, RecordDict\n"
        "node = {'client-runtime': 'onnx'}\n"
        "ctx = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})\n"
        "train, _ = runtime_handlers(ctx)\n"
        "assert train.__module__ == 'fedtrain.federation.onnx_client', train.__module__\n"
        "print(type(c.app).__name__)\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ClientApp"
