"""Drive ``flwr run .`` (Flower's Simulation Engine) from Python, and clean up after it.

``flwr run`` starts a detached local SuperLink that outlives the command. Tests and
benchmarks give each run its own ``FLWR_HOME`` and ports, and stop exactly the processes
that run started, found by process id through that ``FLWR_HOME`` (never by name).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrain.config import toml_value

__all__ = ["FlwrRunResult", "flwr_run", "local_superlink_pids", "stop_local_superlink"]

_RUN_DIR = re.compile(r"fedtrain run (\S+): ")
# What `flwr run --stream` prints when the ServerApp raised (Flower 1.42's Simulation Engine); it still exits 0.
_SERVERAPP_FAILED = ("Simulation raised an exception", "An error was encountered. Ending simulation.",
                     "ServerApp raised an exception")  # fmt: skip


@dataclass(frozen=True)
class FlwrRunResult:
    """``returncode`` is non-zero when the ServerApp failed, though ``flwr run`` exited 0 (``flwr_returncode``)."""

    returncode: int
    output: str
    run_dir: Path | None
    seconds: float
    flwr_returncode: int = 0
    failure: str = ""  # why the run failed, in one line ("" when it did not)


def _failure(code: int, output: str, run_dir: Path | None) -> str:
    """Why the run failed: summary.json's reason, or the streamed log's sign of a failed ServerApp."""
    summary = run_dir / "summary.json" if run_dir is not None else None
    if summary is not None and summary.is_file():
        try:
            payload = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            payload = {}
        if payload.get("status") == "failed":
            return str(payload.get("reason", "the run failed"))
    if any(marker in output for marker in _SERVERAPP_FAILED):
        lines = [ln for ln in output.splitlines() if "FedtrainError" in ln or "Error:" in ln]
        return lines[-1].strip() if lines else "the ServerApp raised an exception (see the output)"
    return f"flwr run exited with code {code}" if code else ""


def _text(stream: str | bytes | None) -> str:
    """A captured stream as text (a timed-out run's may be bytes or None)."""
    return stream.decode(errors="replace") if isinstance(stream, bytes) else stream or ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def local_superlink_pids(flwr_home: Path) -> list[int]:
    """PIDs of the local SuperLink started under ``flwr_home`` and of its SuperExec children."""
    home = str(flwr_home)
    cmdlines = {int(p.name): _cmdline(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    links = [
        pid for pid, args in cmdlines.items() if any("flower-superlink" in a for a in args) and home in " ".join(args)
    ]
    children = [pid for pid, args in cmdlines.items() if _parent_pid_arg(args) in links]
    return links + children


def _parent_pid_arg(args: list[str]) -> int | None:
    """The value of ``--parent-pid`` (how a SuperExec names its SuperLink)."""
    for flag, value in itertools.pairwise(args):
        if flag == "--parent-pid" and value.isdigit():
            return int(value)
    return None


def stop_local_superlink(flwr_home: Path, timeout: float = 10.0) -> list[int]:
    """Terminate (then kill) the processes :func:`local_superlink_pids` finds; return their PIDs."""
    pids = local_superlink_pids(flwr_home)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids):
            time.sleep(0.2)
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def flwr_run(
    app_dir: Path,
    *,
    flwr_home: Path,
    num_supernodes: int,
    run_config: dict[str, Any],
    timeout: float = 600.0,
    stop_superlink: bool = True,
) -> FlwrRunResult:
    """Run ``flwr run <app_dir> --stream`` on ``num_supernodes`` simulated SuperNodes (1 CPU each).

    Runtime dependency installation is switched off (it would fetch a CUDA build of torch);
    the app runs in this environment.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
    }
    overrides = " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())
    cmd = [
        "flwr", "run", str(app_dir),
        "--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus=1",
        "--run-config", overrides,
        "--stream",
    ]  # fmt: skip
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=app_dir, env=env, capture_output=True, text=True, timeout=timeout)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code, output = -1, f"{_text(err.stdout)}{_text(err.stderr)}\nflwr run timed out after {timeout}s"
    finally:
        seconds = time.perf_counter() - t0
        if stop_superlink:
            stop_local_superlink(flwr_home)
    match = _RUN_DIR.search(output if isinstance(output, str) else "")
    run_dir = Path(match.group(1)) if match else None
    failure = _failure(code, output, run_dir)
    returncode = code or (1 if failure else 0)  # flwr run exits 0 after a failed ServerApp: make it visible
    return FlwrRunResult(returncode, output, run_dir, seconds, flwr_returncode=code, failure=failure)
