"""What a deployed ClientApp costs per message before it trains: a fresh process, imports, data, model.

Flower's Deployment Engine starts a new ``flwr-clientapp`` process for every message (flwr 1.42), so each
train or evaluate message pays Python's start-up, every import of the ClientApp module and the loading of the
node's data again. This benchmark records one real train and one evaluate message of a node-local-data run
(``data-source=node``, one npz per node, as ``fedtrain split`` writes them) and one train message of the same run
with sample-level DP, then replays each in fresh processes, timing:

- ``import``: ``import clients.client_app`` (what the ClientApp process does first);
- ``handle``: the handler on the recorded message (imports it makes, data loading, model built from the message,
  local work);
- ``process``: the whole fresh process, start to exit, as the SuperNode sees it.

With ``--warm``, each message is also replayed with the node's warm worker up (``fedtrain deploy worker``, started
once from the same checkout before the repeats): the fresh process then relays the message to the worker, which
has torch and Opacus loaded (rows under "..., warm worker").

Several checkouts can be timed in one run (``--root before=/tmp/wt-before --root after=.``, worktrees of two
commits): every repeat runs a bare ``python -c "import flwr.clientapp"`` process (Flower's own floor), then each
message under each checkout, interleaved, so machine noise hits all alike.

    python benchmarks/client_cold_start.py [--repeats 5] [--root LABEL=PATH ...] [--imports] [--warm] [--out PATH.md]
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
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Message

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
    """Run 1-round node-local federations in-process and pickle their first train and evaluate message."""
    from fedtrain.cli import main as fedtrain_main
    from fedtrain.config import load_config
    from fedtrain.federation import build_client_app
    from fedtrain.runtime import run_inprocess
    from fedtrain.runtime.grid import InProcessGrid

    nodes = work / "nodes"
    fedtrain_main(["split", str(nodes), "--run-config", "num-clients=2", "--server-test"])
    node_configs = [{"data-path": str(nodes / f"client-{i}.npz")} for i in range(2)]
    recorded: dict[str, Path] = {}
    # Client-side evaluation is refused under sample DP (unnoised statistics): the DP run records its train message.
    for prefix, extra in (("", {"fraction-evaluate": 1.0}), ("dp-", {"dp-level": "sample", "fraction-evaluate": 0.0})):
        cfg = load_config(overrides={"num-clients": 2, "num-rounds": 1, "min-clients": 2, "data-source": "node",
                                     "classes": "0,1,2,3,4,5,6,7,8,9", "input-shape": "1,8,8", "input-max": 16.0,
                                     "normalize": "range", "server-data-path": str(nodes / "server-test.npz"),
                                     "progress": False, "report": False, "out-dir": str(work / "runs"),
                                     **extra})  # fmt: skip

        class Recording(InProcessGrid):
            tag = prefix

            def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
                messages = list(messages)
                for m in messages:
                    kind = self.tag + m.metadata.message_type.split(".")[0]
                    if kind not in recorded:
                        path = work / f"{kind}.pkl"
                        with path.open("wb") as fh:
                            pickle.dump((m, self.contexts[m.metadata.dst_node_id]), fh)
                        recorded[kind] = path
                return super().push_messages(messages)

        grid = Recording(build_client_app(), 2, cfg.to_flat(), node_configs=node_configs)
        run_inprocess(cfg, grid=grid)
    return recorded


def _start_worker(sock: Path, root: Path) -> subprocess.Popen[str]:
    """A warm worker of ``root``'s fedtrain on ``sock``, once it serves."""
    code = f"from fedtrain.federation.warm_worker import serve; serve({str(sock)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while not sock.with_name(sock.name + ".key").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the warm worker did not come up: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    return proc


def _relayed(path: Path, sock: Path) -> Path:
    """A copy of the recorded message whose node config names the warm worker at ``sock``."""
    with path.open("rb") as fh:
        msg, ctx = pickle.load(fh)
    ctx.node_config["warm-worker"] = str(sock)
    out = path.with_name(f"{path.stem}-{sock.parent.name}.pkl")
    with out.open("wb") as fh:
        pickle.dump((msg, ctx), fh)
    return out


def _fresh(args: list[str], root: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, cwd=root, check=True).stdout
    return time.perf_counter() - t0, out


# Packages whose import time is reported apart (self time of each module, from ``python -X importtime``).
_GROUPS = ("torch._dynamo", "torch", "opacus", "scipy", "sympy", "mpmath", "onnxruntime", "onnx", "sklearn", "flwr",
           "grpc", "google", "numpy", "fedtrain", "clients")  # fmt: skip


