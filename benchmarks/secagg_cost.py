"""Cost of SecAgg+: seconds per round, bytes per client and aggregate error, plain against masked, in-process.

Plain (``round-exchange=message``) and SecAgg+ (``secure-aggregation=true``) run side by side in one process
on the in-process grid, for each number of clients and MLP size (about 10k, 100k and 1M parameters, digits):

- **bytes**: one untimed 1-round run per arm (also the warm-up). The grid's ``push_messages`` and
  ``pull_messages`` are wrapped and every train message (plain: one each way; SecAgg+: the 4 protocol stages)
  is serialised as Flower's transport does (``flwr.common.serde.message_to_proto(...).ByteSize()``); divided by
  the clients, that is the download and upload of one client in one round.
- **seconds per round**: ``--repeats`` repetitions, alternating plain and SecAgg+ (interleaved, so a change of
  load on the machine hits both arms alike), ``--rounds`` rounds each; round 1 of every run is left out
  (warm-up), the rest are pooled and the median taken. Two figures: the round's ``seconds`` in
  ``metrics.jsonl`` (train exchange and aggregation; central evaluation is outside it), and the time in the
  exchange's ``train`` call plus its ``aggregate`` (the part SecAgg+ changes). Client-side evaluation is off
  (``fraction-evaluate=0``): it is the same in both arms and would only dilute the ratio.
- **error**: the global arrays after round 1 of each SecAgg+ run against those of the plain run of the same
  repetition (same seed, so the same clients trained the same way), max absolute difference, with the
  quantisation bound ``K * 2c / q / W`` (``tests/test_secagg.py``).
- **profile**: cProfile of round 2 of one SecAgg+ run (the largest size, the fewest clients), split into
  client training, masking PRG, quantisation, mask arithmetic, Shamir shares and key agreement.

``--secagg-config`` changes the SecAgg+ arm only (e.g. fewer shares); ``--name`` names the results files.

    python benchmarks/secagg_cost.py                  # writes benchmarks/results/secagg_cost.{json,md}
    python benchmarks/secagg_cost.py --clients 10 --sizes 10k --rounds 2 --repeats 1 --out /tmp/sa
    python benchmarks/secagg_cost.py --clients 50 --name secagg_cost_shares11 \
        --secagg-config "secagg-num-shares=11 secagg-reconstruction-threshold=5"
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZES = {"10k": "128", "100k": "512,128", "1m": "1024,896"}  # MLP hidden sizes on digits (64 inputs, 10 classes)
TARGET = 2.0  # SecAgg+ at most 2x plain per round at 1M parameters (issue 10)
BASE = {"progress": False, "local-epochs": 1, "fraction-evaluate": 0.0}
SECAGG_EXTRA: dict[str, Any] = {}  # --secagg-config: overrides for the SecAgg+ arm only (e.g. fewer shares)


class _Probe:
    """Per-run instruments: exchange time per round, round-1 global arrays, and (optionally) message bytes."""

    def __init__(self) -> None:
        self.train_s: dict[int, float] = {}
        self.round1: list[np.ndarray] | None = None
        self.count_bytes = False
        self.bytes: dict[str, int] = {}  # "<stage> down|up" -> bytes, over all clients
        self.profile_round = 0  # profile this round's SecAgg+ train exchange (0 = none)
        self.profile: cProfile.Profile | None = None


PROBE = _Probe()


def _install_exchange_probe() -> None:
    """Wrap both exchanges' ``train`` (class attributes, this process only) to time it and keep round 1's result."""
    from fedtrain.federation.exchange.message import MessageExchange
    from fedtrain.federation.exchange.secaggplus import SecAggPlusExchange

    def wrap(cls: type) -> None:
        original: Callable[..., Any] = cls.train

        def train(self: Any, request: Any) -> Any:
            profiler = None
            if request.server_round == PROBE.profile_round and isinstance(self, SecAggPlusExchange):
                profiler = PROBE.profile = cProfile.Profile()
                profiler.enable()
            t0 = time.perf_counter()
            replies = original(self, request)
            spent = time.perf_counter() - t0
            aggregate = replies.aggregate

            def timed_aggregate() -> Any:
                t1 = time.perf_counter()
                arrays = aggregate()
                PROBE.train_s[request.server_round] = spent + time.perf_counter() - t1
                if profiler is not None:
                    profiler.disable()
                if request.server_round == 1 and arrays is not None:
                    PROBE.round1 = [arrays[k].numpy().copy() for k in arrays.keys()]
                return arrays

            replies.aggregate = timed_aggregate
            return replies

        cls.train = train  # type: ignore[method-assign]

    wrap(MessageExchange)
    wrap(SecAggPlusExchange)


def _stage(message: Any) -> str:
    """``train`` for a plain train message, the SecAgg+ stage for a protocol message, else its type."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    if message.has_content() and RECORD_KEY_CONFIGS in message.content.config_records:
        return str(message.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, "secagg"))
    return str(message.metadata.message_type)


