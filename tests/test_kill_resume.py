"""SIGKILL a DP run at random moments, resume it until it completes, and get the uninterrupted run's result.

Slow (20 seeded trials of a small sample-level-DP federation): `python -m pytest -m slow tests/test_kill_resume.py`.
Each trial kills `fedtrain run` (a child process) with SIGKILL after a random delay, then resumes with
`fedtrain run --resume` (killing again while time is left in the trial's schedule) until the run completes. A
kill before the first checkpoint leaves nothing to resume: the trial then starts the run again, as a user would.
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
    "num-clients=3 min-clients=2 num-rounds=6 hidden-sizes=16 local-epochs=1 dp-level='sample' "
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


def _run_to_completion(out: Path, kills: list[float]) -> tuple[Path, int]:
    """Start the run, SIGKILL it after each delay in ``kills``, resume after each kill.

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
            if delays:
                try:
                    proc.wait(timeout=delays.pop(0))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    continue
            else:
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
def reference(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("straight")
    t0 = time.perf_counter()
    folder, _ = _run_to_completion(out, [])
    return folder, time.perf_counter() - t0


RESUMES: list[int] = []  # per trial: resumes from a checkpoint (a kill may also come before the first one)


@pytest.mark.parametrize("trial", range(20))
def test_killed_and_resumed_run_equals_the_uninterrupted_one(reference, tmp_path, trial):
    folder, duration = reference
    rng = random.Random(1000 + trial)
    # 1 to 3 kills, each at a random moment within one uninterrupted run's duration
    kills = [rng.uniform(0.5, duration) for _ in range(rng.randint(1, 3))]
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
