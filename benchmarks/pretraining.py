"""Does federated greedy layer-wise pretraining pay off with few labels?

Digits, 10 clients, Dirichlet 0.5, MLP with 3 hidden layers (128-64-32). Arms: no pretraining,
autoencoder, denoising autoencoder, RBM; labelled fraction 100%, 10%, 2%; without DP and at
epsilon 3 (sample-level, whole run); 3 seeds. Every arm runs 30 rounds in total: 30 fine-tuning
rounds without pretraining, 3 x 5 pretraining + 15 fine-tuning rounds with it. Fine-tuning uses
batch 8 and 3 local epochs (with 2% labels a client holds 2-3 labelled records); pretraining 3
local epochs per round.

    python benchmarks/pretraining.py             # about 20 minutes on 2 cores
    python benchmarks/pretraining.py --no-dp --seeds 1 --fractions 0.1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARMS = ["none", "autoencoder", "denoising", "rbm"]
# Under DP the non-private fine-tuning settings (batch 8, 3 epochs) drown in noise; these follow the
# tuned recipe of benchmarks/configs/dp-digits.toml (tanh, batch 32, 1 local epoch, lr 0.1).
DP_RECIPE = {"activation": "tanh", "batch-size": 32, "local-epochs": 1, "learning-rate": 0.1, "pretrain-epochs": 1}
COMMON = {"hidden-sizes": "128,64,32", "batch-size": 8, "local-epochs": 3, "progress": False, "report": False}


def arm_config(arm: str, fraction: float, dp: bool, seed: int, out: str) -> dict:
    flat = {**COMMON, "labeled-fraction": fraction, "seed": seed, "out-dir": out}
    if arm == "none":
        flat.update({"plan": "finetune", "num-rounds": 30})
    else:
        flat.update({"plan": "pretrain,finetune", "pretrain-method": arm, "pretrain-rounds": 5, "pretrain-epochs": 3,
                     "num-rounds": 15})  # fmt: skip
    if dp:
        flat.update({"dp-level": "sample", "dp-target-epsilon": 3.0, **DP_RECIPE})
    return flat


def main() -> None:
    from fedtrain.runtime.batch import run_configs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fractions", default="1.0,0.1,0.02")
    parser.add_argument("--no-dp", action="store_true", help="skip the epsilon 3 arms")
    parser.add_argument(
        "--only-dp", action="store_true", help="rerun only the epsilon 3 arms, keeping the recorded non-DP rows"
    )
    args = parser.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    dps = [False] if args.no_dp else [True] if args.only_dp else [False, True]
    keys, flats = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for dp in dps:
            for fraction in fractions:
                for arm in ARMS:
                    for seed in range(args.seeds):
                        keys.append((dp, fraction, arm))
                        flats.append(arm_config(arm, fraction, dp, seed, tmp))
        results = run_configs(flats, on_done=lambda i, r: print(f"[{i}/{len(flats)}] {Path(r['run_dir']).name} "
                                                               f"{r['accuracy']:.4f}", flush=True))  # fmt: skip
    rows = []
    for dp in dps:
        for fraction in fractions:
            for arm in ARMS:
                acc = [r["accuracy"] for k, r in zip(keys, results, strict=True) if k == (dp, fraction, arm)]
                rows.append({
                    "dp": "epsilon 3" if dp else "none", "labeled_fraction": fraction, "arm": arm,
                    "accuracy_mean": round(statistics.fmean(acc), 4),
                    "accuracy_std": round(statistics.stdev(acc), 4) if len(acc) > 1 else 0.0, "seeds": len(acc),
                })  # fmt: skip
    payload = {
        "command": "python benchmarks/pretraining.py",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "setup": "digits, 10 clients, Dirichlet 0.5, MLP 128-64-32, 30 rounds per arm (3x5 pretrain + 15 finetune)",
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "pretraining" if (args.seeds == 3 and not args.no_dp and len(fractions) == 3) else "pretraining_quick"
    if args.only_dp:
        previous = json.loads((RESULTS / f"{name}.json").read_text())
        payload["rows"] = [r for r in previous["rows"] if r["dp"] == "none"] + rows
        payload["wall_seconds"] = {"non-DP arms": previous["wall_seconds"], "DP arms": payload["wall_seconds"]}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(payload, RESULTS / f"{name}.md")


def write_markdown(payload: dict, path: Path) -> None:
    rows = payload["rows"]
    lines = [
        "# Federated layer-wise pretraining",
        "",
        f"`{payload['command']}` on {payload['date']} ({payload['machine']}), {payload['wall_seconds']} s. "
        f"{payload['setup']}. Final test accuracy, mean +- std over seeds. DP arms: epsilon 3, delta 1e-5, "
        f"with the DP recipe's settings {DP_RECIPE}.",
        "",
        "| DP | labelled | none | autoencoder | denoising | rbm | best gain over none |",
        "|---|---|---|---|---|---|---|",
    ]
    groups = sorted({(r["dp"], r["labeled_fraction"]) for r in rows}, key=lambda g: (g[0] != "none", -g[1]))
    for dp, fraction in groups:
        cells = {r["arm"]: r for r in rows if r["dp"] == dp and r["labeled_fraction"] == fraction}
        best = max(cells[a]["accuracy_mean"] for a in ARMS[1:]) - cells["none"]["accuracy_mean"]
        row = " | ".join(f"{cells[a]['accuracy_mean']:.4f} +- {cells[a]['accuracy_std']:.4f}" for a in ARMS)
        lines.append(f"| {dp} | {fraction:.0%} | {row} | {best * 100:+.1f} points |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
