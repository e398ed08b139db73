"""The ``flower-superlink`` and ``flower-supernode`` command lines of a deployment, and their launchers.

The command lines are built here once (``fedtrain deploy superlink|supernode``, the systemd units and the tests all
use them): TLS with absolute paths (the SuperLink hands its CA path to SuperExec as given), SuperNode
authentication, a persistent SuperLink database, and no runtime dependency installation (on by default on the
SuperLink, where a torch dependency would download a multi-GB CUDA build).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from fedtrain.deploy.errors import DeployError
from fedtrain.deploy.pki import DEFAULT_PORT, DEVICE_MANIFEST, DeploymentPaths, DevicePaths, load_manifest, parse_host

__all__ = [
    "DEFAULT_DATABASE",
    "DEFAULT_LOCAL_PORT",
    "NO_INSTALL_ENV",
    "deploy_env",
    "device_folder",
    "exec_command",
    "explain_supernode_exit",
    "flower_tool",
    "parse_node_config",
    "parse_superlink_address",
    "superlink_command",
    "supernode_command",
    "supervise_command",
    "worker_command",
    "worker_socket",
]

NO_INSTALL_ENV = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
DEFAULT_DATABASE = Path("state") / "superlink.db"  # under OUT_DIR
DEFAULT_LOCAL_PORT = 9094  # the SuperNode's own Runtime API (plain http on 127.0.0.1); one per node on a host
WORKER_SOCKET = Path("worker") / "worker.sock"  # under the device folder: the warm worker's socket
# Flower's own node-config syntax (flwr.common.config.parse_config_args): key=value, value quoted or bare.
_PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")


def flower_tool(name: str, venv: str | os.PathLike[str] | None = None) -> str:
    """``name`` from ``venv`` (or from this interpreter's environment, where it is installed), else bare for PATH."""
    bindir = Path(venv).expanduser().resolve() / "bin" if venv else Path(sys.executable).parent
    path = bindir / name
    if venv or path.exists():
        return str(path)
    return name


def deploy_env(base: Mapping[str, str] | None = None, command: list[str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with runtime dependency installation switched off.

    With ``command``, the folder of its executable (a venv's bin) comes first on PATH: Flower starts
    flower-superexec, and it flwr-clientapp, by name, and they must be the same installation's.
    """
    env = {**(os.environ if base is None else base), **NO_INSTALL_ENV}
    if command and os.path.isabs(command[0]):
        env["PATH"] = os.pathsep.join([str(Path(command[0]).parent), *filter(None, [env.get("PATH")])])
    return env


def _need(path: Path, what: str, fix: str) -> Path:
    if not path.is_file():
        raise DeployError(f"{what} {path} does not exist: {fix}")
    return path


def superlink_command(
    out_dir: str | os.PathLike[str],
    host: str = "0.0.0.0",
    port: int | None = None,
    database: str | os.PathLike[str] | None = None,
    venv: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The ``flower-superlink`` command line for the deployment in ``out_dir``.

    Parameters
    ----------
    out_dir
        A folder ``fedtrain deploy init`` wrote.
    host, port
        Address to bind (all interfaces by default; Flower's own default, 127.0.0.1, is unreachable from devices)
        and port (default: the deployment's, from deployment.json).
    database
        SQLite file of the SuperLink's state (registered nodes, runs); default ``OUT_DIR/state/superlink.db``.
    venv
        Virtual environment whose ``bin/flower-superlink`` to run (default: this interpreter's).
    """
    root = Path(out_dir).expanduser().resolve()
    manifest = load_manifest(root)
    paths = DeploymentPaths.under(root)
    fix = "re-create the deployment with `fedtrain deploy init --force`"
    for p, what in ((paths.ca_cert, "CA certificate"), (paths.superlink_cert, "SuperLink certificate")):
        _need(p, what, fix)
    _need(paths.superlink_key, "SuperLink key", fix)
    parse_host(host)
    port = int(manifest.get("port", DEFAULT_PORT)) if port is None else port
    if not 1 <= port <= 65535:
        raise DeployError(f"--port {port} is outside 1..65535")
    db = Path(database).expanduser().resolve() if database else root / DEFAULT_DATABASE
    return [
        flower_tool("flower-superlink", venv),
        "--ssl-ca-certfile", str(paths.ca_cert),
        "--ssl-certfile", str(paths.superlink_cert),
        "--ssl-keyfile", str(paths.superlink_key),
        "--enable-supernode-auth",
        "--database", str(db),
        "--disable-runtime-dependency-installation",
        "--host", host.strip("[]"),
        "--port", str(port),
    ]  # fmt: skip


def parse_superlink_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port); anything else raises."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\s/]+):(\d+)", address.strip())
    if not m:
        raise DeployError(
            f"--superlink {address!r} must be HOST:PORT (e.g. 192.168.1.10:9400, [fd00::1]:9400), without https://"
        )
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    parse_host(host)
    if not 1 <= int(port) <= 65535:
        raise DeployError(f"--superlink {address!r}: port {port} is outside 1..65535")
    return host, int(port)


def parse_node_config(text: str) -> dict[str, str]:
    """``k=v ...`` in Flower's syntax as key -> value text (quotes kept); stray words raise."""
    pairs = {k: v for k, v in _PAIR.findall(text)}
    leftover = _PAIR.sub("", text).strip()
    if leftover:
        raise DeployError(f"--node-config {text!r}: {leftover!r} is not a key=value pair (quote values with spaces)")
    return pairs


def supernode_command(
    device_dir: str | os.PathLike[str],
    superlink: str,
    data_path: str | os.PathLike[str],
    local_port: int = DEFAULT_LOCAL_PORT,
    node_config: str = "",
    venv: str | os.PathLike[str] | None = None,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    warm_worker: bool = False,
) -> list[str]:
    """The ``flower-supernode`` command line of one device.

    Parameters
    ----------
    device_dir
        The device's folder from ``init`` (``devices/<name>``: auth.key, ca.crt, device.json).
    superlink
        The SuperLink's ``HOST:PORT`` as the device reaches it (a name or address in the certificate's SANs).
    data_path
        This device's data file (e.g. one ``fedtrain split`` wrote); the ClientApp reads it from ``data-path``.
    local_port
        The SuperNode's own Runtime API port; nodes sharing a host need different ones.
    node_config
        More node-config pairs (``k=v ...``); ``partition-id`` and ``num-partitions`` default to device.json's.
    venv
        Virtual environment whose ``bin/flower-supernode`` to run (default: this interpreter's).
    max_retries, max_wait_time
        Flower's connection retries and their time limit (default: Flower's, which retries for ever).
    warm_worker
        Point the ClientApp at the device's warm worker (:func:`worker_command`), which answers its messages with
        torch already imported.
    """
    dev_dir = Path(device_dir).expanduser().resolve()
    dev = DevicePaths.under(dev_dir.parent, dev_dir.name)
    fix = f"point DEVICE_DIR at a devices/<name> folder that `fedtrain deploy init` wrote (got {dev_dir})"
    _need(dev.auth_key, "SuperNode key", fix)
    _need(dev.ca_cert, "CA certificate", fix)
    parse_superlink_address(superlink)
    if not 1 <= local_port <= 65535:
        raise DeployError(f"--local-port {local_port} is outside 1..65535")
    data = Path(data_path).expanduser().resolve()
    if "'" in str(data) or "\n" in str(data):
        raise DeployError(f"--data-path {str(data)!r} holds a quote or newline; Flower's node config cannot carry it")
    info: dict[str, object] = {}
    if (dev_dir / DEVICE_MANIFEST).is_file():
        info = json.loads((dev_dir / DEVICE_MANIFEST).read_text())
    extra = parse_node_config(node_config)
    if "data-path" in extra:
        raise DeployError("give the data file as --data-path, not as data-path in --node-config")
    if warm_worker and "warm-worker" in extra:
        raise DeployError("give either --warm-worker or warm-worker in --node-config, not both")
    pairs = {"data-path": f"'{data}'"}
    for key in ("partition-id", "num-partitions"):
        if key in info:
            pairs[key] = str(info[key])
    if warm_worker:
        if "'" in str(dev_dir):
            raise DeployError(f"{dev_dir} holds a quote; Flower's node config cannot carry the worker's socket path")
        pairs["warm-worker"] = f"'{worker_socket(dev_dir)}'"
    pairs.update(extra)
    if "partition-id" not in pairs:
        raise DeployError(
            f"{dev_dir} has no {DEVICE_MANIFEST} with this device's partition-id: pass --node-config "
            '"partition-id=N num-partitions=M"'
        )
    return [
        flower_tool("flower-supernode", venv),
        "--root-certificates", str(dev.ca_cert),
        "--auth-supernode-private-key", str(dev.auth_key),
        "--superlink", superlink.strip(),
        "--port", str(local_port),
        "--node-config", " ".join(f"{k}={v}" for k, v in pairs.items()),
        *(["--max-retries", str(max_retries)] if max_retries is not None else []),
        *(["--max-wait-time", str(max_wait_time)] if max_wait_time is not None else []),
    ]  # fmt: skip


def worker_socket(device_dir: str | os.PathLike[str]) -> Path:
    """The warm worker's socket of the device in ``device_dir`` (in a folder of its own, mode 700)."""
    return Path(device_dir).expanduser().resolve() / WORKER_SOCKET


def device_folder(device_dir: str | os.PathLike[str]) -> Path:
    """``device_dir`` resolved, when it is a device's folder that ``init`` wrote (it holds device.json); else raises."""
    dev_dir = Path(device_dir).expanduser().resolve()
    if not (dev_dir / DEVICE_MANIFEST).is_file():
        raise DeployError(f"point DEVICE_DIR at a devices/<name> folder of `fedtrain deploy init` (got {dev_dir})")
    return dev_dir


def worker_command(device_dir: str | os.PathLike[str], venv: str | os.PathLike[str] | None = None) -> list[str]:
    """The command line of the device's warm worker (``fedtrain deploy worker DEVICE_DIR``, from ``venv``'s bin)."""
    return [flower_tool("fedtrain", venv), "deploy", "worker", str(device_folder(device_dir))]


# What Flower prints when a SuperNode is refused, in the order to test (the first match explains the exit).
_REFUSALS = (
    ("[code: 2004]", "the SuperLink refused this device's key: register it first (kit/register.sh, or "
     "`flwr supernode register <device>/auth.key.pub <connection>`)"),
    ("CERTIFICATE_VERIFY_FAILED", "TLS: the SuperLink's certificate does not match this device's ca.crt or the "
     "address given (--superlink must be a host in the certificate's SANs: `fedtrain deploy renew`)"),
    ("Exit Code: 305", "no connection to the SuperLink after the retries: check --superlink (host:port), that the "
     "port is open, and that both sides use TLS"),
)  # fmt: skip


def explain_supernode_exit(output: str) -> str | None:
    """The one-line reason for a refused SuperNode, from Flower's output; None when it is not a known refusal."""
    return next((why for mark, why in _REFUSALS if mark in output), None)


def supervise_command(command: list[str], device: str, tail_lines: int = 200) -> int:
    """Run ``command`` as a child, passing its output through; a refusal ends in one ``DeployError`` line.

    For an operator's terminal. systemd units use :func:`exec_command`, so that signals reach Flower directly.
    """
    import collections
    import subprocess

    if shutil.which(command[0]) is None:
        raise DeployError(f"{command[0]} is not installed or not on PATH: install flwr 1.42 in this environment")
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    env = deploy_env(command=command)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:  # fmt: skip
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                tail.append(line)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait(timeout=30)
            raise
        code = proc.wait()
    if code == 0:
        return 0
    why = explain_supernode_exit("".join(tail))
    raise DeployError(f"{device}: {why or f'flower-supernode exited with code {code} (its output is above)'}")


def exec_command(command: list[str]) -> None:
    """Replace this process with ``command`` (so systemd and signals reach Flower itself), installs switched off."""
    if shutil.which(command[0]) is None:
        raise DeployError(f"{command[0]} is not installed or not on PATH: install flwr 1.42 in this environment")
    os.execvpe(command[0], command, deploy_env(command=command))
