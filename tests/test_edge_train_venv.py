"""A venv without torch, made the documented way, is the client of a 2-client, 2-round sample-DP federation.

The venv is deploy/edge-train-requirements.txt's recipe: fedtrain and flwr with ``--no-deps``, numpy, onnxruntime
and the Flower dependencies a SuperNode and its ClientApp import (no torch, Opacus, scikit-learn, scipy,
dp-accounting or uv). Two federations use it:

- the ServerApp here (main venv, in-process grid), each client a process of the fresh venv serving fedtrain's ONNX
  handlers over a pipe (:mod:`fedtrain.federation.onnx_worker`): the grid's messages are serialised with Flower's
  protobuf serde both ways, and each worker keeps its node's Context (and so its accountant) for the whole run;
- ``deploy/examples/loopback.sh`` (the deployment walkthrough: TLS, node authentication, SecAgg+, sample-level DP)
  with its two SuperNodes, their SuperExec and ClientApp processes run from the fresh venv.
"""

from __future__ import annotations

import json
import re
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


REQUIREMENTS = ROOT / "deploy" / "edge-train-requirements.txt"
# What the recipe leaves out of flwr's declared dependencies, as `pip check` names them (extras it does not check)
LEFT_OUT = {"prompt-toolkit", "uv"}
NOT_ON_A_DEVICE = ("torch", "opacus", "sklearn", "scipy", "dp_accounting", "uv", "uvloop", "prompt_toolkit")
# Written into the device venv only: every process of it (SuperNode, SuperExec, ClientApp) says which interpreter
# it is, so the deployment test knows the ClientApps ran in this venv and not in the one running the tests.
PROBE = """import os, sys
if os.environ.get("FEDTRAIN_EDGE_PROBE"):
    with open(os.environ["FEDTRAIN_EDGE_PROBE"], "a") as f:
        f.write(os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "-") + " " + sys.executable + "\\n")
"""


def _recipe() -> list[list[str]]:
    """The ``pip install`` lines at the head of the requirements file (the ones docs/edge.md shows)."""
    lines = re.findall(r"^#\s+pip install (.+)$", REQUIREMENTS.read_text(), re.M)
    assert lines == ["--no-deps <fedtrain wheel or checkout>", "-r deploy/edge-train-requirements.txt",
                     '--no-deps "flwr==1.42.*"'], lines  # fmt: skip
    return [["--no-deps", str(ROOT)], ["-r", str(REQUIREMENTS)], ["--no-deps", "flwr==1.42.*"]]


def test_the_docs_show_the_requirements_files_recipe() -> None:
    _recipe()  # the requirements file's own header
    block = (ROOT / "docs" / "edge.md").read_text().split("## Install a training device", 1)[1].split("```")[1]
    shown = [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("pip install")]
    assert shown == [
        f"pip install {line}" for line in re.findall(r"^#\s+pip install (.+)$", REQUIREMENTS.read_text(), re.M)
    ]


def _device_venv(dest: Path) -> Path:
    """``python -m venv``, then the requirements file's three lines (offline, from the machine's package index)."""
    subprocess.run([sys.executable, "-m", "venv", str(dest)], check=True, timeout=300)
    py = dest / "bin" / "python"
    for args in _recipe():
        subprocess.run([py, "-m", "pip", "install", "-q", *args], check=True, timeout=900)
    return py


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    py = _device_venv(tmp_path_factory.mktemp("device") / "venv")
    probe = f"import importlib.util as u; print([m for m in {NOT_ON_A_DEVICE!r} if u.find_spec(m)])"
    assert subprocess.run([py, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    # flwr is installed without some of what it declares: exactly the documented packages, nothing else missing
    check = subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True)
    missing = re.findall(r"^(\S+) \S+ requires ([A-Za-z0-9_.-]+)", check.stdout, re.M)
    assert {dep for pkg, dep in missing if pkg == "flwr"} == LEFT_OUT, check.stdout
    assert {pkg for pkg, _ in missing} <= {"flwr", "fedtrain"}, check.stdout  # fedtrain's: the server's packages
    site = next((py.parent.parent / "lib").glob("python3*/site-packages"))
    (site / "sitecustomize.py").write_text(PROBE)
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
def test_two_device_processes_without_torch_train_a_dp_federation(
    small_config, tmp_path: Path, device_venv: Path
) -> None:
    py = device_venv
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


# loopback.sh with its SuperNodes in the device venv, on the ONNX client, and the run's graphs published first
_ON_THE_DEVICE_VENV = [
    (
        'FLWR_HOME=$WORK/home/device-$i start "device-$i" "$NETNS_NODES" flower-supernode',
        'FLWR_HOME=$WORK/home/device-$i PATH="$EDGE_VENV/bin:$PATH" start "device-$i" "$NETNS_NODES" '
        '"$EDGE_VENV/bin/flower-supernode"',
    ),  # PATH too: a SuperNode starts flower-superexec, and that flwr-clientapp, by name
    (
        'partition-id=$i num-partitions=2"',
        "partition-id=$i num-partitions=2 client-runtime='onnx' gradient-graphs='$WORK/graphs'\"",
    ),
    (
        'cd "$REPO"\n',
        'cd "$REPO"\npython -m fedtrain.export.gradient_graph "$WORK/graphs" --run-config "data-source=\'node\' '
        "num-clients=2 server-data-path='$WORK/data/server-test.npz' normalize='range' dp-level='sample' "
        "num-rounds=$ROUNDS out-dir='$WORK/runs' progress=false $RUN_EXTRA\"\n",
    ),
]


@pytest.mark.slow
def test_supernodes_in_the_device_venv_run_the_deployment_walkthrough(tmp_path: Path, device_venv: Path) -> None:
    # TLS, node authentication, SecAgg+ and sample-level DP over real SuperNodes whose every process is the device
    # venv's: what a device installed with the requirements file runs.
    from test_deploy_e2e import SCRIPT, _assert_completed_federation, _run_walkthrough

    text = SCRIPT.read_text()
    for old, new in [*_ON_THE_DEVICE_VENV, ('REPO=$(cd "$(dirname "$0")/../.." && pwd)', f"REPO={ROOT}")]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    variant = tmp_path / "edge-loopback.sh"
    variant.write_text(text)
    probe = tmp_path / "device-processes.txt"
    venv = device_venv.parent.parent
    result, wall = _run_walkthrough(
        tmp_path, timeout=600, script=variant, LINK_PORT="19460", NODE_PORT="19461",
        # dp-defaults=false: the ONNX nodes choose their runtime in their own node config, which the DP defaults
        # cannot see (they would pick the linear model, which the gradient graphs do not cover; docs/privacy.md);
        # fraction-evaluate=0.0 is then set by hand, as the defaults would under DP
        RUN_EXTRA="secure-aggregation=true dp-defaults=false fraction-evaluate=0.0", EDGE_VENV=str(venv),
        FEDTRAIN_EDGE_PROBE=str(probe),
    )  # fmt: skip
    summary = _assert_completed_federation(result, tmp_path / "work")
    assert summary["secure_aggregation"]["halted_rounds"] == []
    started = [line.split(" ", 1) for line in probe.read_text().splitlines()]
    assert {prog for prog, _ in started} >= {"flower-supernode", "flower-superexec", "flwr-clientapp"}, started
    assert {exe for _, exe in started} == {str(device_venv)}, started
    assert sum(prog == "flwr-clientapp" for prog, _ in started) >= 4  # a ClientApp process per message
    print(f"device-venv walkthrough: {wall:.1f} s wall")
