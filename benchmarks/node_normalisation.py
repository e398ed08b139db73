"""Node data under sample-level DP: ``range`` against ``standard`` fitted on the server's own file.

With ``data-source=node`` the linear DP recipe cannot run ``normalize=dp-standard`` (no statistics round yet);
``standard`` fitted on ``server-data-path`` reads no client record. This writes digits node files
(``fedtrain split``'s layout, 10 clients, Dirichlet 0.5, the server's test file) from ``--split-seed``, runs the
DP defaults on them in-process with each normalisation and prints the mean accuracy of the last round over
``--seeds``: ``--metric val`` (the server's validation split: for choosing) or ``test`` (for reporting).
Results are in benchmarks/results/dp_tuning.md.

    python benchmarks/node_normalisation.py --split-seed 100 --seeds 100,101,102 --metric val
    python benchmarks/node_normalisation.py --split-seed 0 --seeds 0,1,2 --metric test
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    from fedtrain.config import load_config
    from fedtrain.data.federated import write_node_files
    from fedtrain.runtime.inprocess import run_inprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split-seed", type=int, default=100)
    ap.add_argument("--seeds", default="100,101,102")
    ap.add_argument("--metric", choices=("val", "test"), default="val")
    ap.add_argument("--epsilons", default="1,3")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="node-norm-"))
    write_node_files(load_config(overrides={"num-clients": 10, "seed": args.split_seed}), work / "nodes",
                     server_test=True, overwrite=True)  # fmt: skip
    nodes = [{"data-path": str(work / "nodes" / f"client-{i}.npz"), "partition-id": i, "num-partitions": 10}
             for i in range(10)]  # fmt: skip
    key, server_file = f"{args.metric}_accuracy", str(work / "nodes" / "server-test.npz")
    for eps in (float(e) for e in args.epsilons.split(",")):
        for normalize in ("range", "standard"):
            scores = []
            for seed in (int(s) for s in args.seeds.split(",")):
                cfg = load_config(overrides={
                    "data-source": "node", "num-clients": 10, "server-data-path": server_file,
                    "dp-level": "sample", "dp-target-epsilon": eps, "normalize": normalize, "seed": seed,
                    "progress": False, "report": False, "out-dir": str(work / "runs"),
                })  # fmt: skip
                run_dir = run_inprocess(cfg, node_configs=nodes)
                lines = (run_dir / "metrics.jsonl").read_text().splitlines()
                scores.append(json.loads(lines[-1])[key])
            print(f"epsilon {eps:g} normalize={normalize:8s} {args.metric} {statistics.fmean(scores):.4f} "
                  f"{[round(s, 4) for s in scores]}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