def _import_breakdown(path: Path, root: Path) -> dict[str, float]:
    """Seconds of import per package (module self times; torch._dynamo apart from torch) for one message."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", _CHILD, str(path)], capture_output=True,
                          text=True, cwd=root, check=True)  # fmt: skip
    out: dict[str, float] = {}
    for line in done.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        name = fields[2].strip()
        group = next((g for g in _GROUPS if name == g or name.startswith(g + ".")), "other")
        out[group] = out.get(group, 0.0) + int(fields[0]) / 1e6
    return out


def _root(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"--root {text!r}: expected LABEL=PATH, e.g. before=/tmp/wt-before")
    if not (Path(path) / "clients" / "client_app.py").is_file():
        raise argparse.ArgumentTypeError(f"--root {text!r}: {path} has no clients/client_app.py (not a checkout)")
    return label, Path(path).resolve()


def _commit(root: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    return (done.stdout.strip() or "?") + (" + uncommitted edits" if dirty else "")


def _table(med: dict[str, dict[str, float]], floor: float) -> list[str]:
    lines = [
        "| message | fresh process (s) | of which `import clients.client_app` (s) | handler (s) | process / floor |",
        "|---|---|---|---|---|",
    ]
    for kind, m in med.items():
        ratio = m["process"] / floor
        lines.append(f"| {kind} | {m['process']:.2f} | {m['import']:.2f} | {m['handle']:.2f} | {ratio:.2f}x |")
    lines.append(f"| floor (`import flwr.clientapp`) | {floor:.2f} | | | 1.00x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "client_cold_start.md")
    parser.add_argument("--label", default="", help="a note for the header")
    parser.add_argument("--root", type=_root, action="append", default=[],
                        help="LABEL=PATH: a checkout to time (a worktree); repeat to compare")  # fmt: skip
    parser.add_argument("--warm", action="store_true",
                        help="also replay each message relayed to a warm worker (fedtrain deploy worker)")  # fmt: skip
    parser.add_argument("--imports", action="store_true",
                        help="break each message's imports down by package (one -X importtime run)")  # fmt: skip
    args = parser.parse_args()
    roots: dict[str, Path] = dict(args.root) or {"this checkout": ROOT}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        recorded = _record(Path(tmp))
        # label -> (checkout, message kind -> recorded message); a warm label replays relayed copies.
        plans: dict[str, tuple[Path, dict[str, Path]]] = {lb: (r, recorded) for lb, r in roots.items()}
        workers: list[subprocess.Popen[str]] = []
        try:
            if args.warm:
                for i, (label, root) in enumerate(roots.items()):
                    sock = Path(tmp) / f"worker{i}" / "w.sock"
                    workers.append(_start_worker(sock, root))
                    plans[f"{label}, warm worker"] = (root, {k: _relayed(p, sock) for k, p in recorded.items()})
            rows: dict[str, dict[str, dict[str, list[float]]]] = {
                label: {k: {"import": [], "handle": [], "process": []} for k in recorded} for label in plans
            }
            floor: list[float] = []
            for _ in range(args.repeats):  # interleaved: floor, then every message under every checkout, again
                floor.append(_fresh([sys.executable, "-c", "import flwr.clientapp, flwr.app"], ROOT)[0])
                for kind in recorded:
                    for label, (root, paths) in plans.items():
                        wall, out = _fresh([sys.executable, "-c", _CHILD, str(paths[kind])], root)
                        parts = json.loads(out.strip().splitlines()[-1])
                        rows[label][kind]["process"].append(wall)
                        rows[label][kind]["import"].append(parts["import"])
                        rows[label][kind]["handle"].append(parts["handle"])
        finally:
            for proc in workers:  # by PID
                proc.terminate()
                proc.wait(timeout=60)
        imports = {lb: {k: _import_breakdown(p, r) for k, p in recorded.items()} for lb, r in roots.items()} if (
            args.imports) else {}  # fmt: skip
    load_end = os.getloadavg()
    fl = statistics.median(floor)
    med = {lb: {k: {p: statistics.median(v) for p, v in r[k].items()} for k in r} for lb, r in rows.items()}
    note = f" ({args.label})" if args.label else ""
    flags = "".join(f" --root {lb}=..." for lb in roots) if args.root else ""
    flags += " --imports" if args.imports else ""
    flags += " --warm" if args.warm else ""
    lines = [
        "# ClientApp cold start per message",
        "",
        f"`python benchmarks/client_cold_start.py --repeats {args.repeats}{flags}`{note} on "
        f"{time.strftime('%Y-%m-%d %H:%M')} ({platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end, "
        "machine shared with other work).",
        "",
        "One recorded message of a 2-node, node-local-data run (npz per node, MLP defaults; `dp-train`: the same run "
        "with `dp-level=sample`, whose defaults are a 128-unit MLP and batch 16), replayed in a fresh process each "
        "time; medians of the repeats. Floor: a process that only imports `flwr.clientapp` and `flwr.app`, Flower's "
        "own minimum per message.",
    ]
    for label, (root, _) in plans.items():
        lines += ["", f"## {label}: `{_commit(root)}`", "", *_table(med[label], fl)]
        if label in imports:
            found = {g for b in imports[label].values() for g in b}
            groups = sorted(found, key=lambda g: -imports[label]["train"].get(g, 0))
            lines += ["", "Imports by package, seconds (self time of each module, one `-X importtime` run; it slows "
                      "imports down, so these add up to more than the columns above):", "",
                      "| message | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]  # fmt: skip
            for kind, b in imports[label].items():
                lines.append(f"| {kind} | " + " | ".join(f"{b.get(g, 0):.2f}" for g in groups) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text, encoding="utf-8")
    meta = {"roots": {lb: _commit(r) for lb, r in roots.items()}, "load_start": load_start, "load_end": load_end,
            "repeats": args.repeats}  # fmt: skip
    raw = {"meta": meta, "rows": rows, "floor": floor, "imports": imports}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
