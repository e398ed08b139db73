"""A real federation over Flower's Deployment Engine: SuperLink with TLS and node authentication, registered SuperNodes.

The end-to-end tests run ``deploy/examples/loopback.sh``, the script ``docs/deploy.md`` shows word for word, with
their own ports (19400-19499), work folder and one ``FLWR_HOME`` per process. Every process they start carries a tag
in its environment; teardown stops each tagged process by its PID and asserts that none is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "examples" / "loopback.sh"
DOC = ROOT / "docs" / "deploy.md"
TAG = "FEDTRAIN_DEPLOY_TEST_TAG"
BIN = Path(sys.executable).parent
_RUN_DIR = re.compile(r"fedtrain run (\S+): ")
Completed = subprocess.CompletedProcess[str]


# --- process bookkeeping: by PID, through a tag every descendant inherits ------------------------------------


def _tagged_pids(tag: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries ``TAG=tag``: everything a test started."""
    needle = f"{TAG}={tag}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0") and _alive(int(proc.name)):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop(tag: str, leaders: list[subprocess.Popen[str]], grace: float = 20.0) -> None:
    """SIGTERM the leaders' process groups and every tagged PID, wait, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in leaders:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
        for pid in _tagged_pids(tag):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _tagged_pids(tag):
            time.sleep(0.3)
        if not _tagged_pids(tag):
            break
    for p in leaders:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _env(tag: str, **extra: str) -> dict[str, str]:
    """This environment's tools first, installs switched off, and the tag every descendant inherits."""
    return {
        **os.environ,
        TAG: tag,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        **extra,
    }


def _run_walkthrough(
    tmp_path: Path, timeout: float = 900.0, script: Path = SCRIPT, **env: str
) -> tuple[Completed, float]:
    """Run loopback.sh with its own work folder and the given ports; stop all it started; return (result, wall s)."""
    tag = uuid.uuid4().hex
    run_env = _env(tag, WORK=str(tmp_path / "work"), **env)
    proc = subprocess.Popen(
        ["bash", str(script)], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = (proc.communicate()[0] or "") + f"\nloopback.sh timed out after {timeout} s"
    finally:
        wall = time.perf_counter() - t0
        _stop(tag, [proc])
    assert _tagged_pids(tag) == [], "a process the walkthrough started is still alive"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, ""), wall


def _ports(first: int, devices: int = 2, last: int = 19499) -> dict[str, str]:
    """``LINK_PORT`` and ``NODE_PORT`` for loopback.sh: the first free block of ``1 + devices`` ports from ``first``.

    The SuperLink takes the first, SuperNode i ``NODE_PORT + i``. Fixed ports failed a run on a shared machine
    when another process held one ("address already in use"); a block is probed by binding each port.
    """
    for start in range(first, last - devices + 1):
        held: list[socket.socket] = []
        try:
            for port in range(start, start + 1 + devices):
                held.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                held[-1].bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return {"LINK_PORT": str(start), "NODE_PORT": str(start + 1)}
    raise RuntimeError(f"no {1 + devices} free consecutive ports on 127.0.0.1 in {first}-{last}")


