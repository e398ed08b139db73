"""Cost of DP-SGD: time per local epoch with DP against without, MLP (batch 256) and small CNN.

One client holding the whole digits training split (1,293 samples), 1 torch thread. Each
measurement is one local training call of 5 epochs (wrapping with Opacus included), divided by
5; the median of 5 repetitions (after one warm-up) is reported. Modes: ``auto`` (what fedtrain
picks), and each explicit mode for comparison.

    python benchmarks/dp_cost.py      # writes benchmarks/results/dp_cost.{json,md}
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EPOCHS, REPEATS = 5, 5
CASES = [("mlp", 256, "hidden-sizes=128,64"), ("cnn", 64, "cnn-channels=16,32")]
MODES = ["auto", "hooks", "ew", "ghost"]


def _time(fn) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) / EPOCHS)
    return statistics.median(samples)


def main() -> None:
    from fedtrain.config import load_config
    from fedtrain.data import ArrayDataset, build_federated_data
    from fedtrain.models import build_model
    from fedtrain.privacy import choose_grad_sample_mode, dp_train_local
    from fedtrain.train import train_local

    torch.set_num_threads(1)
    rows = []
    for model, batch, extra in CASES:
        base = f"model={model} batch-size={batch} local-epochs={EPOCHS} {extra}"
        cfg = load_config(overrides=base)
        fd = build_federated_data(cfg.data, cfg.partition, 0)
        # One client holding every training sample.
        data = ArrayDataset(
            np.concatenate([c.train.x for c in fd.clients]), np.concatenate([c.train.y for c in fd.clients]), fd.classes
        )
        plain = _time(
            lambda c=cfg, d=data: train_local(build_model(c.model, d.input_shape, 10), d, c.train, lr=0.05, seed=0)
        )
        row = {"model": model, "batch": batch, "samples": len(data.y), "non_private_ms": round(plain * 1e3, 1)}
        for mode in MODES:
            dcfg = load_config(overrides=f"{base} dp-level=sample dp-grad-sample-mode={mode}")
            try:
                t = _time(
                    lambda c=dcfg, d=data: dp_train_local(
                        build_model(c.model, d.input_shape, 10), d, c, lr=0.05, seed=0, noise_multiplier=1.0
                    )
                )
                row[f"{mode}_ms"] = round(t * 1e3, 1)
                row[f"{mode}_ratio"] = round(t / plain, 2)
            except Exception as err:  # a mode Opacus cannot run for this model is recorded, not fatal
                row[f"{mode}_ms"] = f"failed: {type(err).__name__}"
        row["auto_picks"] = choose_grad_sample_mode("auto", model, batch)
        rows.append(row)
        print(json.dumps(row), flush=True)
    payload = {
        "command": "python benchmarks/dp_cost.py",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 torch thread, torch {torch.__version__}",
        "target": "auto at most 2.5x non-private for the MLP",
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dp_cost.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Cost of DP-SGD per local epoch",
        "",
        f"`{payload['command']}` on {payload['date']} ({payload['machine']}). One client with all "
        f"{rows[0]['samples']} training samples; one local call of {EPOCHS} epochs (Opacus wrapping included) / "
        f"{EPOCHS}; median of {REPEATS}. Target: {payload['target']}.",
        "",
        "| model | batch | non-private ms | auto (picks) | hooks | ew | ghost |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(r, m):
        v = r[f"{m}_ms"]
        return f"{v} ms ({r[f'{m}_ratio']}x)" if isinstance(v, float) else v

    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['non_private_ms']} | {cell(r, 'auto')} ({r['auto_picks']}) | "
            f"{cell(r, 'hooks')} | {cell(r, 'ew')} | {cell(r, 'ghost')} |"
        )
    (RESULTS / "dp_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
