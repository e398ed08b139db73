"""Digests of per-round metrics for a fixed set of runs: compare two versions of the code exactly.

A refactor that claims "behaviour and figures stay as they are" can be checked without re-running the
recorded benchmarks for noise: run this on both versions (``PYTHONPATH=<checkout> python
benchmarks/equivalence.py``) and compare the digests. Equal digests mean equal test accuracy and loss,
validation, training loss, reconstruction error and epsilon in every round, so every figure measured
on these code paths reproduces exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

from fedtrain.config import load_config
from fedtrain.runtime import run_inprocess

CONFIGS: dict[str, dict[str, object]] = {
    "defaults": {},
    "dp-sample": {"dp-level": "sample", "num-rounds": 5},
    "pretrain": {"plan": "pretrain,finetune", "pretrain-rounds": 2, "num-rounds": 3, "pretrain-method": "denoising"},
    "pretrain-rbm-dp": {
        "plan": "pretrain,finetune",
        "pretrain-rounds": 2,
        "num-rounds": 2,
        "pretrain-method": "rbm",
        "dp-level": "sample",
        "hidden-sizes": "32",
    },
    "user-dp": {"dp-level": "user", "num-clients": 20, "num-rounds": 4, "dp-user-clipping": "adaptive-server"},
    "fedadam": {"strategy": "fedadam", "num-rounds": 5, "l1": 0.0001, "clip-grad-norm": 1.0},
}
KEYS = ("phase", "round", "test_accuracy", "test_loss", "val_accuracy", "train_loss", "recon_error", "epsilon_max",
        "user_epsilon")  # fmt: skip


def digest(run_dir: Path) -> str:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    core = [[r.get(k) for k in KEYS] for r in records]
    return hashlib.sha256(json.dumps(core).encode()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(CONFIGS), help=f"runs (default: all of {', '.join(CONFIGS)})")
    args = parser.parse_args()
    for name in args.names:
        with tempfile.TemporaryDirectory() as out:
            cfg = load_config(overrides={**CONFIGS[name], "out-dir": out, "progress": False, "report": False})
            t0 = time.perf_counter()
            run_dir = run_inprocess(cfg)
            summary = json.loads((run_dir / "summary.json").read_text())
            print(f"{name:16s} {digest(run_dir)}  final={summary['final']['accuracy']:.4f}  "
                  f"{time.perf_counter() - t0:.1f}s  {summary['status']}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
