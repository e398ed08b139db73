"""Run an Optuna search over config keys, each trial one in-process federation, ranked on validation only.

Trials run in batches as wide as ``jobs`` (Optuna's ask-and-tell), each in its own process. A trial's score
is the server's validation accuracy of the model the run reports (its last round; with
``server-averaging`` the average), averaged over ``seeds`` seeds; the test split is never read to choose.
The tune folder gets ``tune.json`` (every trial, the best, the privacy statement) and ``best.toml`` (the
best config, ready for ``fedtrain run --config``).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrain.config import RunConfig, load_config
from fedtrain.config.loader import dump_toml
from fedtrain.errors import ConfigError
from fedtrain.logging import get_logger
from fedtrain.results import RunFolder
from fedtrain.runtime.batch import run_configs, workers_for
from fedtrain.tune.privacy import search_privacy
from fedtrain.tune.space import Param

__all__ = ["TuneResult", "run_tune"]

log = get_logger()


@dataclass(frozen=True)
class TuneResult:
    """Where the search wrote its results, and its best trial."""

    folder: Path
    best_params: dict[str, Any]
    best_value: float
    privacy: dict[str, Any]


def _validation(run_dir: Path) -> float:
    """Validation accuracy of the model the run reports (its last supervised round)."""
    rows = [r for r in RunFolder(run_dir).read_metrics() if r.get("val_accuracy") is not None]
    if not rows:
        raise ConfigError(f"{run_dir}: no validation accuracy; fedtrain tune needs val-fraction > 0")
    return float(rows[-1]["val_accuracy"])


def _run_here(flat: dict[str, Any]) -> dict[str, Any]:
    """One trial in this process (``jobs=1``: no process pool to start)."""
    from fedtrain.runtime import run_inprocess

    t0 = time.perf_counter()
    run_dir = run_inprocess(load_config(overrides=flat))
    sample = json.loads((run_dir / "summary.json").read_text()).get("privacy", {}).get("sample", {})
    seconds = round(time.perf_counter() - t0, 2)
    return {"run_dir": str(run_dir), "spent_epsilon": sample.get("epsilon_max", math.inf), "seconds": seconds}


def run_tune(
    base: RunConfig,
    space: list[Param],
    *,
    trials: int,
    out_dir: Path,
    seeds: int = 1,
    jobs: int | None = None,
    keep_runs: bool = False,
) -> TuneResult:
    """Search ``space`` around ``base`` for ``trials`` trials; return the tune folder and the best trial."""
    import optuna

    if base.data.val_fraction <= 0:
        raise ConfigError("fedtrain tune selects on the validation split: set val-fraction > 0 (e.g. 0.1)")
    if trials < 1 or seeds < 1:
        raise ConfigError(f"--trials={trials} and --seeds={seeds} must be >= 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = (out_dir / time.strftime("tune-%Y%m%d-%H%M%S")).absolute()
    folder.mkdir(parents=True, exist_ok=False)
    runs_dir = folder / "runs" if keep_runs else Path(tempfile.mkdtemp(prefix="fedtrain-tune-"))
    sampler = optuna.samplers.TPESampler(seed=base.runtime.seed, n_startup_trials=min(10, max(trials // 2, 1)))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    flat = base.to_flat()
    width = workers_for(jobs, trials * seeds)
    rows: list[dict[str, Any]] = []
    run_dirs: list[Path] = []
    t0 = time.perf_counter()
    while len(rows) < trials:
        batch = [study.ask() for _ in range(min(max(width // seeds, 1), trials - len(rows)))]
        configs = []
        for trial in batch:
            params = {p.key: p.suggest(trial) for p in space}
            for s in range(seeds):
                name = f"trial{trial.number}-seed{s}"
                run = {"seed": base.runtime.seed + s, "out-dir": str(runs_dir), "run-name": name}
                configs.append({**flat, **params, **run, "progress": False, "report": False})
        results = run_configs(configs, jobs=width) if width > 1 else [_run_here(c) for c in configs]
        for i, trial in enumerate(batch):
            mine = results[i * seeds : (i + 1) * seeds]
            dirs = [Path(r["run_dir"]) for r in mine]
            run_dirs += dirs
            scores = [_validation(d) for d in dirs]
            value = statistics.fmean(scores)
            study.tell(trial, value)
            row = {
                "trial": trial.number, "params": trial.params, "val_accuracy": value, "val_by_seed": scores,
                "epsilon": max(r["spent_epsilon"] for r in mine), "seconds": sum(r["seconds"] for r in mine),
            }  # fmt: skip
            rows.append(row)
            log.info("trial %d: val %.4f %s", trial.number, value, trial.params)
    best = study.best_trial
    privacy = search_privacy(base, run_dirs)
    best_cfg = load_config(base=flat, overrides={**best.params, "out-dir": base.output.out_dir})
    (folder / "best.toml").write_text(dump_toml(best_cfg))
    payload = {
        "format": "fedtrain-tune/1",
        "selected_by": "validation accuracy of the reported model (test split never read)",
        "trials": rows,
        "best": {"trial": best.number, "params": best.params, "val_accuracy": best.value},
        "seeds": [base.runtime.seed + s for s in range(seeds)],
        "space": [p.__dict__ | {"choices": list(p.choices)} for p in space],
        "privacy": privacy,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "base": flat,
    }
    (folder / "tune.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return TuneResult(folder, dict(best.params), float(best.value or 0.0), privacy)


logging.getLogger("optuna").setLevel(logging.WARNING)
