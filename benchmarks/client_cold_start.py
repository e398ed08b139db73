"""What a deployed ClientApp costs per message before it trains: a fresh process, imports, data, model.

Flower's Deployment Engine starts a new ``flwr-clientapp`` process for every message (flwr 1.42), so each
train or evaluate message pays Python's start-up, every import of the ClientApp module and the loading of the
node's data again. This benchmark records one real train and one evaluate message of a node-local-data run
(``data-source=node``, one npz file per node, as ``fedtrain split`` writes them), then replays each in fresh
processes, timing:

- ``import``: ``import clients.client_app`` (what the ClientApp process does first);
- ``handle``: the handler on the recorded message (data loading, model built from the message, local work);
- ``process``: the whole fresh process, start to exit, as the SuperNode sees it.

Runs are interleaved with a bare ``python -c "import flwr.clientapp"`` process (Flower's own floor) so machine
noise hits both alike.

    python benchmarks/client_cold_start.py [--repeats 5] [--out benchmarks/results/client_cold_start.md]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CHILD = r"""
import pickle, sys, time, json
t0 = time.perf_counter()
import clients.client_app as ca
t1 = time.perf_counter()
with open(sys.argv[1], "rb") as fh:
    msg, ctx = pickle.load(fh)
from flwr.common import Message
reply = ca.app(msg, ctx)
t2 = time.perf_counter()
assert not reply.has_error(), reply.error
print(json.dumps({"import": t1 - t0, "handle": t2 - t1}))
"""


def _record(work: Path) -> dict[str, Path]:
    """Run a 1-round node-local federation in-process and pickle its first train and evaluate message."""
    from fedtrain.cli import main as fedtrain_main
    from fedtrain.config import load_config
    from fedtrain.federation import build_client_app
    from fedtrain.runtime import run_inprocess
    from fedtrain.runtime.grid import InProcessGrid

    nodes = work / "nodes"
    fedtrain_main(["split", str(nodes), "--run-config", "num-clients=2", "--server-test"])
    cfg = load_config(overrides={"num-clients": 2, "num-rounds": 1, "min-clients": 2, "data-source": "node",
                                 "classes": "0,1,2,3,4,5,6,7,8,9", "input-shape": "1,8,8", "input-max": 16.0,
                                 "normalize": "range", "server-data-path": str(nodes / "server-test.npz"),
                                 "fraction-evaluate": 1.0, "progress": False, "report": False,
                                 "out-dir": str(work / "runs")})  # fmt: skip
    node_configs = [{"data-path": str(nodes / f"client-{i}.npz")} for i in range(2)]
    recorded: dict[str, Path] = {}

    class Recording(InProcessGrid):
        def push_messages(self, messages):  # type: ignore[no-untyped-def]
            messages = list(messages)
            for m in messages:
                kind = m.metadata.message_type.split(".")[0]
                if kind not in recorded:
                    path = work / f"{kind}.pkl"
                    with path.open("wb") as fh:
                        pickle.dump((m, self.contexts[m.metadata.dst_node_id]), fh)
                    recorded[kind] = path
            return super().push_messages(messages)

    grid = Recording(build_client_app(), 2, cfg.to_flat(), node_configs=node_configs)
    run_inprocess(cfg, grid=grid)
    return recorded


def _fresh(args: list[str], root: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, cwd=root, check=True).stdout
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "client_cold_start.md")
    parser.add_argument("--label", default="", help="a note for the header, e.g. the commit measured")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose ClientApp is timed (a worktree)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recorded = _record(Path(tmp))
        rows: dict[str, dict[str, list[float]]] = {k: {"import": [], "handle": [], "process": []} for k in recorded}
        floor: list[float] = []
        for _ in range(args.repeats):  # interleaved: floor, train, evaluate, floor, ...
            floor.append(_fresh([sys.executable, "-c", "import flwr.clientapp, flwr.app"], args.root)[0])
            for kind, path in recorded.items():
                wall, out = _fresh([sys.executable, "-c", _CHILD, str(path)], args.root)
                parts = json.loads(out.strip().splitlines()[-1])
                rows[kind]["process"].append(wall)
                rows[kind]["import"].append(parts["import"])
                rows[kind]["handle"].append(parts["handle"])
    med = {k: {p: statistics.median(v) for p, v in parts.items()} for k, parts in rows.items()}
    load = os.getloadavg()[0]
    note = f" ({args.label})" if args.label else ""
    lines = [
        "# ClientApp cold start per message",
        "",
        f"`python benchmarks/client_cold_start.py --repeats {args.repeats}`{note}"
        f" on {time.strftime('%Y-%m-%d')} ({platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average {load:.2f} at the end, machine shared).",
        "",
        "One recorded message of a 2-node, node-local-data run (npz per node, MLP defaults), replayed in a fresh "
        "process each time; medians of the repeats. Floor: a process that only imports `flwr.clientapp` and "
        "`flwr.app`, Flower's own minimum per message.",
        "",
        "| message | fresh process (s) | of which `import clients.client_app` (s) | handler (s) | process / floor |",
        "|---|---|---|---|---|",
    ]
    fl = statistics.median(floor)
    for kind, m in med.items():
        ratio = m["process"] / fl
        lines.append(f"| {kind} | {m['process']:.2f} | {m['import']:.2f} | {m['handle']:.2f} | {ratio:.2f}x |")
    lines.append(f"| floor (`import flwr.clientapp`) | {fl:.2f} | | | 1.00x |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "floor": floor}, indent=2) + "\n")


if __name__ == "__main__":
    main()