def _count_bytes(grid: Any) -> None:
    """Wrap this grid's push/pull to add each message's serialised size to ``PROBE.bytes``."""
    from flwr.common.serde import message_to_proto

    push, pull = grid.push_messages, grid.pull_messages
    stage_of: dict[str, str] = {}

    def add(key: str, message: Any) -> None:
        PROBE.bytes[key] = PROBE.bytes.get(key, 0) + message_to_proto(message).ByteSize()

    def push_messages(messages: Iterable[Any]) -> Iterable[str]:
        sent = list(messages)
        ids = list(push(sent))
        for msg, msg_id in zip(sent, ids, strict=True):
            stage_of[msg_id] = _stage(msg)
            add(f"{stage_of[msg_id]} down", msg)
        return ids

    def pull_messages(message_ids: Iterable[str]) -> Iterable[Any]:
        replies = list(pull(list(message_ids)))
        for reply in replies:
            add(f"{stage_of.get(reply.metadata.reply_to_message_id, 'reply')} up", reply)
        return replies

    grid.push_messages, grid.pull_messages = push_messages, pull_messages


def run_once(num_clients: int, hidden: str, secagg: bool, rounds: int, out: Path, count: bool) -> dict[str, Any]:
    """One in-process run; its per-round seconds, exchange seconds, round-1 arrays and (if ``count``) bytes."""
    from clients.client_app import app as client_app
    from fedtrain.config import load_config
    from fedtrain.runtime import InProcessGrid, run_inprocess

    overrides = {**BASE, "num-clients": num_clients, "hidden-sizes": hidden, "num-rounds": rounds,
                 "out-dir": str(out), "round-exchange": "message"}  # fmt: skip
    if secagg:
        overrides.pop("round-exchange")
        overrides["secure-aggregation"] = True
        overrides.update(SECAGG_EXTRA)
    cfg = load_config(overrides=overrides)
    grid = InProcessGrid(client_app, num_clients, cfg.to_flat())
    PROBE.train_s, PROBE.round1, PROBE.bytes = {}, None, {}
    if count:
        _count_bytes(grid)
    run_dir = run_inprocess(cfg, grid=grid)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary["status"] != "completed" or len(lines) != rounds:
        raise RuntimeError(f"run {run_dir} did not complete {rounds} rounds: {summary['status']}")
    return {
        "round_s": {int(m["round"]): float(m["seconds"]) for m in lines},
        "train_s": dict(PROBE.train_s),
        "round1": PROBE.round1,
        "bytes": dict(PROBE.bytes),
        "first": lines[0],
        "cfg": cfg,
    }


def error_bound(cfg: Any, first: dict[str, Any]) -> float:
    """``K * 2c / q / W``: the quantisation bound of the unmasked mean on any coordinate (docs/secure-aggregation)."""
    from fedtrain.data import build_federated_data

    data = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)
    sizes = [len(c.train.y) for c in data.clients]
    max_weight = cfg.secagg.secagg_max_weight or max(sizes)
    total = sum(n / max_weight for n in sizes)
    c, q = float(first["secagg_clipping_range"]), float(cfg.secagg.secagg_quantization_range)
    return len(sizes) * 2 * c / q / total


