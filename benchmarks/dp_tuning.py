"""The tuning behind benchmarks/configs/dp-digits.toml: one seed, epsilon 3, one run per variant.

Each line of output is one run; results measured on 2026-11-25 are in benchmarks/results/dp_tuning.md.

    python benchmarks/dp_tuning.py [EPSILON]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

BASE = "dp-level=sample progress=false report=false "
ALL_DATA = "client-eval-fraction=0 fraction-evaluate=0 val-fraction=0 "
VARIANTS = [
    "hidden-sizes=128,64 batch-size=32 learning-rate=0.05 local-epochs=2 num-rounds=30",  # non-DP defaults
    "hidden-sizes=64 batch-size=32 learning-rate=0.1 local-epochs=1 num-rounds=30",
    "hidden-sizes=64 activation=tanh batch-size=32 learning-rate=0.1 local-epochs=1 num-rounds=30",
    "hidden-sizes=64 batch-size=64 learning-rate=0.2 local-epochs=1 num-rounds=30",
    "hidden-sizes=64 batch-size=0 learning-rate=0.5 local-epochs=1 num-rounds=30",
    "hidden-sizes=32 activation=tanh batch-size=32 learning-rate=0.2 local-epochs=2 num-rounds=15",
    "hidden-sizes=64 activation=tanh batch-size=16 learning-rate=0.05 local-epochs=1 num-rounds=30",
    "hidden-sizes=64 activation=tanh normalize=minmax batch-size=32 learning-rate=0.2 local-epochs=1 num-rounds=30",
    "hidden-sizes=64 activation=tanh batch-size=32 learning-rate=0.1 local-epochs=3 num-rounds=10",
    "hidden-sizes=64 activation=tanh batch-size=32 optimizer=adam learning-rate=0.005 local-epochs=1 num-rounds=30",
    "activation=tanh local-epochs=1 normalize=range hidden-sizes=64 batch-size=32 learning-rate=0.1 num-rounds=30",
    "activation=tanh local-epochs=1 normalize=range hidden-sizes=64 batch-size=32 learning-rate=0.3 num-rounds=30",
    "activation=tanh local-epochs=1 hidden-sizes=64 batch-size=32 learning-rate=0.2 num-rounds=30",
    "activation=tanh local-epochs=1 hidden-sizes=64 batch-size=32 learning-rate=0.1 num-rounds=50",
    "activation=tanh local-epochs=1 hidden-sizes=32 batch-size=32 learning-rate=0.2 num-rounds=30",
    "activation=tanh local-epochs=1 hidden-sizes=64 batch-size=64 learning-rate=0.2 num-rounds=30",
    "activation=tanh local-epochs=1 hidden-sizes=64 batch-size=32 learning-rate=0.2 num-rounds=30 dp-max-grad-norm=0.5",
    "activation=tanh local-epochs=1 hidden-sizes=64 batch-size=32 learning-rate=0.1 num-rounds=20",
    "activation=tanh local-epochs=1 hidden-sizes=64 batch-size=32 optimizer=sgd learning-rate=0.5 num-rounds=30",
    "activation=tanh local-epochs=1 hidden-sizes=128 batch-size=32 learning-rate=0.1 num-rounds=30",
    ALL_DATA + "activation=tanh local-epochs=1 hidden-sizes=64 batch-size=32 learning-rate=0.1 num-rounds=30",
    ALL_DATA + "activation=tanh local-epochs=1 hidden-sizes=64 batch-size=32 learning-rate=0.1 num-rounds=50",
    ALL_DATA
    + "activation=tanh local-epochs=1 hidden-sizes=64 batch-size=32 learning-rate=0.3 momentum=0.5 num-rounds=40",
    ALL_DATA + "activation=tanh local-epochs=1 hidden-sizes=16 batch-size=32 learning-rate=0.2 num-rounds=40",
    ALL_DATA + "activation=tanh local-epochs=1 hidden-sizes=64 batch-size=48 learning-rate=0.15 num-rounds=40",
    ALL_DATA + "activation=tanh local-epochs=1 hidden-sizes=128 batch-size=32 learning-rate=0.1 num-rounds=50",
]


def main() -> None:
    from fedtrain.config import load_config
    from fedtrain.runtime import run_inprocess

    eps = sys.argv[1] if len(sys.argv) > 1 else "3"
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            t0 = time.time()
            cfg = load_config(overrides=f"{BASE}{variant} dp-target-epsilon={eps} out-dir={tmp}")
            summary = json.loads((run_inprocess(cfg) / "summary.json").read_text())
            print(json.dumps({"eps": eps, "cfg": variant, "acc": round(summary["final"]["accuracy"], 4),
                              "sec": round(time.time() - t0, 1)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
