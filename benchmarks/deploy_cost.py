"""Seconds per round on Flower's Deployment Engine: fedtrain's ClientApp against a no-op one, and in-process.

One deployment, as in ``deploy/examples/loopback.sh``: ``fedtrain deploy init``, ``fedtrain split`` (2 devices,
IID digits), a SuperLink with TLS, node authentication, a state database and no dependency installation, 2
registered SuperNodes on loopback, each with its own data file. On it, ``--repeats`` times, interleaved (so a
change of load on the machine hits every arm alike), one ``flwr run`` of each arm, ``--rounds`` rounds each:

- ``noop``: ``benchmarks/deploy-noop``, a Message-API app whose ClientApp imports flwr and numpy only and
  replies with the arrays it got (as many float32 values as fedtrain's model); its ServerApp times each
  ``send_and_receive``. This is the floor: what Flower itself costs per round.
- ``fedtrain-dp``: the walkthrough's run (``data-source=node``, sample-level DP, central evaluation on the
  server's file); seconds per round from ``metrics.jsonl`` (train exchange and aggregation; central evaluation is
  outside it).
- ``fedtrain``: the same without DP (``fraction-evaluate=0``, so one message per node and round, as in the
  other arms).
- ``fedtrain-onnx``, ``fedtrain-onnx-dp``: ``fedtrain`` and ``fedtrain-dp`` with ``client-runtime='onnx'``: the
  nodes train with ONNX Runtime and numpy (``fedtrain.federation.onnx_client``), as a device without torch does
  (docs/edge.md). The SuperNodes here run this venv, which has torch: the ONNX client's config check
  (``device_config``) then imports the registries' modules, torch among them (about 1.3 s per message here), which a
  torch-free device skips. Same model, data, rounds and config otherwise; the run's gradient graphs are
  published once before the first repeat (``publish_run_graphs``, outside the timing), and each node's
  ``gradient-graphs`` node config names a link that points to the graphs of the arm that runs. The run key
  selects the runtime here (the nodes' config has no ``client-runtime``); on a device the node config's does,
  through the same code (``runtime_of``). Only with an ONNX arm in ``--arms`` do the nodes get that key.

- ``fedtrain-warm``, ``fedtrain-warm-dp``: ``fedtrain`` and ``fedtrain-dp`` with each device's warm worker up
  (``fedtrain deploy worker``, started before the run and stopped after it, outside the timing): the fresh ClientApp
  process relays each message to it, and torch and Opacus are imported once per worker instead of once per message.
  With a warm arm in ``--arms`` the nodes' config names the workers' sockets in every arm; in the other arms no
  worker is up and the ClientApp handles the message itself after a failed connect (under a millisecond).

- ``fedtrain@LABEL``, ``fedtrain-dp@LABEL`` (``--also LABEL=PATH``, repeatable): the same two runs with the app of
  another checkout (a worktree of an earlier commit), on the same deployment, interleaved with the others.

Then the same fedtrain configs on the in-process grid (``run_inprocess`` with the same node configs; the ONNX
ones with ``client-runtime='onnx'`` and the graphs in each node's config). ``--arms`` picks the arms (default:
every arm above). Round 1 of every run is reported apart (it installs the app on the SuperNodes) and left out of
the medians. The fedtrain
that the benchmark, its ``fedtrain`` commands and the app use is this checkout's (``PYTHONPATH``), or the other
checkout's for an ``@LABEL`` arm (its FAB's files come first on the ClientApp's path).

    python benchmarks/deploy_cost.py                   # writes benchmarks/results/deploy_cost.{json,md}
    python benchmarks/deploy_cost.py --rounds 3 --repeats 1 --out /tmp/dc
    python benchmarks/deploy_cost.py --also before=/tmp/wt-before
    python benchmarks/deploy_cost.py --arms noop,fedtrain-onnx --rounds 3 --repeats 1 --out /tmp/dc
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fedtrain, not whichever the environment has installed
NOOP = ROOT / "benchmarks" / "deploy-noop"
BIN = Path(sys.executable).parent
TAG = "FEDTRAIN_DEPLOY_COST_TAG"
NUM_PARAMS = 64 * 128 + 128 + 128 * 10 + 10  # the DP MLP recipe (hidden-sizes=128) on 8x8 digits
FEDTRAIN_ARMS = ("fedtrain-dp", "fedtrain-warm-dp", "fedtrain", "fedtrain-warm", "fedtrain-onnx-dp", "fedtrain-onnx")
ARMS = ("noop", *FEDTRAIN_ARMS)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _tagged(tag: str) -> list[int]:
    """Processes this benchmark started (they inherit the tag in their environment), by PID."""
    needle, pids = f"{TAG}={tag}".encode(), []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0") and _alive(int(proc.name)):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _stop(tag: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _tagged(tag):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        while _tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.3)


class Deployment:
    """A loopback deployment with TLS and node authentication: SuperLink, 2 registered SuperNodes."""

    def __init__(self, work: Path, port: int, tag: str, onnx: bool = False, warm: bool = False) -> None:
        self.work, self.port, self.tag, self.onnx, self.warm = work, port, tag, onnx, warm
        self.workers: list[subprocess.Popen[bytes]] = []
        self.graphs = work / "graphs" / "current"  # a link to the graphs of the ONNX arm that runs
        self.kit, self.data, self.cli = work / "kit", work / "data", work / "home" / "cli"
        self.env = {**os.environ, TAG: tag, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT)}  # fmt: skip

    def _run(self, *cmd: object, home: Path | None = None) -> str:
        env = {**self.env, **({"FLWR_HOME": str(home)} if home else {})}
        done = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout + done.stderr

    def _start(self, name: str, cmd: list[object], ready: str) -> subprocess.Popen[bytes]:
        home = self.work / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        log = self.work / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen([str(c) for c in cmd], env={**self.env, "FLWR_HOME": str(home)}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 180
        while ready not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        return proc

    def up(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self._run("fedtrain", "deploy", "init", self.kit, "--superlink-host", "127.0.0.1", "--devices", "2",
                  "--port", self.port)  # fmt: skip
        self._run("fedtrain", "split", self.data, "--run-config", "num-clients=2 partitioner=iid dp-level='sample'",
                  "--server-test")  # fmt: skip
        k = self.kit
        self._start("superlink", [BIN / "flower-superlink", "--ssl-ca-certfile", k / "ca.crt", "--ssl-certfile",
                                  k / "superlink.crt", "--ssl-keyfile", k / "superlink.key", "--enable-supernode-auth",
                                  "--database", self.work / "superlink.db", "--disable-runtime-dependency-installation",
                                  "--host", "127.0.0.1", "--port", self.port], "Uvicorn running")  # fmt: skip
        self.cli.mkdir(parents=True, exist_ok=True)
        (self.cli / "config.toml").write_text((k / "connection.toml").read_text())
        for i in (0, 1):
            self._run("flwr", "supernode", "register", k / "devices" / f"device-{i}" / "auth.key.pub", "fedtrain",
                      home=self.cli)  # fmt: skip
            dev = k / "devices" / f"device-{i}"
            self._start(f"device-{i}", [BIN / "flower-supernode", "--root-certificates", dev / "ca.crt",
                                        "--auth-supernode-private-key", dev / "auth.key", "--superlink",
                                        f"127.0.0.1:{self.port}", "--host", "127.0.0.1", "--port", self.port + 1 + i,
                                        "--node-config", self.node_config(i)], "SuperNode ID")  # fmt: skip

    def node_config(self, i: int) -> str:
        extra = f" gradient-graphs='{self.graphs}'" if self.onnx else ""
        if self.warm:
            from fedtrain.deploy.launch import worker_socket

            extra += f" warm-worker='{worker_socket(self.kit / 'devices' / f'device-{i}')}'"
        return f"data-path='{self.data / f'client-{i}.npz'}' partition-id={i} num-partitions=2{extra}"

    def start_workers(self) -> None:
        """Each device's warm worker (``fedtrain deploy worker``), up and serving."""
        for i in (0, 1):
            dev = self.kit / "devices" / f"device-{i}"
            self.workers.append(self._start(f"worker-{i}", [BIN / "fedtrain", "deploy", "worker", dev], "ready on"))

    def stop_workers(self) -> None:
        for proc in self.workers:
            proc.terminate()
        for proc in self.workers:
            proc.wait(timeout=60)
        self.workers.clear()

    def publish_graphs(self, arm: str, rounds: int) -> Path:
        """The gradient graphs of ``arm``'s config (what the server publishes for an ONNX run), once."""
        from fedtrain.config import load_config
        from fedtrain.export.gradient_graph import publish_run_graphs

        folder = self.work / "graphs" / arm
        if not folder.is_dir():
            cfg = load_config(overrides=fedtrain_config(self.data, self.work / "runs", rounds, arm))
            publish_run_graphs(cfg, folder)
        return folder

    def point_graphs_at(self, folder: Path) -> None:
        tmp = self.graphs.with_name("current.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(folder, target_is_directory=True)
        tmp.replace(self.graphs)

    def flwr_run(self, app: Path, run_config: str) -> tuple[str, float]:
        t0 = time.perf_counter()
        out = self._run("flwr", "run", app, "fedtrain", "--stream", "--run-config", run_config, home=self.cli)
        return out, time.perf_counter() - t0


def fedtrain_config(data: Path, out_dir: Path, rounds: int, arm: str) -> dict[str, Any]:
    """The run config of a fedtrain arm (``fedtrain``, ``fedtrain-dp``, ``fedtrain-onnx``, ``fedtrain-onnx-dp``; a warm
    arm's is its base arm's: the worker is a node's process, not a run setting)."""
    if arm not in FEDTRAIN_ARMS:
        raise ValueError(f"not a fedtrain arm: {arm!r} (expected one of {', '.join(FEDTRAIN_ARMS)})")
    dp = arm.endswith("-dp")
    cfg: dict[str, Any] = {"data-source": "node", "num-clients": 2, "server-data-path": str(data / "server-test.npz"),
                           "normalize": "range", "num-rounds": rounds, "out-dir": str(out_dir), "progress": False,
                           "report": False}  # fmt: skip
    if dp:  # the MLP recipe of the DP defaults (model=mlp: else the linear recipe, a 10x smaller model)
        cfg.update({"dp-level": "sample", "model": "mlp"})
    else:  # the DP MLP recipe's model and batch size, one message per node and round
        cfg.update({"hidden-sizes": "128", "activation": "tanh", "batch-size": 16, "local-epochs": 1,
                    "fraction-evaluate": 0.0})  # fmt: skip
    if "-onnx" in arm:
        cfg["client-runtime"] = "onnx"
    return cfg


def _toml(cfg: dict[str, Any]) -> str:
    from fedtrain.config import toml_value

    return " ".join(f"{k}={toml_value(v)}" for k, v in cfg.items())


def _round_seconds(run_dir: Path) -> list[float]:
    return [json.loads(x)["seconds"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _newest(folder: Path) -> Path:
    return max((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)


def run_arm(dep: Deployment, arm: str, rounds: int, rep: int, apps: dict[str, Path]) -> dict[str, Any]:
    """One ``flwr run`` of ``arm`` (``noop``, a fedtrain arm, or ``fedtrain``/``fedtrain-dp`` ``@LABEL``)."""
    out_dir = dep.work / "runs" / f"{arm.replace('@', '-at-')}-{rep}"
    out_dir.mkdir(parents=True)
    base, _, label = arm.partition("@")
    if arm == "noop":
        out_file = out_dir / "seconds.json"
        noop_config = f"num-rounds={rounds} num-nodes=2 num-params={NUM_PARAMS} out-file='{out_file}'"
        _, wall = dep.flwr_run(NOOP, noop_config)
        seconds = json.loads(out_file.read_text())["seconds"]
    else:
        cfg = fedtrain_config(dep.data, out_dir, rounds, base)
        if "-onnx" in base:
            dep.point_graphs_at(dep.publish_graphs(base, rounds))
        if "-warm" in base:
            dep.start_workers()
        try:
            _, wall = dep.flwr_run(apps[label] if label else ROOT, _toml(cfg))
        finally:
            dep.stop_workers()
        run_dir = _newest(out_dir)
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
        seconds = _round_seconds(run_dir)
    print(f"  {arm} (repeat {rep}): rounds {[round(s, 2) for s in seconds]} s, flwr run {wall:.1f} s", flush=True)
    return {"arm": arm, "repeat": rep, "seconds": seconds, "flwr_run_wall": wall}


def run_inprocess_arm(dep: Deployment, arm: str, rounds: int, rep: int) -> dict[str, Any]:
    from fedtrain.config import load_config
    from fedtrain.runtime import run_inprocess

    out_dir = dep.work / "runs" / f"inprocess-{arm}-{rep}"
    cfg = load_config(overrides=fedtrain_config(dep.data, out_dir, rounds, arm))
    nodes: list[dict[str, Any]] = [
        {"data-path": str(dep.data / f"client-{i}.npz"), "partition-id": i, "num-partitions": 2} for i in (0, 1)
    ]
    if "-onnx" in arm:
        for node in nodes:
            node["gradient-graphs"] = str(dep.publish_graphs(arm, rounds))
    t0 = time.perf_counter()
    run_dir = run_inprocess(cfg, node_configs=nodes)
    wall = time.perf_counter() - t0
    seconds = _round_seconds(run_dir)
    print(f"  in-process {arm} (repeat {rep}): rounds {[round(s, 3) for s in seconds]} s", flush=True)
    return {"arm": f"inprocess-{arm}", "repeat": rep, "seconds": seconds, "wall": wall}


def _commit(root: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    return (done.stdout.strip() or "?") + (" + uncommitted edits" if dirty else "")


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for arm in dict.fromkeys(r["arm"] for r in results):
        runs = [r for r in results if r["arm"] == arm]
        later = [s for r in runs for s in r["seconds"][1:]]
        table[arm] = {"round1_median": statistics.median(r["seconds"][0] for r in runs),
                      "later_median": statistics.median(later), "later_min": min(later), "later_max": max(later),
                      "n_later": len(later)}  # fmt: skip
    floor = table["noop"]["later_median"]
    for row in table.values():
        row["x_noop"] = row["later_median"] / floor
    return table


def write_markdown(path: Path, meta: dict[str, Any], table: dict[str, dict[str, float]]) -> None:
    lines = [
        "# Deployment Engine cost: seconds per round, fedtrain's ClientApp against a no-op ClientApp",
        "",
        f"`{meta['command']}` on {meta['machine']} ({meta['cpus']} CPUs, shared with other work), flwr "
        f"{meta['flwr']}{meta.get('load', '')}: 2 SuperNodes and the SuperLink on loopback, TLS and node "
        f"authentication, {meta['rounds']} rounds per run, {meta['repeats']} repeats, arms interleaved. Medians over "
        "rounds 2.. of all repeats (round 1 installs the app on the SuperNodes and is shown apart).",
        "",
        "| arm | round 1 (s) | later rounds, median (s) | min-max (s) | rounds | x no-op |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arm, r in table.items():
        lines.append(f"| {arm} | {r['round1_median']:.2f} | {r['later_median']:.2f} | {r['later_min']:.2f}-"
                     f"{r['later_max']:.2f} | {r['n_later']:.0f} | {r['x_noop']:.2f} |")  # fmt: skip
    lines += [
        "",
        "- `noop`: `benchmarks/deploy-noop` (flwr and numpy only; the reply is the arrays received, "
        f"{NUM_PARAMS} float32 values, the size of fedtrain's model here); timed around `send_and_receive`.",
        "- `fedtrain-dp`: the walkthrough's run (`deploy/examples/loopback.sh`: node-local data, sample-level DP); "
        "`fedtrain`: the same model without DP. Their seconds are `metrics.jsonl`'s per round (train exchange and "
        "aggregation).",
        "- `fedtrain-onnx*`: the same runs with `client-runtime='onnx'` (ONNX Runtime and numpy train on the nodes; "
        "the run's gradient graphs published before the first repeat, outside the timing). The nodes' venv has torch; "
        "the ONNX client does not import it (it trusts the server's check of the config's registry names), so these "
        "rows time what a torch-free device runs.",
        "- `fedtrain-warm*`: `fedtrain` and `fedtrain-dp` with each device's warm worker up (`fedtrain deploy worker`, "
        "started before the run and stopped after it): the fresh ClientApp process relays each message to it, which "
        "imported torch and Opacus once. In the other arms no worker is up and the ClientApp handles each message "
        "itself after a failed connect.",
        "- `*@LABEL`: the same run with the app of another checkout (`--also LABEL=PATH`: "
        + ", ".join(f"{k}: {v}" for k, v in meta.get("also", {}).items())
        + ").",
        "- `inprocess-*`: the same configs and node files on fedtrain's in-process grid (no SuperLink, no processes).",
        "- Where the difference goes: every message starts a fresh ClientApp process on its SuperNode, and the two "
        "SuperNodes share the machine's cores with the SuperLink; fedtrain's import and data load per message are "
        "measured in `benchmarks/results/client_cold_start.md`, the in-process rows are the training itself.",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--port", type=int, default=19480)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="deploy_cost")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=PATH",
                        help="time the fedtrain arms of another checkout too (a worktree), interleaved")  # fmt: skip
    parser.add_argument("--arms", default=",".join(ARMS),
                        help=f"comma-separated arms, run in this order (default, all: {','.join(ARMS)})")  # fmt: skip
    args = parser.parse_args()
    chosen = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(chosen) - set(ARMS))
    if unknown or "noop" not in chosen:
        parser.error(f"--arms {args.arms!r}: needs noop (the floor) and only {', '.join(ARMS)}; unknown: {unknown}")
    apps: dict[str, Path] = {}
    for item in args.also:
        label, sep, path = item.partition("=")
        if not sep or not label or not (Path(path) / "clients" / "client_app.py").is_file():
            parser.error(f"--also {item!r}: expected LABEL=PATH of a fedtrain checkout (with clients/client_app.py)")
        apps[label] = Path(path).resolve()
    fedtrain_arms = [a for a in ARMS if a in chosen and a != "noop"]
    arms = ["noop"]
    for base in fedtrain_arms:  # each fedtrain arm beside its other checkouts' runs (torch arms without workers only)
        arms += [f"{base}@{label}" for label in apps if "-onnx" not in base and "-warm" not in base] + [base]
    load_start = os.getloadavg()
    tag = uuid.uuid4().hex
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="deploy-cost-") as tmp:
        dep = Deployment(Path(tmp), args.port, tag, onnx=any("-onnx" in a for a in fedtrain_arms),
                         warm=any("-warm" in a for a in fedtrain_arms))  # fmt: skip
        try:
            dep.up()
            for arm in fedtrain_arms:
                if "-onnx" in arm:
                    dep.publish_graphs(arm, args.rounds)
            for rep in range(args.repeats):
                for arm in arms:
                    results.append(run_arm(dep, arm, args.rounds, rep, apps))
                for arm in fedtrain_arms:
                    if "-warm" not in arm:  # in-process, a warm arm is its base arm
                        results.append(run_inprocess_arm(dep, arm, args.rounds, rep))
        finally:
            _stop(tag)
        assert not _tagged(tag), "a process the benchmark started is still alive"
    meta = {"command": " ".join(["python benchmarks/deploy_cost.py", *sys.argv[1:]]), "machine": platform.machine(),
            "cpus": os.cpu_count(), "flwr": version("flwr"), "rounds": args.rounds,
            "repeats": args.repeats, "arms": arms, "also": {k: _commit(v) for k, v in apps.items()},
            "commit": _commit(ROOT),
            "load": f", at {_commit(ROOT)}, load average {load_start[0]:.2f} at the start and "
                    f"{os.getloadavg()[0]:.2f} at the end"}  # fmt: skip
    table = summarise(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "table": table, "runs": results}, indent=1))
    write_markdown(args.out / f"{args.name}.md", meta, table)
    print((args.out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
