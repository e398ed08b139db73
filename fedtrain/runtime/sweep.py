"""Privacy-budget experiments: the same plan at several target epsilons and seeds.

Each (epsilon, seed) is one in-process run in its own process (a pool as wide as the cores), on the
vectorised round exchange when it covers the plan (a round's clients trained in one batched call);
``inf`` runs the plan without sample-level DP. The sweep folder gets ``sweep.json``,
``sweep.csv``, ``accuracy_vs_epsilon.png`` and ``sweep.html`` (each run's report one click away,
see ``sweep_page``), plus every run folder.
It lives with the runtimes, not in ``fedtrain.privacy``, because it starts runs: privacy
code never depends on where or how a run executes (an import-linter contract).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from fedtrain.config import RunConfig, load_config
from fedtrain.errors import ConfigError
from fedtrain.federation.exchange.vectorised import refusal
from fedtrain.logging import get_logger
from fedtrain.runtime.batch import run_configs, workers_for
from fedtrain.runtime.sweep_page import plot_sweep, write_sweep_html

__all__ = ["parse_epsilons", "run_sweep"]


def parse_epsilons(text: str) -> list[float]:
    """``"0.5,1,inf"`` -> ``[0.5, 1.0, inf]``; every value must be > 0."""
    values = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"--epsilons: {part!r} is not a number; use e.g. 0.5,1,2,inf") from None
        if not value > 0:
            raise ConfigError(f"--epsilons: {part} must be > 0 (use inf for no sample-level DP)")
        values.append(value)
    if not values:
        raise ConfigError("--epsilons is empty; use e.g. 0.5,1,2,inf")
    return sorted(set(values))


def run_sweep(
    base: RunConfig, epsilons: list[float], seeds: int, out_dir: Path, jobs: int | None = None, exchange: str = "auto"
) -> Path:
    """Run every (epsilon, seed) and write the sweep folder; return its absolute path.

    ``exchange="auto"`` runs each run on ``round-exchange=vectorised`` when the base config uses the plain
    exchange and the vectorised trainer covers the run (same results, see docs/simulation.md); ``"keep"``
    runs the base config's exchange.
    """
    # Absolute, as the run folder `fedtrain run` prints: the last line stays usable from any directory.
    folder = (out_dir / time.strftime("sweep-%Y%m%d-%H%M%S")).absolute()
    folder.mkdir(parents=True, exist_ok=False)
    tasks = []
    # Resolve the DP form of the base once (DP defaults for the keys the user did not set) and run every
    # epsilon, inf included, with those values: the sweep varies only the privacy budget.
    sample_level = base.privacy.dp_level in ("none", "sample")
    private, public = ("sample", "none") if sample_level else ("both", "user")  # finite epsilon / inf
    resolved = load_config(base=base.to_flat(), overrides={"dp-level": private}).to_flat()
    for eps in epsilons:
        for s in range(seeds):
            flat = dict(resolved)
            seed = base.runtime.seed + s
            flat.update(  # run names hold no '.': eps0_5-seed0
                {"seed": seed, "progress": False, "report": base.output.report, "out-dir": str(folder / "runs"),
                 "run-name": f"eps{eps:g}-seed{seed}".replace(".", "_")}
            )  # fmt: skip
            if math.isinf(eps):
                flat["dp-level"] = public
                if flat.get("normalize") == "dp-standard":  # no sample-level budget to spend on its release:
                    # without DP the same z-score from exact statistics; under user-level DP what reads no data
                    flat["normalize"] = "standard" if public == "none" else "range"
            else:
                flat["dp-level"] = private
                flat["dp-target-epsilon"] = eps
            load_config(overrides=flat)  # fail before starting any process
            tasks.append((eps, _vectorised(flat) if exchange == "auto" else flat))
    workers = workers_for(jobs, len(tasks))
    t0 = time.perf_counter()
    log = get_logger()
    log.info("Sweep %s: %d runs on %d processes", folder, len(tasks), workers)

    def progress(done: int, r: dict[str, Any]) -> None:
        log.info("[%d/%d] %s: accuracy %.4f, epsilon %.3g", done, len(tasks), Path(r["run_dir"]).name,
                 r["accuracy"], r["spent_epsilon"])  # fmt: skip

    results = run_configs([flat for _, flat in tasks], jobs=workers, on_done=progress)
    rows = _aggregate([(eps, r) for (eps, _), r in zip(tasks, results, strict=True)])
    runs = [{"target_epsilon": _num(eps), **r} for (eps, _), r in zip(tasks, results, strict=True)]
    payload = {
        "epsilons": [_num(e) for e in epsilons],
        "seeds": seeds,
        "delta": base.privacy.dp_delta,
        "accountant": resolved["dp-accountant"],  # the DP defaults may set it (the linear recipe's prv)
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "workers": workers,
        "rows": rows,
        "runs": runs,
        "config": base.to_flat(),
    }
    (folder / "sweep.json").write_text(json.dumps(payload, indent=2) + "\n")
    with (folder / "sweep.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    image = folder / "accuracy_vs_epsilon.png"
    write_sweep_html(payload, folder, image, plot_sweep(rows, runs, folder, image))
    return folder


def _vectorised(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` on the vectorised exchange when it runs on the plain one and the batched trainer covers it."""
    if flat.get("round-exchange", "message") != "message" or flat.get("secure-aggregation"):
        return flat
    candidate = {**flat, "round-exchange": "vectorised"}
    return candidate if not refusal(load_config(overrides=candidate)) else flat


def _num(x: float) -> float | str:
    return "inf" if math.isinf(x) else x


def _aggregate(results: list[tuple[float, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for eps in sorted({e for e, _ in results}):
        runs = [r for e, r in results if e == eps]
        acc = [r["accuracy"] for r in runs]
        spent = [r["spent_epsilon"] for r in runs]
        rows.append({
            "target_epsilon": _num(eps),
            "spent_epsilon": _num(round(max(spent), 4)),
            "accuracy_mean": round(statistics.fmean(acc), 4),
            # One run has no spread: null (empty in the CSV), not a 0.0 that reads as a measured std.
            "accuracy_std": round(statistics.stdev(acc), 4) if len(acc) > 1 else None,
            "runs": len(runs),
        })  # fmt: skip
    return rows
