"""A venv without torch, made the documented way, is the client of a 2-client, 2-round sample-DP federation.

The ServerApp runs here (main venv, in-process grid); each client is a process of the fresh venv, which has no
torch, Opacus or scikit-learn installed at all, serving fedtrain's ONNX handlers over a pipe
(:mod:`fedtrain.federation.onnx_worker`): the grid's messages are serialised with Flower's protobuf serde both ways,
and each worker keeps its node's Context (and so its accountant) for the whole run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage

from fedtrain.data import load_digits
from fedtrain.export.gradient_graph import publish_run_graphs
from fedtrain.federation.onnx_worker import OK, read_frame, write_frame
from fedtrain.runtime import run_inprocess
from fedtrain.runtime.grid import InProcessGrid

ROOT = Path(__file__).resolve().parents[1]


def _device_venv(dest: Path) -> Path:
    """``python -m venv``, then docs/edge.md's two lines (offline, from the machine's package index)."""
    subprocess.run([sys.executable, "-m", "venv", str(dest)], check=True, timeout=300)
    py = dest / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(ROOT)], check=True, timeout=600)
    req = ROOT / "deploy" / "edge-train-requirements.txt"
    subprocess.run([py, "-m", "pip", "install", "-q", "-r", str(req)], check=True, timeout=900)
    return py


class Bridge:
    """One device process per node; the ClientApp below forwards each message to its node's process."""

    def __init__(self, py: Path, cwd: Path) -> None:
        self.py, self.cwd = py, cwd
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def call(self, msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid not in self.procs:
            proc = subprocess.Popen(
                [str(self.py), "-m", "fedtrain.federation.onnx_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                cwd=self.cwd,
            )  # fmt: skip
            spec = {"node_id": context.node_id, "node_config": dict(context.node_config),
                    "run_config": dict(context.run_config)}  # fmt: skip
            assert proc.stdin is not None
            write_frame(proc.stdin, json.dumps(spec).encode())  # type: ignore[arg-type]
            self.procs[pid] = proc
        proc = self.procs[pid]
        assert proc.stdin is not None and proc.stdout is not None
        write_frame(proc.stdin, message_to_proto(msg).SerializeToString())  # type: ignore[arg-type]
        frame = read_frame(proc.stdout)  # type: ignore[arg-type]
        assert frame is not None, f"device {pid} exited"
        if frame[:1] != OK:
            raise RuntimeError(f"device {pid} failed:\n{frame[1:].decode()}")
        reply = message_from_proto(ProtoMessage.FromString(frame[1:]))
        return Message(reply.content, reply_to=msg)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.slow
def test_two_device_processes_without_torch_train_a_dp_federation(small_config, tmp_path: Path) -> None:
    py = _device_venv(tmp_path / "venv")
    probe = "import importlib.util as u; print([m for m in ('torch', 'opacus', 'sklearn') if u.find_spec(m)])"
    assert subprocess.run([py, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    cfg = small_config(dp_level="sample", num_clients=2, num_rounds=2, min_clients=2, batch_size=30,
                       hidden_sizes="16")  # fmt: skip
    graphs = tmp_path / "graphs"
    publish_run_graphs(cfg, graphs)
    digits = load_digits()
    nodes = []
    for i, part in enumerate(np.array_split(np.random.default_rng(0).permutation(len(digits.y)), 2)):
        path = tmp_path / f"node{i}.npz"
        np.savez(path, x=digits.x[part], y=np.array(digits.classes)[digits.y[part]])
        nodes.append({"data-path": str(path), "client-runtime": "onnx", "gradient-graphs": str(graphs)})
    bridge = Bridge(py, tmp_path)
    app = ClientApp()
    app.train()(bridge.call)
    app.evaluate()(bridge.call)
    try:
        grid = InProcessGrid(app, 2, cfg.to_flat(), node_configs=nodes)
        summary = json.loads((run_inprocess(cfg, grid=grid) / "summary.json").read_text())
    finally:
        bridge.close()
    assert summary["status"] == "completed" and summary["rounds"] == 2
    per_client = summary["privacy"]["sample"]["per_client"]
    assert len(per_client) == 2
    for client in per_client.values():
        assert 0 < client["epsilon"] <= cfg.privacy.dp_target_epsilon
    assert summary["final"]["accuracy"] > 0.2  # two noisy rounds: above chance (0.1)
