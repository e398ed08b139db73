"""Run many in-process federations in parallel processes (sweeps, benchmarks)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any

__all__ = ["run_configs", "workers_for"]


def _run_one(flat: dict[str, Any]) -> dict[str, Any]:
    from fedtrain.config import load_config
    from fedtrain.logging import get_logger
    from fedtrain.runtime.inprocess import run_inprocess

    for logger in (logging.getLogger("flwr"), get_logger()):  # the parent reports progress
        logger.setLevel(logging.WARNING)
    cfg = load_config(overrides=flat)
    t0 = time.perf_counter()
    run_dir = run_inprocess(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    sample = summary.get("privacy", {}).get("sample", {})
    return {
        "run_dir": str(run_dir),
        "seed": cfg.runtime.seed,
        "status": summary["status"],
        "accuracy": summary["final"]["accuracy"],
        "spent_epsilon": sample.get("epsilon_max", math.inf),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def run_configs(
    flats: list[dict[str, Any]], jobs: int | None = None, on_done: Callable[[int, dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Run each flat config in a process pool (``jobs`` wide, default all cores); results in input order."""
    workers = workers_for(jobs, len(flats))
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_run_one, flat) for flat in flats]
        for done, fut in enumerate(as_completed(futures), start=1):
            if on_done:
                on_done(done, fut.result())
        return [f.result() for f in futures]


def workers_for(jobs: int | None, tasks: int) -> int:
    """Processes a pool of ``jobs`` (default all cores) uses for ``tasks`` runs."""
    return max(1, min(jobs or os.cpu_count() or 1, tasks))
