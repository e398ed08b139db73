"""The warm worker: a node's messages answered by one long-lived process, exactly as its fresh ClientApp would."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Client
from pathlib import Path

import numpy as np
import pytest

from fedtrain.federation.warm_worker import WarmWorkerError, key_path, relay, serve

ROOT = Path(__file__).resolve().parents[1]

# One message through the deployed ClientApp (clients.client_app:app, mods included) in a fresh process, as a
# SuperNode runs it: the reply's arrays and the node's new Context.state go to OUT, with what the process imported.
_FRESH = """
import json, pickle, sys
import numpy as np
import clients.client_app as ca
from flwr.common.serde import recorddict_to_proto
msg, ctx = pickle.loads(open(sys.argv[1], 'rb').read())
if sys.argv[3]:
    ctx.node_config['warm-worker'] = sys.argv[3]
reply = ca.app(msg, ctx)
assert not reply.has_error(), reply.error
arrays = {f"{r}/{k}": a.numpy() for r, rec in reply.content.array_records.items() for k, a in rec.items()}
np.savez(sys.argv[2], **arrays)
open(sys.argv[2] + '.state', 'wb').write(recorddict_to_proto(ctx.state).SerializeToString())
metrics = {r: dict(rec) for r, rec in reply.content.metric_records.items()}
print(json.dumps({"torch": "torch" in sys.modules, "metrics": metrics}))
"""


def _fresh(message: Path, out: Path, socket_path: Path | str = "") -> dict:
    proc = subprocess.run([sys.executable, "-c", _FRESH, str(message), str(out), str(socket_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _serving_worker(sock: Path) -> Iterator[tuple[Path, Path]]:
    """A warm worker serving on ``sock`` (and its log file); stopped by its PID (SIGTERM) afterwards, which must end
    it cleanly: exit status 0, socket and key removed."""
    log = sock.parent.parent / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    code = f"from fedtrain.federation.warm_worker import serve; serve({str(sock)!r})"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    deadline = time.monotonic() + 120
    while not key_path(sock).exists():  # written once the socket is bound: the worker serves
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the warm worker did not come up: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    yield sock, log
    proc.terminate()
    proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-2000:]  # a stop signal is a normal end (systemd: not a failure)
    assert not sock.exists() and not key_path(sock).exists(), "the worker left its socket or key behind"


@pytest.fixture
def worker(request, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A worker of this test's own. ``long``: a socket path over the 107 bytes a Unix socket address holds."""
    long = getattr(request, "param", "short") == "long"
    folder = tmp_path / ("deep" * 30) / "worker" if long else tmp_path / "worker"
    yield from _serving_worker(folder / "w.sock")


@pytest.fixture(scope="module")
def shared_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """One worker for the tests that only send it messages (torch's import, about 4 s, paid once)."""
    yield from _serving_worker(tmp_path_factory.mktemp("shared") / "worker" / "w.sock")


@pytest.mark.parametrize(("name", "worker"), [("plain", "short"), ("dp", "short"), ("plain", "long")],
                         indirect=["worker"])  # fmt: skip
def test_a_relayed_message_gives_the_fresh_processs_reply_and_state_without_importing_torch(
    name, train_messages, worker, tmp_path
):
    sock, _ = worker
    alone = _fresh(train_messages[name], tmp_path / "alone.npz")
    relayed = _fresh(train_messages[name], tmp_path / "relayed.npz", sock)
    assert alone["torch"] and not relayed["torch"]  # the relaying process never imports torch
    assert relayed["metrics"] == alone["metrics"]
    a, b = np.load(tmp_path / "alone.npz"), np.load(tmp_path / "relayed.npz")
    assert sorted(a.files) == sorted(b.files) and a.files
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])  # same seeds, same batches and noise: the same arrays
    state = (tmp_path / "relayed.npz.state").read_bytes()
    assert state == (tmp_path / "alone.npz.state").read_bytes()
    if name == "dp":
        assert relayed["metrics"]["metrics"]["dp-epsilon"] > 0 and len(state) > 0  # the accountant came back


def test_without_a_worker_the_client_app_handles_the_message_itself(train_messages, tmp_path, fedtrain_log):
    from fedtrain.federation import build_client_app

    msg, ctx = pickle.loads(train_messages["plain"].read_bytes())
    ctx.node_config["warm-worker"] = str(tmp_path / "nobody" / "w.sock")
    reply = build_client_app()(msg, ctx)
    assert not reply.has_error() and reply.content.array_records
    assert any("no warm worker on" in line and "fedtrain deploy worker" in line for line in fedtrain_log)


