"""``python -m fedtrain.edge bench MODEL``: single-sample latency as a device sees it (numpy and onnxruntime only)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from fedtrain.edge.errors import EdgeInputError
from fedtrain.edge.runtime import EdgeModel

__all__ = ["add_bench_parser", "measure_latency"]


def measure_latency(model: EdgeModel, calls: int = 1000, *, warmup: int = 50, seed: int = 0) -> dict[str, float]:
    """Seconds per single-sample ``predict`` (median, 90th percentile, min) over ``calls`` timed calls.

    Each call goes through the input checks, as a device's would; samples are drawn within the card's range.
    """
    if calls < 1:
        raise EdgeInputError(f"calls must be >= 1, got {calls}")
    low, high = (model.card.input_range or [0.0, 1.0])[:2]
    low = 0.0 if low is None else low
    high = low + 1.0 if high is None else high
    x = np.random.default_rng(seed).uniform(low, high, size=model.input_shape).astype(np.float32)
    for _ in range(warmup):
        model.predict(x)
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        model.predict(x)
        times[i] = time.perf_counter() - t0
    return {
        "median_s": float(np.median(times)),
        "p90_s": float(np.percentile(times, 90)),
        "min_s": float(times.min()),
        "calls": float(calls),
    }


def add_bench_parser(subparsers: Any) -> None:
    """Register the ``bench`` subcommand."""
    p = subparsers.add_parser("bench", help="median single-sample latency of a model")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--calls", type=int, default=1000, help="timed calls (default 1000)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    model = EdgeModel.load(args.model, threads=args.threads)
    stats = measure_latency(model, args.calls)
    micro = {k.replace("_s", "_us"): round(v * 1e6, 1) for k, v in stats.items() if k.endswith("_s")}
    print(json.dumps({"model": str(args.model), "threads": args.threads, "calls": args.calls, **micro}))
    return 0