def _assert_completed_federation(result: subprocess.CompletedProcess[str], work: Path) -> dict:
    """The run folder of a 2-node, 2-round sample-DP run: the in-process summary contract, ε per node."""
    assert result.returncode == 0, result.stdout[-4000:]
    match = _RUN_DIR.search(result.stdout)
    assert match, result.stdout[-4000:]
    run_dir = Path(match.group(1))
    assert run_dir.parent == work / "runs" and f"run folder: {run_dir}/" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # the same contract as tests/test_inprocess_run.py
    assert summary["status"] == "completed" and summary["rounds"] == 2 and summary["num_clients"] == 2
    assert [(r["phase"], r["round"]) for r in records] == [("finetune", 1), ("finetune", 2)]
    assert [r["clients_trained"] for r in records] == [2, 2]
    assert summary["final"]["accuracy"] == records[-1]["test_accuracy"] and 0.0 <= records[-1]["test_accuracy"] <= 1
    assert summary["best"]["round"] in (1, 2) and summary["best"]["selected_by"] == "validation"
    assert summary["phases"][0]["name"] == "finetune" and summary["wall_seconds"] > 0
    assert summary["config"]["data-source"] == "node" and summary["config"]["dp-level"] == "sample"
    assert {"config.toml", "privacy.json", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    assert summary["participants"] == {"0": 2, "1": 2}  # both devices, both rounds
    # ε per node: one accountant per SuperNode (keyed by its partition-id), each within the budget
    sample = summary["privacy"]["sample"]
    assert set(sample["per_client"]) == {"0", "1"} and sample["clients_with_dp"] == 2
    for node in sample["per_client"].values():
        assert 0.0 < node["epsilon"] <= sample["target_epsilon"] and node["steps"] > 0
    assert sample["epsilon_max"] == max(n["epsilon"] for n in sample["per_client"].values())
    assert set(json.loads((run_dir / "privacy.json").read_text())["sample"]["clients"]) == {"0", "1"}
    # each node read its own file: the two devices were online under their own keys, with their own data
    for i in (0, 1):
        assert (work / "data" / f"client-{i}.npz").is_file()
        assert "SuperNode ID" in (work / "logs" / f"device-{i}.log").read_text()
    assert (work / "superlink.db").is_file()  # persistent state
    return summary


# --- the doc shows the script word for word ------------------------------------------------------------------


def test_the_deploy_doc_shows_the_walkthrough_script_word_for_word():
    doc = DOC.read_text()
    block = re.search(r"<!-- loopback\.sh: begin -->\n```bash\n(.*?)```\n<!-- loopback\.sh: end -->", doc, re.S)
    assert block, "docs/deploy.md lost the loopback.sh block markers"
    assert block.group(1) == SCRIPT.read_text()


# --- loopback, end to end ------------------------------------------------------------------------------------


# In the default run (about a minute): CI must see a real deployment complete, not only its refusals.
# With a warm worker per device (the recommended set-up); the slow SecAgg+ run below goes without.
def test_loopback_federation_with_tls_node_auth_and_sample_dp(tmp_path):
    result, wall = _run_walkthrough(tmp_path, **_ports(19400), WARM_WORKER="1")
    work = tmp_path / "work"
    _assert_completed_federation(result, work)
    assert "registered successfully" in result.stdout and result.stdout.count("online") >= 2
    for i in (0, 1):  # every train message of both rounds was answered by the device's own worker
        worker_log = (work / "logs" / f"worker-{i}.log").read_text()
        assert worker_log.count("answered a train message") == 2, worker_log[-2000:]
        assert "no warm worker" not in (work / "logs" / f"device-{i}.log").read_text()
        assert not (work / "kit" / "devices" / f"device-{i}" / "worker" / "worker.sock").exists()  # stopped, removed
    print(f"loopback walkthrough: {wall:.1f} s wall")


@pytest.mark.slow
def test_secure_aggregation_over_the_deployment(tmp_path):
    # SecAgg+'s four stages over real SuperNodes, with sample-level DP (issue 10 asks for a real deployment)
    result, wall = _run_walkthrough(tmp_path, **_ports(19420), RUN_EXTRA="secure-aggregation=true")
    summary = _assert_completed_federation(result, tmp_path / "work")
    secagg = summary["secure_aggregation"]
    assert secagg["shares"] == 2 and secagg["halted_rounds"] == [] and secagg["clipped"] == 0
    print(f"SecAgg+ walkthrough: {wall:.1f} s wall")


# --- refusals: an unregistered key, an insecure node against the TLS link --------------------------------------


def test_unregistered_key_and_insecure_node_are_refused(tmp_path):
    tag = uuid.uuid4().hex
    env = _env(tag)
    kit, port = tmp_path / "kit", 19410
    init = subprocess.run(
        ["fedtrain", "deploy", "init", kit, "--superlink-host", "127.0.0.1", "--devices", "1", "--port", str(port)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    homes = {n: tmp_path / "home" / n for n in ("superlink", "stranger", "insecure")}
    for home in homes.values():
        home.mkdir(parents=True)
    logs = tmp_path / "superlink.log"
    started: list[subprocess.Popen[str]] = []
    try:
        with logs.open("w") as log:
            link = subprocess.Popen(
                [BIN / "flower-superlink", "--ssl-ca-certfile", kit / "ca.crt", "--ssl-certfile", kit / "superlink.crt",
                 "--ssl-keyfile", kit / "superlink.key", "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port)],
                env={**env, "FLWR_HOME": str(homes["superlink"])}, stdout=log, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )  # fmt: skip
        started.append(link)
        deadline = time.monotonic() + 60
        while "Uvicorn running" not in logs.read_text():
            assert link.poll() is None and time.monotonic() < deadline, logs.read_text()[-2000:]
            time.sleep(0.3)
        node = [BIN / "flower-supernode", "--superlink", f"127.0.0.1:{port}", "--host", "127.0.0.1",
                "--max-retries", "1", "--max-wait-time", "5"]  # fmt: skip
        # device-0's key is in the kit but was never registered; the other node speaks plain http to the TLS port
        stranger = [*node, "--port", str(port + 1), "--root-certificates", kit / "ca.crt",
                           "--auth-supernode-private-key", kit / "devices" / "device-0" / "auth.key"]  # fmt: skip
        insecure = [*node, "--port", str(port + 2), "--insecure"]
        # output to files: the SuperNode's SuperExec child may hold a pipe open after the SuperNode exited
        procs = {}
        for name, cmd in (("stranger", stranger), ("insecure", insecure)):
            with (tmp_path / f"{name}.log").open("w") as out:
                procs[name] = subprocess.Popen(
                    cmd, env={**env, "FLWR_HOME": str(homes[name])}, stdout=out, stderr=subprocess.STDOUT, text=True,
                    start_new_session=True,
                )  # fmt: skip
            started.append(procs[name])
        for p in procs.values():
            p.wait(timeout=120)
        outputs = {name: (tmp_path / f"{name}.log").read_text() for name in procs}
    finally:
        _stop(tag, started)
    assert _tagged_pids(tag) == []
    for name, p in procs.items():
        assert p.returncode != 0, outputs[name][-2000:]
    assert "[code: 2004] Failed to activate SuperNode" in outputs["stranger"]
    # what tells the two apart (the walkthrough's one-line message keys on it)
    assert "Exit Code: 305" in outputs["insecure"] and "[code: 2004]" not in outputs["insecure"]
    assert "Exit Code: 305" not in logs.read_text()  # the SuperLink itself kept serving
    # `fedtrain deploy supernode --supervise` turns exactly these outputs into one line each
    from fedtrain.deploy.launch import explain_supernode_exit

    assert "refused this device's key" in (explain_supernode_exit(outputs["stranger"]) or "")
    assert "no connection to the SuperLink" in (explain_supernode_exit(outputs["insecure"]) or "")


def test_the_walkthrough_states_an_unregistered_device_in_one_line(tmp_path):
    # The walkthrough without its registration step: the first SuperNode is refused, and the script says so in one
    # line and stops everything it started.
    register = '  FLWR_HOME=$CLI_HOME on_nodes flwr supernode register "$KIT/devices/device-$i/auth.key.pub" fedtrain\n'
    text = SCRIPT.read_text()
    assert text.count(register) == 1
    variant = tmp_path / "deploy" / "examples" / "unregistered.sh"
    variant.parent.mkdir(parents=True)
    variant.write_text(text.replace(register, "  true\n"))
    result, _ = _run_walkthrough(tmp_path, timeout=300, script=variant, **_ports(19415))
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: device-0 did not come up: the SuperLink refused its key (not registered); "
        f"see {tmp_path / 'work' / 'logs' / 'device-0.log'}"
    ], result.stdout[-3000:]
    assert "run config:" in result.stdout and "Successfully started run" not in result.stdout


# --- a device that disconnects mid-round ------------------------------------------------------------------------

# The walkthrough with a third device that is killed (SIGKILL, its whole process group) as soon as it receives
# round 1's train message: the server waits round-timeout for it, then aggregates the other two.
_THREE_DEVICES = [
    ("--devices 2", "--devices 3"),
    ('"num-clients=2 partitioner=iid', '"num-clients=3 partitioner=iid'),
    ("for i in 0 1; do", "for i in 0 1 2; do"),
    ("num-partitions=2", "num-partitions=3"),
    ('wait_for device-1 "SuperNode ID"\n', 'wait_for device-1 "SuperNode ID"\nwait_for device-2 "SuperNode ID"\n'),
    (
        "--run-config \"data-source='node' num-clients=2 ",
        "--run-config \"data-source='node' num-clients=3 min-clients=2 round-timeout=25 ",
    ),
    (
        'echo $! >"$WORK/pids/flwr-run.pid"\n',
        'echo $! >"$WORK/pids/flwr-run.pid"\n'
        '( until grep -q "Receiving: train message" "$WORK/logs/device-2.log"; do sleep 0.2; done\n'
        '  kill -KILL -- "-$(cat "$WORK/pids/device-2.pid")"; echo "device-2 disconnected mid-round" ) &\n',
    ),
    ("wait $!  ", 'wait "$(cat "$WORK/pids/flwr-run.pid")"  '),  # the run, not the watcher
]


@pytest.mark.slow
def test_a_device_that_disconnects_mid_round_is_left_out_and_the_run_completes(tmp_path):
    text = SCRIPT.read_text()
    repo = 'REPO=$(cd "$(dirname "$0")/../.." && pwd)'
    for old, new in [*_THREE_DEVICES, (repo, f"REPO={ROOT}")]:  # the copy lives outside the checkout
        assert old in text, old
        text = text.replace(old, new)
    variant = tmp_path / "deploy" / "examples" / "disconnect.sh"
    variant.parent.mkdir(parents=True)
    variant.write_text(text)
    result, wall = _run_walkthrough(tmp_path, timeout=600, script=variant, **_ports(19430, devices=3))
    assert result.returncode == 0, result.stdout[-4000:]
    assert "device-2 disconnected mid-round" in result.stdout
    run_dir = Path(_RUN_DIR.search(result.stdout).group(1))
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "completed" and summary["rounds"] == 2, summary.get("reason")
    first = records[0]
    assert first["clients_trained"] == 2 and first["failures_by_kind"] == {"timeout": 1}, first
    assert "2" not in {str(p) for p in first["trained_partitions"]}
    assert all(r["clients_trained"] == 2 for r in records)  # round 2: the lost device is gone or times out again
    assert summary["privacy"]["sample"]["epsilon_max"] <= summary["privacy"]["sample"]["target_epsilon"]
    print(f"disconnect walkthrough: {wall:.1f} s wall; failures by round: {[r['failures_by_kind'] for r in records]}")


# --- separate addresses: SuperLink and SuperNodes in their own network namespaces ------------------------------

NET = "10.77.0"  # a private /24 of the project's own test hosts


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def namespaces():
    """Two network namespaces joined by a veth pair: the SuperLink's (NET.1) and the devices' (NET.2)."""
    suffix = uuid.uuid4().hex[:6]
    link_ns, nodes_ns = f"ftlink-{suffix}", f"ftnodes-{suffix}"
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2): network namespaces cannot be made here")
    made = _ip("netns", "add", link_ns)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` failed (needs root and iproute2): {made.stderr.strip()}")
    try:
        assert _ip("netns", "add", nodes_ns).returncode == 0
        steps = [
            ("link", "add", f"ftl{suffix}", "type", "veth", "peer", "name", f"ftn{suffix}"),
            ("link", "set", f"ftl{suffix}", "netns", link_ns),
            ("link", "set", f"ftn{suffix}", "netns", nodes_ns),
            ("-n", link_ns, "addr", "add", f"{NET}.1/24", "dev", f"ftl{suffix}"),
            ("-n", nodes_ns, "addr", "add", f"{NET}.2/24", "dev", f"ftn{suffix}"),
            ("-n", link_ns, "link", "set", f"ftl{suffix}", "up"),
            ("-n", nodes_ns, "link", "set", f"ftn{suffix}", "up"),
            ("-n", link_ns, "link", "set", "lo", "up"),
            ("-n", nodes_ns, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        yield link_ns, nodes_ns
    finally:
        for ns in (link_ns, nodes_ns):
            _ip("netns", "del", ns)  # takes the veth pair with it
    assert not {link_ns, nodes_ns} & set(_ip("netns", "list").stdout.split())


@pytest.mark.slow
def test_federation_across_network_namespaces(tmp_path, namespaces):
    link_ns, nodes_ns = namespaces
    result, wall = _run_walkthrough(
        tmp_path, LINK_HOST=f"{NET}.1", LINK_PORT="19420", NODE_PORT="19421", NETNS_LINK=link_ns, NETNS_NODES=nodes_ns
    )
    work = tmp_path / "work"
    _assert_completed_federation(result, work)
    # the devices reached the SuperLink at its own address, never on loopback
    assert f"Using SuperLink: fedtrain ({NET}.1:19420)" in result.stdout
    assert f"https://{NET}.1:19420" in (work / "logs" / "superlink.log").read_text()
    print(f"namespace walkthrough: {wall:.1f} s wall")