def test_a_failure_in_the_worker_leaves_the_state_alone_and_the_worker_goes_on(
    train_messages, shared_worker, fedtrain_log
):
    sock, _ = shared_worker
    msg, ctx = pickle.loads(train_messages["dp"].read_bytes())
    reply = relay(sock, "train", msg, ctx)
    assert reply is not None and reply.content.array_records
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert "fedtrain-dp" in ctx.state  # the accountant of the message that ran came back
    before = ctx.state
    broken, _ = pickle.loads(train_messages["dp"].read_bytes())
    del broken.content.config_records["config"]  # a train message without its config (and data spec)
    assert relay(sock, "train", broken, ctx) is None  # the ClientApp then handles it itself
    assert any("could not answer (DataError: the server's message carries no data spec" in x for x in fedtrain_log)
    assert ctx.state is before  # nothing of the failed attempt was kept
    assert relay(sock, "train", msg, ctx) is not None  # and the worker goes on


def test_one_worker_answers_message_after_message_as_the_node_itself_would(train_messages, shared_worker):
    from fedtrain.federation.handlers import message_handler

    sock, _ = shared_worker
    for name in ("plain", "dp", "plain", "dp"):
        msg, ctx = pickle.loads(train_messages[name].read_bytes())
        here_msg, here_ctx = pickle.loads(train_messages[name].read_bytes())
        relayed = relay(sock, "train", msg, ctx)
        here = message_handler("train", here_ctx)(here_msg, here_ctx)
        assert relayed is not None
        for key, record in here.content.array_records.items():
            for k, a in record.items():
                np.testing.assert_array_equal(relayed.content.array_records[key][k].numpy(), a.numpy())
        assert dict(relayed.content.metric_records["metrics"]) == dict(here.content.metric_records["metrics"])
        assert sorted(ctx.state.keys()) == sorted(here_ctx.state.keys())


def test_a_worker_that_stops_mid_message_changes_nothing(train_messages, tmp_path, fedtrain_log):
    """A stand-in worker (the real key exchange) that reads the request, then hangs up, or sends half an answer."""
    import threading
    from multiprocessing.connection import Listener

    msg, ctx = pickle.loads(train_messages["dp"].read_bytes())
    for half in (b"", b"K"):
        folder = tmp_path / f"fake{len(half)}"
        folder.mkdir(mode=0o700)
        sock, key = folder / "w.sock", os.urandom(32)
        key_path(sock).write_bytes(key)
        key_path(sock).chmod(0o600)
        listener = Listener(str(sock), family="AF_UNIX", authkey=key)

        def fake(reply: bytes = half, listener: Listener = listener) -> None:
            with listener.accept() as conn:
                for _ in range(3):
                    conn.recv_bytes()
                if reply:
                    conn.send_bytes(reply)  # the status, then nothing

        thread = threading.Thread(target=fake)
        thread.start()
        assert relay(sock, "train", msg, ctx) is None
        thread.join(timeout=30)
        listener.close()
        assert dict(ctx.state) == {}
    assert sum("gave no reply" in line for line in fedtrain_log) == 2


def test_an_unreadable_request_or_a_silent_caller_does_not_stop_the_worker(train_messages, shared_worker, monkeypatch):
    sock, _ = shared_worker
    key = key_path(sock).read_bytes()
    monkeypatch.chdir(sock.parent)  # a relative address: the long socket path does not fit one
    silent = Client(sock.name, family="AF_UNIX", authkey=key)  # authenticated, then says nothing
    with Client(sock.name, family="AF_UNIX", authkey=key) as garbage:
        garbage.send_bytes(b"not json")
        assert garbage.recv_bytes().startswith(b"E")
    monkeypatch.undo()
    msg, ctx = pickle.loads(train_messages["plain"].read_bytes())
    t0 = time.monotonic()
    assert relay(sock, "train", msg, ctx) is not None  # answered while the silent caller still holds its connection
    assert time.monotonic() - t0 < 20  # not after the worker's 60 s wait for the silent caller's frames
    silent.close()


def test_a_caller_without_the_key_is_refused_and_the_worker_goes_on(train_messages, shared_worker, monkeypatch):
    from multiprocessing import AuthenticationError

    sock, _ = shared_worker
    monkeypatch.chdir(sock.parent)  # a relative address: the long socket path does not fit one
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        Client(sock.name, family="AF_UNIX", authkey=b"not the key")
    monkeypatch.undo()
    msg, ctx = pickle.loads(train_messages["plain"].read_bytes())
    assert relay(sock, "evaluate", msg, ctx) is not None


def test_the_socket_folder_must_be_private_and_one_worker_serves_a_socket(shared_worker, tmp_path):
    sock, _ = shared_worker
    with pytest.raises(WarmWorkerError, match="already serves"):
        serve(sock)
    assert sock.exists()  # the running worker's socket was left alone
    open_folder = tmp_path / "open"
    open_folder.mkdir(mode=0o755)
    os.chmod(open_folder, 0o755)
    with pytest.raises(WarmWorkerError, match="chmod 700"):
        serve(open_folder / "w.sock")
    with pytest.raises(WarmWorkerError, match="longer than"):  # a long folder is reached through its descriptor
        serve(tmp_path / "w" / ("x" * 120 + ".sock"))
    (tmp_path / "w" / "file.sock").write_text("not a socket")
    with pytest.raises(WarmWorkerError, match="is not a socket"):
        serve(tmp_path / "w" / "file.sock")
    assert (tmp_path / "w" / "file.sock").read_text() == "not a socket"  # left alone


