"""``fedtrain deploy status``: which SuperNodes are registered and online, the current run, and its round.

It asks the SuperLink through Flower's own CLI (``flwr supernode list`` and ``flwr ls``, both with
``--format json``), so it needs nothing but a Flower connection: a connection name from ``$FLWR_HOME/config.toml``,
or a deployment folder, whose ``connection.toml`` is used in a throw-away ``FLWR_HOME``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedtrain.deploy.errors import DeployError
from fedtrain.deploy.launch import deploy_env, flower_tool
from fedtrain.deploy.pki import CONNECTION_NAME

__all__ = ["DeploymentStatus", "current_round", "format_status", "query_status"]

Runner = Callable[[Sequence[str], dict[str, str]], str]  # (argv, env) -> stdout; swapped out in tests


@dataclass
class DeploymentStatus:
    """What the SuperLink reports: its nodes, its runs (newest first), and the current run's round if known."""

    connection: str
    nodes: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    round: dict[str, Any] | None = None

    def count(self, status: str) -> int:
        return sum(1 for n in self.nodes if n.get("status") == status)

    @property
    def current_run(self) -> dict[str, Any] | None:
        active = [r for r in self.runs if not str(r.get("status", "")).startswith("finished")]
        rows = active or self.runs
        return rows[0] if rows else None


def _run_flwr(argv: Sequence[str], env: dict[str, str]) -> str:
    try:
        proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError as err:
        raise DeployError(f"{argv[0]} is not installed: install flwr 1.42 in this environment") from err
    except subprocess.TimeoutExpired as err:
        raise DeployError(f"`{' '.join(argv[:3])}` did not answer within 60 s: is the SuperLink reachable?") from err
    return proc.stdout or proc.stderr


def _parse(text: str, what: str) -> dict[str, Any]:
    """The JSON answer of flwr; its own error (it exits 0 with success=false) becomes one line."""
    start = text.find("{")
    try:
        doc: dict[str, Any] = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        doc = {}
    if not doc:
        raise DeployError(f"`{what}` gave no JSON answer: {' '.join(text.split())[:300] or '(nothing)'}")
    if not doc.get("success", False):
        message = " ".join(str(doc.get("error-message", "unknown error")).split())
        raise DeployError(f"`{what}` failed: {message}")
    return doc


def current_round(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last line of a run folder's ``metrics.jsonl`` (its latest finished round), or None before round 1."""
    path = Path(run_dir).expanduser() / "metrics.jsonl"
    if not Path(run_dir).expanduser().is_dir():
        raise DeployError(f"--run-dir {run_dir} is not a folder: give the run folder the ServerApp writes")
    if not path.is_file():
        return None
    last = None
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
    return last


def query_status(
    target: str, run_dir: str | os.PathLike[str] | None = None, runner: Runner = _run_flwr
) -> DeploymentStatus:
    """Ask the SuperLink of ``target`` (a connection name or a deployment folder) for its nodes and runs."""
    env = deploy_env()
    folder = Path(target).expanduser()
    tmp: str | None = None
    try:
        if folder.is_dir():
            conn_file = folder / "connection.toml"
            if not conn_file.is_file():
                raise DeployError(f"{folder} holds no connection.toml: give a deployment folder or a connection name")
            tmp = tempfile.mkdtemp(prefix="fedtrain-status-")
            (Path(tmp) / "config.toml").write_text(conn_file.read_text())
            env["FLWR_HOME"] = tmp
            connection = CONNECTION_NAME
        else:
            connection = target
        flwr = flower_tool("flwr")
        nodes = _parse(runner([flwr, "supernode", "list", connection, "--format", "json"], env), "flwr supernode list")
        runs = _parse(runner([flwr, "ls", connection, "--format", "json"], env), "flwr ls")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    run_rows = sorted(runs.get("runs", []), key=lambda r: str(r.get("pending-at") or ""), reverse=True)
    status = DeploymentStatus(connection, list(nodes.get("nodes", [])), run_rows)
    if run_dir is not None:
        status.round = current_round(run_dir)
    return status


def format_status(status: DeploymentStatus) -> str:
    """The status as a few plain lines (for a terminal or a log)."""
    lines = [
        f"connection {status.connection}: {len(status.nodes)} nodes, {status.count('online')} online, "
        f"{status.count('registered')} registered (never connected), {status.count('offline')} offline"
    ]
    for n in status.nodes:
        since = n.get("online-at") if n.get("status") == "online" else n.get("offline-at")
        when = f" since {since}" if since and since != "N/A" else ""
        lines.append(f"  node {n.get('node-id')}: {n.get('status')}{when}")
    run = status.current_run
    if run is None:
        lines.append("no runs yet")
    else:
        lines.append(
            f"run {run.get('run-id')} ({run.get('fab-name')} {run.get('fab-version')}): {run.get('status')}, "
            f"elapsed {run.get('elapsed')}"
        )
    if status.round is not None:
        r = status.round
        keys = ("phase", "global_round", "clients_trained", "failures")
        parts = [f"{k} {r[k]}" for k in keys if r.get(k) is not None]
        parts += [f"{k} {r[k]:.4f}" for k in ("test_accuracy", "epsilon_max") if isinstance(r.get(k), float)]
        lines.append(f"latest finished round: {r.get('round', '?')}" + (f" ({', '.join(parts)})" if parts else ""))
    return "\n".join(lines)