def _value(text: str) -> Any:
    """A ``--secagg-config`` value as the loader takes it from Python: int, float, bool or str."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _per_client(counted: dict[str, int], clients: int, direction: str) -> int:
    return round(sum(v for k, v in counted.items() if k.endswith(direction) and k.split()[0] != "evaluate") / clients)


def _params(hidden: str) -> int:
    """The exact parameter count of the MLP fedtrain builds for ``hidden`` on digits."""
    from fedtrain.config import load_config
    from fedtrain.models import build_model

    cfg = load_config(overrides={"hidden-sizes": hidden})
    return sum(p.numel() for p in build_model(cfg.model, (64,), 10).parameters())


def measure(num_clients: int, size: str, rounds: int, repeats: int, out: Path) -> dict[str, Any]:
    hidden = SIZES[size]
    # Untimed 1-round runs: bytes (serialising every message costs time, so these are not timed) and warm-up.
    plain_b = run_once(num_clients, hidden, False, 1, out / "bytes-plain", count=True)
    secagg_b = run_once(num_clients, hidden, True, 1, out / "bytes-secagg", count=True)
    samples: dict[str, list[float]] = {"plain_round": [], "secagg_round": [], "plain_train": [], "secagg_train": []}
    paired, errors = [], []
    for rep in range(repeats):
        runs = {}
        for arm in ("plain", "secagg") if rep % 2 == 0 else ("secagg", "plain"):  # alternate which arm goes first
            runs[arm] = run_once(num_clients, hidden, arm == "secagg", rounds, out / f"{arm}-{rep}", count=False)
            later = [r for r in runs[arm]["round_s"] if r > 1] or [1]  # round 1 is warm-up unless it is the only one
            samples[f"{arm}_round"] += [runs[arm]["round_s"][r] for r in later]
            samples[f"{arm}_train"] += [runs[arm]["train_s"][r] for r in later]
        paired.append(statistics.median(runs["secagg"]["round_s"][r] for r in later)
                      / statistics.median(runs["plain"]["round_s"][r] for r in later))  # fmt: skip
        pairs = zip(runs["secagg"]["round1"], runs["plain"]["round1"], strict=True)
        errors.append(max(float(np.max(np.abs(a - b))) for a, b in pairs))
    med = {k: statistics.median(v) for k, v in samples.items()}
    row = {
        "clients": num_clients, "size": size, "hidden_sizes": hidden, "parameters": _params(hidden),
        "plain_round_s": round(med["plain_round"], 4), "secagg_round_s": round(med["secagg_round"], 4),
        "ratio_round": round(med["secagg_round"] / med["plain_round"], 2),
        "ratio_round_paired_median": round(statistics.median(paired), 2),
        "plain_train_s": round(med["plain_train"], 4), "secagg_train_s": round(med["secagg_train"], 4),
        "ratio_train": round(med["secagg_train"] / med["plain_train"], 2),
        "timed_rounds_per_arm": len(samples["plain_round"]),
        "samples_s": {k: [round(x, 4) for x in v] for k, v in samples.items()},
        "plain_down_bytes": _per_client(plain_b["bytes"], num_clients, "down"),
        "plain_up_bytes": _per_client(plain_b["bytes"], num_clients, "up"),
        "secagg_down_bytes": _per_client(secagg_b["bytes"], num_clients, "down"),
        "secagg_up_bytes": _per_client(secagg_b["bytes"], num_clients, "up"),
        "secagg_bytes_by_stage_per_client": {k: round(v / num_clients) for k, v in sorted(secagg_b["bytes"].items())},
        "max_abs_error": max(errors), "error_bound": error_bound(secagg_b["cfg"], secagg_b["first"]),
        "secagg_clipped": int(secagg_b["first"]["secagg_clipped"]),
        "secagg_shares": secagg_b["first"]["secagg_shares"], "secagg_threshold": secagg_b["first"]["secagg_threshold"],
    }  # fmt: skip
    return row


# Where a SecAgg+ round's time goes: (label, file suffix, functions); cumulative times, none nested in another.
PROFILE_PARTS = [
    ("client training (`train_local`)", "fedtrain/train/loop.py", ("train_local",)),
    ("masking PRG (`pseudo_rand_gen`, client masks and server unmasking)", "secaggplus_utils.py",
     ("pseudo_rand_gen",)),
    ("quantisation / dequantisation", "quantization.py", ("quantize", "dequantize")),
    ("mask arithmetic (add, subtract, mod, multiply)", "ndarrays_arithmetic.py",
     ("parameters_addition", "parameters_subtraction", "parameters_mod", "parameters_multiply", "parameters_divide")),
    ("Shamir shares (create, combine)", "shamir.py", ("create_shares", "combine_shares")),
    ("key agreement and share encryption", "symmetric_encryption.py",
     ("generate_shared_key", "encrypt", "decrypt")),
    ("message copies of the in-process grid (`deepcopy`)", "copy.py", ("deepcopy",)),
]  # fmt: skip


def profile_round(num_clients: int, size: str, out: Path) -> dict[str, Any]:
    """cProfile of round 2 of a 2-round SecAgg+ run: the share of each part, and the top functions by own time."""
    import pstats

    PROBE.profile_round = 2
    try:
        run = run_once(num_clients, SIZES[size], True, 2, out, count=False)
    finally:
        PROBE.profile_round = 0
    assert PROBE.profile is not None
    stats = pstats.Stats(PROBE.profile)
    entries = stats.stats  # type: ignore[attr-defined]
    total = max(ct for (_f, _l, _n), (_cc, _nc, _tt, ct, _c) in entries.items())
    parts = []
    for label, suffix, names in PROFILE_PARTS:
        # cProfile's cumulative time of a recursive function (deepcopy) counts its outermost calls only.
        seconds = sum(
            ct for (f, _l, n), (_cc, _nc, _tt, ct, _c) in entries.items() if f.endswith(suffix) and n in names
        )
        parts.append({"part": label, "seconds": round(seconds, 3), "share": round(seconds / total, 3)})
    top = sorted(entries.items(), key=lambda e: -e[1][2])[:10]
    return {
        "clients": num_clients, "size": size, "parameters": _params(SIZES[size]),
        "round_s_unprofiled_same_run_round_1": round(run["round_s"][1], 3), "profiled_round_s": round(total, 3),
        "parts": parts,
        "top_own_time": [{"function": f"{Path(f).name}:{line}({name})", "seconds": round(tt, 3), "calls": nc}
                         for (f, line, name), (_cc, nc, tt, _ct, _c) in top],
    }  # fmt: skip


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f}" if n < 1e7 else f"{n / 1e6:.1f}"


def write(payload: dict[str, Any], out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    rows = payload["rows"]
    lines = [
        "# SecAgg+ cost",
        "",
        f"`{payload['command']}` on {payload['date']} ({payload['machine']}; {payload['load']}).",
        "",
        f"Plan: {payload['plan']}",
        "",
        "| clients | shares / threshold | MLP (parameters) | plain s/round | SecAgg+ s/round | ratio (paired) | "
        "train exchange plain / SecAgg+ s (ratio) | MB/client/round plain down / up | SecAgg+ down / up | "
        "max abs error (bound) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['secagg_shares']} / {r['secagg_threshold']} | {r['hidden_sizes']} "
            f"({r['parameters']:,}) | {r['plain_round_s']:.3f} | "
            f"{r['secagg_round_s']:.3f} | **{r['ratio_round']:.2f}x** ({r['ratio_round_paired_median']:.2f}x) | "
            f"{r['plain_train_s']:.3f} / {r['secagg_train_s']:.3f} ({r['ratio_train']:.2f}x) | "
            f"{_mb(r['plain_down_bytes'])} / {_mb(r['plain_up_bytes'])} | "
            f"{_mb(r['secagg_down_bytes'])} / {_mb(r['secagg_up_bytes'])} | "
            f"{r['max_abs_error']:.2e} ({r['error_bound']:.2e}) |"
        )
    lines += ["", payload["target_line"], ""]
    prof = payload.get("profile")
    if prof:
        lines += [
            f"## Where a SecAgg+ round goes ({prof['clients']} clients, {prof['parameters']:,} parameters)",
            "",
            f"cProfile of round 2 of a 2-round SecAgg+ run (the train exchange: {prof['profiled_round_s']:.2f} s "
            "under the profiler). Cumulative time of each part:",
            "",
            "| part | s | share |",
            "|---|---|---|",
            *(f"| {p['part']} | {p['seconds']:.3f} | {p['share']:.0%} |" for p in prof["parts"]),
            "",
            "Top functions by own time: "
            + ", ".join(f"`{t['function']}` {t['seconds']:.3f} s ({t['calls']} calls)" for t in prof["top_own_time"]),
            "",
        ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,50", help="comma-separated numbers of clients")
    parser.add_argument("--sizes", default="10k,100k,1m", help=f"comma-separated model sizes: {', '.join(SIZES)}")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per timed run (round 1 is left out)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per arm, interleaved")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile of one SecAgg+ round")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--name", default="secagg_cost", help="results file name: <out>/<name>.{json,md}")
    parser.add_argument(
        "--secagg-config",
        default="",
        help='SecAgg+ arm only, e.g. "secagg-num-shares=10 secagg-reconstruction-threshold=5"',
    )
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or args.rounds < 1 or args.repeats < 1 or any(c < 3 for c in clients):
        parser.error(f"sizes from {list(SIZES)}, rounds and repeats >= 1, clients >= 3 (unknown sizes: {unknown})")

    for item in args.secagg_config.split():
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--secagg-config takes key=value items, got {item!r}")
        SECAGG_EXTRA[key] = _value(value)
    import torch

    _install_exchange_probe()
    load = f"load average {os.getloadavg()[0]:.2f} at start, machine shared"
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in clients:
            for size in sizes:
                row = measure(n, size, args.rounds, args.repeats, Path(tmp) / f"{n}-{size}")
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "samples_s"}), flush=True)
        profile = None
        if not args.no_profile:  # the largest model, the smallest cohort: where the 2x target is judged
            profile = profile_round(min(clients), "1m" if "1m" in sizes else sizes[-1], Path(tmp) / "profile")
            print(json.dumps(profile), flush=True)
    at_1m = [r for r in rows if r["size"] == "1m"]
    if at_1m:
        verdict = "; ".join(
            f"{r['clients']} clients: {r['ratio_round']:.2f}x "
            + ("(met)" if r["ratio_round"] <= TARGET else f"(not met, {r['ratio_round'] / TARGET:.2f}x the target)")
            for r in at_1m
        )
        target_line = f"Target: SecAgg+ at most {TARGET:g}x plain per round at 1M parameters. {verdict}."
    else:
        target_line = f"Target: SecAgg+ at most {TARGET:g}x plain per round at 1M parameters (not measured here)."
    command = "python benchmarks/secagg_cost.py"
    defaults = {
        "--clients": "10,50",
        "--sizes": "10k,100k,1m",
        "--rounds": "3",
        "--repeats": "3",
        "--name": "secagg_cost",
    }
    given = {"--clients": args.clients, "--sizes": args.sizes, "--rounds": str(args.rounds),
             "--repeats": str(args.repeats), "--name": args.name}  # fmt: skip
    command += "".join(f" {k} {v}" for k, v in given.items() if v != defaults[k])
    command += f' --secagg-config "{args.secagg_config}"' if args.secagg_config else ""
    command += " --no-profile" if args.no_profile else ""
    payload = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads",
        "load": load,
        "plan": (
            f"digits, MLP, defaults otherwise (FedAvg, every client each round, Dirichlet 0.5, batch 32, momentum "
            f"SGD 0.05), local-epochs=1, fraction-evaluate=0; {args.rounds} rounds x {args.repeats} interleaved "
            "repetitions per arm, round 1 of each run left out, medians of the rest; SecAgg+ on its defaults "
            "(shares and threshold as in the table, automatic clipping range, quantisation 2^22, modulus 2^32)"
            + (f" except `{args.secagg_config}`. " if args.secagg_config else ". ")
            + "s/round: the round's `seconds` in metrics.jsonl; train exchange: the exchange's train call and "
            "aggregation. Ratio: of the pooled medians (in brackets: the median of the per-repetition ratios). "
            "MB per client per round: serialised train messages (every SecAgg+ stage), one untimed 1-round run. "
            "Error: max |SecAgg+ - plain| of the global arrays after round 1, same seed; bound K * 2c / q / W."
        ),
        "target_line": target_line,
        "total_wall_s": round(time.perf_counter() - t0, 1),
        "rows": rows,
        "profile": profile,
    }
    write(payload, args.out, args.name)


if __name__ == "__main__":
    main()
