"""Privacy against utility: digits, 10 clients, Dirichlet 0.5, sample-level DP, delta 1e-5, 3 seeds.

Runs ``fedtrain sweep`` machinery at epsilon 1, 3, 8 and inf with the DP recipe in
``benchmarks/configs/dp-digits.toml`` (fedtrain's DP defaults, tuned on validation as recorded in
``benchmarks/results/dp_tuning.md``), and the same recipe without DP. Accuracy is the final model's on
the test split (seeds 0, 1, 2; not the tuning seeds).

    python benchmarks/privacy_utility.py     # about 5 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "benchmarks" / "configs" / "dp-digits.toml"
TARGETS = {1.0: 0.85, 3.0: 0.93}


def main() -> None:
    from fedtrain.config import load_config
    from fedtrain.runtime.sweep import run_sweep

    cfg = load_config(file=RECIPE)
    with tempfile.TemporaryDirectory() as tmp:
        folder = run_sweep(cfg, [1.0, 3.0, 8.0, float("inf")], seeds=3, out_dir=Path(tmp))
        sweep = json.loads((folder / "sweep.json").read_text())
    rows = sweep["rows"]
    payload = {
        "command": "python benchmarks/privacy_utility.py",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "recipe": str(RECIPE.relative_to(ROOT)),
        "wall_seconds": sweep["wall_seconds"],
        "rows": rows,
        "runs": [{k: v for k, v in r.items() if k != "run_dir"} for r in sweep["runs"]],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "privacy_utility.json").write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(payload)


def write_markdown(payload: dict) -> None:
    """``privacy_utility.md`` from the results JSON (``--from-json`` redoes only this)."""
    rows = payload["rows"]
    lines = [
        "# Privacy against utility",
        "",
        f"`{payload['command']}` on {payload['date']} ({payload['machine']}), {payload['wall_seconds']} s. Digits, "
        f"10 clients, Dirichlet 0.5, sample-level DP, delta 1e-5, rdp, 3 seeds, recipe `{payload['recipe']}`.",
        "",
        "| target epsilon | spent epsilon (max over clients and seeds) | test accuracy mean | std | target |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        eps = r["target_epsilon"]
        goal = TARGETS.get(eps)
        verdict = "-" if goal is None else f">= {goal}: {'met' if r['accuracy_mean'] >= goal else 'missed'}"
        lines.append(f"| {eps} | {r['spent_epsilon']} | {r['accuracy_mean']} | {r['accuracy_std']} | {verdict} |")
    lines += ["", "What was tried to get here, and why the targets are hard: `benchmarks/results/dp_tuning.md`."]
    (RESULTS / "privacy_utility.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if "--from-json" in sys.argv:
        write_markdown(json.loads((RESULTS / "privacy_utility.json").read_text()))
    else:
        main()
