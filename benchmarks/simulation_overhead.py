"""Runtime overhead: in-process grid against `flwr run .` on the same plan, 10 and 100 clients.

For each size it records
- the in-process run's wall time (``run_inprocess``, imports excluded) and the sum of time spent
  inside ClientApp calls (client compute, measured by the grid);
- the wall time of the whole ``fedtrain run`` command (a fresh process: imports and start-up
  included) for the 10-client default, the acceptance figure;
- the wall time of ``flwr run .`` (Simulation Engine, 1 CPU per SuperNode, SuperLink started
  and stopped by the run), and the final accuracy of both runtimes.

Target for the in-process runtime: wall <= 1.2 x (client compute / cores used) + 3 s, where
cores used is 1 (clients run one after another in the server's process).

    python benchmarks/simulation_overhead.py            # writes benchmarks/results/simulation_overhead.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

SIZES = {10: {}, 100: {"min-partition-size": 2}}  # 100 clients hold ~13 samples each


def inprocess(num_clients: int, extra: dict, out: Path) -> dict:
    from clients.client_app import app as client_app
    from fedtrain.config import load_config
    from fedtrain.runtime import InProcessGrid, run_inprocess

    cfg = load_config(overrides={"num-clients": num_clients, "out-dir": str(out), "progress": False, **extra})
    grid = InProcessGrid(client_app, num_clients, cfg.to_flat())
    t0 = time.perf_counter()
    run_dir = run_inprocess(cfg, grid=grid)
    wall = time.perf_counter() - t0
    summary = json.loads((run_dir / "summary.json").read_text())
    compute = grid.client_seconds
    return {
        "wall_s": round(wall, 2),
        "client_compute_s": round(compute, 2),
        "cores_used": 1,
        "target_s": round(1.2 * compute + 3.0, 2),
        "meets_target": wall <= 1.2 * compute + 3.0,
        "rounds": summary["rounds"],
        "final_accuracy": round(summary["final"]["accuracy"], 4),
    }


def cli_wall(out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedtrain.cli", "run", "--out", str(out), "--run-config", "progress=false"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"wall_s": round(wall, 2), "final_accuracy": round(summary["final"]["accuracy"], 4)}


def flower(num_clients: int, extra: dict, out: Path) -> dict:
    from fedtrain.runtime.flwr_run import flwr_run

    result = flwr_run(
        ROOT,
        flwr_home=out / "flwr-home",
        num_supernodes=num_clients,
        run_config={"num-clients": num_clients, "out-dir": str(out / "runs"), "progress": False, **extra},
        timeout=900,
    )
    if result.returncode != 0 or result.run_dir is None:
        return {"error": result.output[-2000:]}
    summary = json.loads((result.run_dir / "summary.json").read_text())
    return {"wall_s": round(result.seconds, 2), "final_accuracy": round(summary["final"]["accuracy"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--skip-flwr", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        cli = cli_wall(tmp_path / "cli")
        for n in (int(s) for s in args.sizes.split(",")):
            row = {"num_clients": n, "inprocess": inprocess(n, SIZES.get(n, {}), tmp_path / f"in-{n}")}
            if not args.skip_flwr:
                row["flwr_run"] = flower(n, SIZES.get(n, {}), tmp_path / f"flwr-{n}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    payload = {
        "command": "python benchmarks/simulation_overhead.py",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "plan": "defaults (finetune, 30 rounds, MLP 128-64, Dirichlet 0.5, 2 local epochs, batch 32)",
        "fedtrain_run_cli_10_clients": cli,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "simulation_overhead.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Simulation overhead",
        "",
        f"`{payload['command']}` on {payload['date']} ({payload['machine']}); plan: {payload['plan']}.",
        "",
        f"Whole `fedtrain run` command, 10 clients, defaults (imports and start-up included): "
        f"**{cli['wall_s']} s**, final test accuracy {cli['final_accuracy']}.",
        "",
        "| clients | in-process wall (s) | client compute (s) | target 1.2 x compute + 3 (s) | met | "
        "`flwr run .` wall (s) | accuracy in-process / flwr |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        i, f = r["inprocess"], r.get("flwr_run", {})
        lines.append(
            f"| {r['num_clients']} | {i['wall_s']} | {i['client_compute_s']} | {i['target_s']} | "
            f"{'yes' if i['meets_target'] else 'no'} | {f.get('wall_s', f.get('error', '-')[:60])} | "
            f"{i['final_accuracy']} / {f.get('final_accuracy', '-')} |"
        )
    (RESULTS / "simulation_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
