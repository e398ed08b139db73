"""Privacy-budget experiments: the same plan at several target epsilons and seeds.

Each (epsilon, seed) is one in-process run in its own process (a pool as wide as the cores);
``inf`` runs the plan without sample-level DP. The sweep folder gets ``sweep.json``,
``sweep.csv``, ``accuracy_vs_epsilon.png`` and ``sweep.html``, plus every run folder.
It lives with the runtimes, not in ``fedtrain.privacy``, because it starts runs: privacy
code never depends on where or how a run executes (an import-linter contract).
"""

from __future__ import annotations

import csv
import html
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from fedtrain.config import RunConfig, load_config
from fedtrain.errors import ConfigError
from fedtrain.logging import get_logger
from fedtrain.runtime.batch import run_configs, workers_for

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


def run_sweep(base: RunConfig, epsilons: list[float], seeds: int, out_dir: Path, jobs: int | None = None) -> Path:
    """Run every (epsilon, seed) and write the sweep folder; return its path."""
    folder = out_dir / time.strftime("sweep-%Y%m%d-%H%M%S")
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
            flat.update(
                {"seed": seed, "progress": False, "report": False, "out-dir": str(folder / "runs"),
                 "run-name": f"eps{eps:g}-seed{seed}"}
            )  # fmt: skip
            if math.isinf(eps):
                flat["dp-level"] = public
            else:
                flat["dp-level"] = private
                flat["dp-target-epsilon"] = eps
            load_config(overrides=flat)  # fail before starting any process
            tasks.append((eps, flat))
    workers = workers_for(jobs, len(tasks))
    t0 = time.perf_counter()
    log = get_logger()
    log.info("Sweep %s: %d runs on %d processes", folder, len(tasks), workers)

    def progress(done: int, r: dict[str, Any]) -> None:
        log.info("[%d/%d] %s: accuracy %.4f, epsilon %.3g", done, len(tasks), Path(r["run_dir"]).name,
                 r["accuracy"], r["spent_epsilon"])  # fmt: skip

    results = run_configs([flat for _, flat in tasks], jobs=workers, on_done=progress)
    rows = _aggregate([(eps, r) for (eps, _), r in zip(tasks, results, strict=True)])
    payload = {
        "epsilons": [_num(e) for e in epsilons],
        "seeds": seeds,
        "delta": base.privacy.dp_delta,
        "accountant": base.privacy.dp_accountant,
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "workers": workers,
        "rows": rows,
        "runs": [{"target_epsilon": _num(eps), **r} for (eps, _), r in zip(tasks, results, strict=True)],
        "config": base.to_flat(),
    }
    (folder / "sweep.json").write_text(json.dumps(payload, indent=2) + "\n")
    with (folder / "sweep.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, folder / "accuracy_vs_epsilon.png")
    _html(payload, folder / "sweep.html", folder / "accuracy_vs_epsilon.png")
    return folder


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
            "accuracy_std": round(statistics.stdev(acc), 4) if len(acc) > 1 else 0.0,
            "runs": len(runs),
        })  # fmt: skip
    return rows


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    from fedtrain.results.plots import pyplot

    plt = pyplot()
    finite = [r for r in rows if r["target_epsilon"] != "inf"]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if finite:
        xs = [r["target_epsilon"] for r in finite]
        ys = [r["accuracy_mean"] for r in finite]
        err = [r["accuracy_std"] for r in finite]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label="sample-level DP")
        ax.set_xscale("log")
    for r in rows:
        if r["target_epsilon"] == "inf":
            ax.axhline(r["accuracy_mean"], color="grey", linestyle="--", label="no DP (epsilon = inf)")
    ax.set_xlabel("target epsilon (per client, whole run)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against privacy budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _html(payload: dict[str, Any], path: Path, image: Path) -> None:
    from fedtrain.results.report import png_data_uri

    head = "".join(f"<th>{html.escape(k)}</th>" for k in payload["rows"][0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in payload["rows"]
    )
    img = png_data_uri(image)
    path.write_text(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>fedtrain privacy sweep</title>
<style>body{{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto}}
td,th{{border:1px solid #ccc;padding:3px 8px}}table{{border-collapse:collapse}}</style></head>
<body><h1>Privacy-budget sweep</h1>
<p>delta = {payload["delta"]}, accountant = {payload["accountant"]}, {payload["seeds"]} seed(s),
{payload["workers"]} parallel process(es), {payload["wall_seconds"]} s.</p>
<table><tr>{head}</tr>{body}</table><img alt="accuracy against epsilon" src="{img}">
</body></html>
""",
        encoding="utf-8",
    )
