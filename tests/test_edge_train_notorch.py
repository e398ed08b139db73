"""The ONNX client trains in a process where torch, Opacus, scikit-learn, scipy and dp-accounting cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedtrain import wire
from fedtrain.data import load_digits, server_data, spec_to_config
from fedtrain.export.gradient_graph import publish_run_graphs
from fedtrain.models import build_model
from fedtrain.privacy.accountant import ClientAccountant

ROOT = Path(__file__).resolve().parents[1]
DP_GRAPHS = ("clipped", "forward")  # what a DP client runs: trace no more
BLOCKED = ("torch", "opacus", "sklearn", "functorch", "torchvision", "scipy", "dp_accounting")

_SCRIPT = """
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked on the device: " + name)
sys.meta_path.insert(0, Block())
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # what a SuperNode sets for its app
from fedtrain.edge.train import accountant, graph, optim, sampling, trainer  # noqa: F401
from fedtrain.federation.onnx_app import build_onnx_client_app
app = build_onnx_client_app()  # the ClientApp with its mods (SecAgg+, user-level clipping): no torch either
w = np.load({weights!r})
spec = json.loads(open({spec!r}).read())
node = {{"data-path": {data!r}, "partition-id": 0, "num-partitions": 2, "gradient-graphs": {graphs!r},
        "client-runtime": "onnx"}}
context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=json.loads({run!r}))
arrays = {{k: w[k] for k in w.files}}
out = {{"rounds": []}}
for rnd in (1, 2):
    config = ConfigRecord({{"phase": "finetune", "lr": 0.1, "global-round": rnd, **spec}})
    content = RecordDict({{"arrays": ArrayRecord({{k: Array(v) for k, v in arrays.items()}}), "config": config}})
    reply = app(Message(content, dst_node_id=1, message_type="train"), context).content
    arrays = {{k: reply["arrays"][k].numpy() for k in reply["arrays"]}}
    m = dict(reply["metrics"])
    out["rounds"].append({{"epsilon": m["dp-epsilon"], "sigma": m["dp-sigma"], "q": m["dp-q"], "steps": m["dp-steps"],
                          "finite": bool(all(np.isfinite(v).all() for v in arrays.values()))}})
ev = app(Message(content, dst_node_id=1, message_type="evaluate"), context).content
out["eval"] = dict(ev["metrics"])
out["loaded"] = sorted(m for m in {watched!r} if m in sys.modules)
print(json.dumps(out))
"""


@pytest.mark.parametrize("blocked", [BLOCKED, ()], ids=["device-without-torch", "torch-installed"])
def test_onnx_client_trains_two_dp_rounds_without_torch(small_config, tmp_path: Path, blocked) -> None:
    # Where torch is installed the ONNX client must not import it either: a fresh process per message pays it.
    cfg = small_config(dp_level="sample", model="mlp", batch_size=30, hidden_sizes="16", num_clients=2,
                       client_eval_fraction=0.2)  # fmt: skip
    graphs = tmp_path / "graphs"
    publish_run_graphs(cfg, graphs, kinds=DP_GRAPHS)
    spec = server_data(cfg).spec
    model = build_model(cfg.model, spec.input_shape, len(spec.classes))
    np.savez(tmp_path / "w.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    digits = load_digits()
    np.savez(tmp_path / "node.npz", x=digits.x[:300], y=np.array(digits.classes)[digits.y[:300]])
    (tmp_path / "spec.json").write_text(json.dumps(spec_to_config(spec)))
    script = _SCRIPT.format(
        blocked=blocked, watched=BLOCKED, weights=str(tmp_path / "w.npz"), spec=str(tmp_path / "spec.json"),
        data=str(tmp_path / "node.npz"), graphs=str(graphs), run=json.dumps(cfg.to_flat()),
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120, env=env,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    first, second = out["rounds"]
    assert first["finite"] and second["finite"]
    assert second["steps"] == 2 * first["steps"] > 0  # one whole-run accountant in Context.state
    expected = ClientAccountant("rdp", [(first["sigma"], first["q"], second["steps"])]).epsilon(cfg.privacy.dp_delta)
    assert abs(second["epsilon"] - expected) < 1e-9
    assert second["epsilon"] <= cfg.privacy.dp_target_epsilon
    assert 0.0 <= out["eval"][wire.EVAL_ACCURACY] <= 1.0 and out["eval"][wire.NUM_EXAMPLES] > 0
