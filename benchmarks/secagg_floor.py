"""The least a SecAgg+ round costs on Flower 1.42: its masking and quantisation work alone, against a plain round.

SecAgg+ in fedtrain runs Flower's own client mod (``secaggplus_mod``) and server workflow (``SecAggPlusWorkflow``), as
the issue asks. Whatever fedtrain does around them, every client of a round runs the mod's masked-upload stage, and
the server its unmasking. This times exactly those array operations, with Flower's functions on the same shapes and
in the same order as the mod and the workflow (``flwr/client/mod/secure_aggregation/secaggplus_mod.py``, stage 2;
``flwr/server/workflow/secure_aggregation/secaggplus_workflow.py``, unmask):

- per client: scale by the weight ratio, ``quantize`` (stochastic rounding), ``factor_combine``, the private mask and
  one pairwise mask per neighbour (``pseudo_rand_gen``, added or subtracted), ``parameters_mod``;
- on the server: the sum of the masked vectors, each survivor's private mask regenerated and subtracted, the mod,
  ``dequantize``.

Key agreement, Shamir shares, message handling and the four stages' exchanges are left out, so the figure is a lower
bound on a SecAgg+ round's extra cost. The plain round is fedtrain's in-process FedAvg round on the same model, run
interleaved in the same process (medians of rounds 2.. of each run).

    python benchmarks/secagg_floor.py                    # writes benchmarks/results/secagg_floor.{json,md}
    python benchmarks/secagg_floor.py --repeats 1 --out /tmp/sf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HIDDEN = "1024,896"  # the 1M-parameter MLP of benchmarks/secagg_cost.py (993,930 parameters on digits)
CLIENTS = 10


def plain_round_seconds(out: Path, rounds: int = 3) -> float:
    """Median seconds of rounds 2.. of a plain in-process FedAvg run (message exchange, as secagg_cost's plain arm)."""
    from fedtrain.config import load_config
    from fedtrain.runtime import run_inprocess

    cfg = load_config(overrides={"num-clients": CLIENTS, "hidden-sizes": HIDDEN, "num-rounds": rounds,
                                 "local-epochs": 1, "fraction-evaluate": 0.0, "progress": False, "report": False,
                                 "round-exchange": "message", "out-dir": str(out)})  # fmt: skip
    run_dir = run_inprocess(cfg)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return statistics.median(float(m["seconds"]) for m in lines[1:])


def model_shapes() -> list[tuple[int, ...]]:
    from fedtrain.config import load_config
    from fedtrain.models import build_model

    cfg = load_config(overrides={"hidden-sizes": HIDDEN})
    return [tuple(v.shape) for v in build_model(cfg.model, (1, 8, 8), 10).state_dict().values()]


def primitives_seconds(shapes: list[tuple[int, ...]], shares: int, seed: int = 0) -> dict[str, float]:
    """Seconds of one round's masking and quantisation work (all clients, then the server), Flower's functions."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        factor_extract,
        parameters_addition,
        parameters_mod,
        parameters_multiply,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize, quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    rng = np.random.default_rng(seed)
    clip, target, mod = 8.0, 1 << 22, 1 << 32  # fedtrain's quantisation and modulus defaults (docs/secure-aggregation)
    updates = [[rng.normal(0, 0.01, s).astype(np.float32) for s in shapes] for _ in range(CLIENTS)]
    seeds = [os.urandom(32) for _ in range(CLIENTS)]
    pair_keys = {(i, j): os.urandom(32) for i in range(CLIENTS) for j in range(CLIENTS) if i < j}
    neighbours = [[(i + d) % CLIENTS for d in range(1, shares)] for i in range(CLIENTS)]  # shares - 1 each
    t0 = time.perf_counter()
    masked = []
    for i, update in enumerate(updates):
        q_ratio = round(1.0 * target)
        vec = parameters_multiply(update, q_ratio / target)
        vec = factor_combine(q_ratio, quantize(vec, clip, target))
        dims = [a.shape for a in vec]
        vec = parameters_addition(vec, pseudo_rand_gen(seeds[i], mod, dims))
        for j in neighbours[i]:
            mask = pseudo_rand_gen(pair_keys[(min(i, j), max(i, j))], mod, dims)
            vec = parameters_addition(vec, mask) if i > j else parameters_subtraction(vec, mask)
        masked.append(parameters_mod(vec, mod))
    t1 = time.perf_counter()
    total = masked[0]
    for vec in masked[1:]:
        total = parameters_addition(total, vec)
    for i in range(CLIENTS):  # every client survived: only the private masks are regenerated
        total = parameters_subtraction(total, pseudo_rand_gen(seeds[i], mod, [a.shape for a in total]))
    q_total, total = factor_extract(parameters_mod(total, mod))
    for vec in dequantize(total, clip, target):
        vec += -(CLIENTS - 1) * clip
        vec *= target / q_total
    t2 = time.perf_counter()
    return {"clients": t1 - t0, "server": t2 - t1, "total": t2 - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shares", default="3,9", help="SecAgg+ shares per client (Flower's least is 3; fedtrain's "
                        "default at 10 clients is 9)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    shares = [int(s) for s in args.shares.split(",")]
    shapes = model_shapes()
    params = sum(int(np.prod(s)) for s in shapes)
    load = os.getloadavg()[0]
    plain: list[float] = []
    prim: dict[int, list[dict[str, float]]] = {s: [] for s in shares}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):  # interleaved: a plain run, then the primitives at each share count
            plain.append(plain_round_seconds(Path(tmp) / f"plain-{rep}"))
            for s in shares:
                prim[s].append(primitives_seconds(shapes, s, seed=rep))
            print(f"repeat {rep}: plain {plain[-1]:.3f} s/round; " + ", ".join(
                f"{s} shares {prim[s][-1]['total']:.3f} s" for s in shares), flush=True)  # fmt: skip
    p = statistics.median(plain)
    rows = []
    for s in shares:
        c, sv, t = (statistics.median(r[k] for r in prim[s]) for k in ("clients", "server", "total"))
        rows.append({"shares": s, "clients_s": c, "server_s": sv, "total_s": t, "lower_bound_ratio": (p + t) / p})
    payload = {"command": " ".join(["python benchmarks/secagg_floor.py", *sys.argv[1:]]), "parameters": params,
               "clients": CLIENTS, "plain_round_s": p, "plain_runs": plain, "rows": rows, "load_start": load,
               "load_end": os.getloadavg()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "secagg_floor.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [
        "# SecAgg+ on Flower 1.42: the least a round can cost",
        "",
        f"`{payload['command']}` on {payload['date']} ({payload['machine']}, {payload['cpus']} cores, 1 torch thread; "
        f"load average {load:.2f} at the start, {payload['load_end']:.2f} at the end); {CLIENTS} clients, MLP "
        f"{HIDDEN} ({params:,} parameters), {args.repeats} interleaved repeats, medians.",
        "",
        "Plain: fedtrain's in-process FedAvg round (rounds 2.. of a 3-round run). Primitives: Flower's quantisation "
        "and masking of one SecAgg+ round, all clients then the server (see the script's docstring), without key "
        "agreement, Shamir shares or messages. Lower bound: (plain + primitives) / plain, what a SecAgg+ round "
        "costs at the least against a plain one, whatever the code around Flower's mod and workflow.",
        "",
        f"Plain round: **{p:.3f} s**.",
        "",
        "| shares per client | clients' masked uploads (s) | server unmasking (s) | primitives (s) | lower bound |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['shares']} | {r['clients_s']:.3f} | {r['server_s']:.3f} | {r['total_s']:.3f} | "
                     f"**{r['lower_bound_ratio']:.2f}x** |")  # fmt: skip
    (args.out / "secagg_floor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
