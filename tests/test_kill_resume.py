"""SIGKILL a DP run at random moments, resume it until it completes, and get the uninterrupted run's result.

Slow (20 seeded trials of a small sample-level-DP federation): `python -m pytest -m slow tests/test_kill_resume.py`.
Each trial kills `fedtrain run` (a child process) with SIGKILL a random delay after the process wrote a checkpoint,
then resumes with `fedtrain run --resume` (killing again while kills are left in the trial's schedule) until the run
completes. A run that ends before its kill simply completes.
The final metrics, the final weights and every client's ε must equal those of the run that was never
interrupted: no round lost or repeated, no ε spent twice or lost.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

RUN_CONFIG = (
    "num-clients=3 min-clients=2 num-rounds=12 hidden-sizes=16 local-epochs=1 dp-level='sample' "
    "progress=false report=false"
)
_VOLATILE = {"seconds", "wall_seconds"}  # timings differ between any two runs


def _fedtrain(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "fedtrain.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own group: the kill reaches every child
    )


def _killed_after_progress(proc: subprocess.Popen[bytes], out: Path, delay: float) -> bool:
    """Wait until ``proc`` writes a checkpoint of its own, then ``delay`` s more, then SIGKILL it (if still running).

    Anchored on progress, not on the clock from the start: start-up is most of a small run's wall time and varies
    with the machine's load, so a delay from the start would land before the first round or after the last.
    """
    started = time.time()
    while proc.poll() is None:
        if any(f.stat().st_mtime >= started for f in out.glob("*/checkpoints/latest.pt")):
            break
        time.sleep(0.01)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _run_to_completion(out: Path, kills: list[float]) -> tuple[Path, int]:
    """Start the run, SIGKILL it ``kills[i]`` s after its i-th process wrote a checkpoint, resume after each kill.

    Returns the folder and how many times the run was resumed from a checkpoint.
    """
    delays, resumes = list(kills), 0
    while True:
        folders = sorted(p for p in out.iterdir() if p.is_dir()) if out.exists() else []
        resumable = [f for f in folders if (f / "checkpoints" / "latest.pt").is_file()]
        if resumable:
            args = ["run", "--resume", str(resumable[-1]), "--run-config", "progress=false"]
            resumes += 1
        else:
            for f in folders:  # killed before its first checkpoint: nothing to resume, start again
                subprocess.run(["rm", "-rf", str(f)], check=True)
            args = ["run", "--run-config", RUN_CONFIG, "--out", str(out)]
        proc = _fedtrain(args)
        try:
            if delays and _killed_after_progress(proc, out, delays.pop(0)):
                continue
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        (folder,) = [p for p in out.iterdir() if p.is_dir()]
        summary = folder / "summary.json"
        if summary.is_file() and json.loads(summary.read_text())["status"] == "completed":
            return folder, resumes


def _result(folder: Path) -> tuple[list[dict], dict[str, torch.Tensor], dict[str, float]]:
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
    metrics = [{k: v for k, v in r.items() if k not in _VOLATILE} for r in lines]
    ckpt = torch.load(folder / "checkpoints" / "latest.pt", weights_only=True)
    per_client = json.loads((folder / "summary.json").read_text())["privacy"]["sample"]["per_client"]
    return metrics, ckpt["arrays"], {pid: float(c["epsilon"]) for pid, c in per_client.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, float, float]:
    """The uninterrupted run: its folder, when its first checkpoint appeared and when it ended (s after start)."""
    out = tmp_path_factory.mktemp("straight")
    t0, first = time.perf_counter(), None
    proc = _fedtrain(["run", "--run-config", RUN_CONFIG, "--out", str(out)])
    while proc.poll() is None:
        if first is None and any((f / "checkpoints" / "latest.pt").is_file() for f in out.iterdir()):
            first = time.perf_counter() - t0
        time.sleep(0.02)
    duration = time.perf_counter() - t0
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    assert json.loads((folder / "summary.json").read_text())["status"] == "completed"
    assert first is not None, "the reference run wrote no checkpoint while it ran"
    return folder, first, duration


RESUMES: list[int] = []  # per trial: resumes from a checkpoint (a kill may also come before the first one)


@pytest.mark.parametrize("trial", range(20))
def test_killed_and_resumed_run_equals_the_uninterrupted_one(reference, tmp_path, trial):
    folder, first, duration = reference
    rng = random.Random(1000 + trial)
    # 1 to 3 kills, each a random moment after that process's first checkpoint, within the time an uninterrupted
    # run trains after its first checkpoint
    kills = [rng.uniform(0.0, 0.9 * (duration - first)) for _ in range(rng.randint(1, 3))]
    resumed, resumes = _run_to_completion(tmp_path / "runs", kills)
    RESUMES.append(resumes)
    m_ref, w_ref, eps_ref = _result(folder)
    m, w, eps = _result(resumed)
    assert [(r["phase"], r["round"]) for r in m] == [(r["phase"], r["round"]) for r in m_ref]
    assert m == m_ref
    assert w.keys() == w_ref.keys() and all(torch.equal(w[k], w_ref[k]) for k in w)
    assert eps == eps_ref


def test_the_trials_really_resumed_mid_run():
    # Runs after the trials (file order): most kills must have hit a run that had checkpoints to resume from.
    if len(RESUMES) < 20:
        pytest.skip("only part of the trials ran")
    assert sum(r > 0 for r in RESUMES) >= 10, RESUMES