def test_a_socket_file_left_by_a_killed_worker_is_replaced(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir(mode=0o700)
    stale = folder / "w.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))
    dead.close()  # the file stays, nothing listens
    assert stale.exists()
    code = f"from fedtrain.federation.warm_worker import serve; print(serve({str(stale)!r}, max_messages=1))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not key_path(stale).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        conn = Client(str(stale), family="AF_UNIX", authkey=key_path(stale).read_bytes())
        conn.close()  # one connection that sends nothing: the worker counts it and stops (max_messages=1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "1" and not stale.exists()


def test_the_worker_command_refuses_a_folder_that_is_not_a_devices(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedtrain.deploy.cli", "deploy", "worker", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 7
    assert proc.stderr.strip().splitlines() == [
        f"error: point DEVICE_DIR at a devices/<name> folder of `fedtrain deploy init` (got {tmp_path.resolve()})"
    ]


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the worker answered, per message the ClientApp relayed (in order)."""
    import fedtrain.federation.apps as apps

    calls: list[bool] = []

    def counting_relay(*args, **kwargs):
        reply = relay(*args, **kwargs)
        calls.append(reply is not None)
        return reply

    monkeypatch.setattr(apps, "relay", counting_relay)
    return calls


def test_secure_aggregation_runs_its_mod_around_the_relay(shared_worker, small_config, fedtrain_log, answered):
    """SecAgg+ masks in the ClientApp's process while the worker trains (the legacy layout crosses the relay)."""
    from fedtrain.runtime import run_inprocess

    sock, _ = shared_worker
    results = {}
    for arm, nodes in (("alone", None), ("relayed", [{"warm-worker": str(sock)}] * 3)):
        cfg = small_config(secure_aggregation=True, fraction_evaluate=0.0, out_dir=str(sock.parent.parent / arm))
        run_dir = run_inprocess(cfg, node_configs=nodes)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["secure_aggregation"]["halted_rounds"] == []
        results[arm] = summary["final"]["accuracy"]
    assert answered == [True] * 6  # 3 nodes x 2 rounds, every train message answered by the worker
    assert not [line for line in fedtrain_log if "warm worker" in line and "handl" in line]  # no fallback
    assert abs(results["relayed"] - results["alone"]) <= 0.02  # the same run up to SecAgg+'s stochastic rounding


def test_one_worker_serves_torch_and_onnx_nodes_of_a_dp_run(shared_worker, small_config, answered, tmp_path):
    """Each message's context picks the runtime in the worker too: half the nodes on ONNX Runtime, under DP."""
    from fedtrain.export.gradient_graph import publish_run_graphs
    from fedtrain.runtime import run_inprocess

    sock, log = shared_worker
    cfg = small_config(dp_level="sample", model="mlp", batch_size=30, hidden_sizes="16", num_clients=4,
                       num_rounds=2, fraction_evaluate=0.0)  # fmt: skip
    graphs = tmp_path / "graphs"
    publish_run_graphs(cfg, graphs, kinds=("clipped", "forward"))
    onnx = {"client-runtime": "onnx", "gradient-graphs": str(graphs)}
    nodes = [{**(onnx if i % 2 == 0 else {}), "warm-worker": str(sock)} for i in range(4)]
    lines_before = log.read_text().count("\n")
    summary = json.loads((run_inprocess(cfg, node_configs=nodes) / "summary.json").read_text())
    assert summary["status"] == "completed" and answered == [True] * 8  # 4 nodes x 2 rounds, all by the worker
    answers = [x for x in log.read_text().splitlines()[lines_before:] if "answered a train message" in x]
    assert sum("(onnx client)" in x for x in answers) == 4 and sum("(torch client)" in x for x in answers) == 4
    per_client = summary["privacy"]["sample"]["per_client"]
    assert len(per_client) == 4 and all(0 < c["epsilon"] <= cfg.privacy.dp_target_epsilon for c in per_client.values())


def test_a_socket_the_client_app_cannot_trust_or_another_version_is_not_used(
    train_messages, shared_worker, tmp_path, monkeypatch, fedtrain_log
):
    import fedtrain

    msg, ctx = pickle.loads(train_messages["plain"].read_bytes())
    open_folder = tmp_path / "open"  # anyone could have put a socket (and a key) here
    open_folder.mkdir()
    os.chmod(open_folder, 0o755)
    (open_folder / "w.sock.key").write_bytes(b"k" * 32)
    assert relay(open_folder / "w.sock", "train", msg, ctx) is None
    assert any("no warm worker on" in x and "open to other users" in x for x in fedtrain_log)
    sock, _ = shared_worker
    monkeypatch.setattr(fedtrain, "__version__", "0.0.0-other")  # a ClientApp of another fedtrain than the worker's
    assert relay(sock, "train", msg, ctx) is None
    assert any("could not answer" in x and "restart it" in x for x in fedtrain_log)
    monkeypatch.undo()
    assert relay(sock, "train", msg, ctx) is not None
