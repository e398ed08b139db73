"""Simulation speed: a plain torch loop (the floor) against fedtrain's runtimes on the same work.

Every contender trains the same MLP (64-128-64-10 on digits) from the same initial weights on the
same partition, 1 local epoch, batch 32, SGD 0.05 with momentum 0.9, FedAvg over all clients,
central test accuracy after every round. Each (contender, plan) runs in a fresh process (so peak
RSS is its own); contenders are interleaved repeat by repeat, so shared load hits all alike.
Wall time excludes imports; it includes building the data.

Contenders: ``floor`` (written below, a few dozen lines), ``sequential`` (fedtrain in-process,
``round-exchange=message``), ``vectorised`` (``round-exchange=vectorised``), ``pool``
(in-process with a 2-process pool), ``flwr`` (``flwr run .``, Simulation Engine).

    nice -n 5 python benchmarks/simulation_speed.py --plans 10x20,100x10 --contenders floor,sequential
    python benchmarks/simulation_speed.py --one floor --plan 10x20 [--one-dp]     # one measurement, JSON on stdout
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

BASE: dict[str, Any] = {
    "hidden-sizes": "128,64", "local-epochs": 1, "batch-size": 32, "optimizer": "momentum",
    "learning-rate": 0.05, "momentum": 0.9, "fraction-evaluate": 0.0, "client-eval-fraction": 0.0,
    "report": False, "progress": False, "min-clients": 1,
}  # fmt: skip
DP: dict[str, Any] = {"dp-level": "sample", "dp-noise-multiplier": 1.0, "dp-target-epsilon": 1000.0,
                      "dp-max-grad-norm": 1.0, "dp-grad-sample-mode": "hooks"}  # fmt: skip


def plan_config(plan: str, dp: bool) -> dict[str, Any]:
    """The run config of ``plan`` (``CLIENTSxROUNDS``)."""
    clients, rounds = (int(v) for v in plan.split("x"))
    extra: dict[str, Any] = {"num-clients": clients, "num-rounds": rounds}
    if clients >= 1000:  # digits' 1293 training records: one or two each
        extra.update({"partitioner": "iid", "min-partition-size": 1})
    elif clients >= 100:
        extra["min-partition-size"] = 2
    return {**BASE, **extra, **(DP if dp else {})}


def floor(flat: dict[str, Any]) -> list[float]:
    """The plain loop: FedAvg with momentum SGD, client after client, the same seeds as fedtrain's clients."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from fedtrain.config import load_config
    from fedtrain.data import build_federated_data
    from fedtrain.models import build_model

    cfg = load_config(overrides=flat)
    torch.set_num_threads(1)
    fd = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)
    model = build_model(cfg.model, fd.input_shape, len(fd.classes), seed=cfg.runtime.seed)
    test_x, test_y = torch.from_numpy(fd.test.x), torch.from_numpy(fd.test.y)
    data = [TensorDataset(torch.from_numpy(c.labeled.x), torch.from_numpy(c.labeled.y)) for c in fd.clients]
    loss_fn = torch.nn.CrossEntropyLoss()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    accuracy = []
    for r in range(1, cfg.strategy.num_rounds + 1):
        total = {k: torch.zeros_like(v) for k, v in weights.items()}
        count = 0
        for pid, ds in enumerate(data):
            local = copy.deepcopy(model) if cfg.sample_dp else model  # Opacus hooks a module once
            local.load_state_dict(weights)
            seed = cfg.runtime.seed * 1_000_003 + r * 1_009 + pid  # as fedtrain.federation.call_seed
            if cfg.sample_dp:
                opt, loader, module = _private(local, ds, cfg, seed)
            else:
                size = min(cfg.train.batch_size, len(ds))
                loader = DataLoader(ds, batch_size=size, shuffle=True, generator=torch.Generator().manual_seed(seed))
                opt = torch.optim.SGD(local.parameters(), lr=cfg.train.learning_rate, momentum=cfg.train.momentum)
                module = local
            for x, y in loader:
                if len(y) == 0:
                    continue
                opt.zero_grad()
                loss_fn(module(x), y).backward()
                opt.step()
            n = len(ds)
            for k, v in local.state_dict().items():
                total[k] += v.detach() * n
            count += n
        weights = {k: v / count for k, v in total.items()}
        model.load_state_dict(weights)
        with torch.no_grad():
            accuracy.append(float((model(test_x).argmax(1) == test_y).float().mean()))
    return accuracy


def _private(model: Any, ds: Any, cfg: Any, seed: int) -> tuple[Any, Any, Any]:
    """Opacus on the plain loop, as a DP user would write it (fresh engine per client call)."""
    import warnings

    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    warnings.filterwarnings("ignore")
    torch.manual_seed(seed)
    size = min(cfg.train.batch_size, len(ds))
    loader = DataLoader(ds, batch_size=size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.learning_rate, momentum=cfg.train.momentum)
    module, opt, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=cfg.privacy.dp_noise_multiplier,
        max_grad_norm=cfg.privacy.dp_max_grad_norm, poisson_sampling=True,
    )  # fmt: skip
    return opt, loader, module


def pfl_run(flat: dict[str, Any]) -> list[float]:
    """Apple's pfl 0.6 (FedAvg, PyTorch, SimulatedBackend) on the same partition, model and initial weights.

    pfl batches and samples its own way (no shuffling, its own cohort sampler), so its accuracy is close to,
    not equal to, the others'. Installed beside the project: PFL_PATH (see main) on sys.path.
    """
    import torch
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics, Weighted
    from pfl.model.pytorch import PyTorchModel

    from fedtrain.config import load_config
    from fedtrain.data import build_federated_data
    from fedtrain.models import build_model

    cfg = load_config(overrides=flat)
    torch.set_num_threads(1)
    fd = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)
    net = build_model(cfg.model, fd.input_shape, len(fd.classes), seed=cfg.runtime.seed)
    loss_fn = torch.nn.CrossEntropyLoss()

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:
            self.eval() if eval else self.train()
            return loss_fn(self(x), y)

        def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> dict[str, Any]:
            logits = self(x)
            return {"loss": Weighted(float(loss_fn(logits, y)) * len(y), len(y)),
                    "accuracy": Weighted(float((logits.argmax(1) == y).sum()), len(y))}  # fmt: skip

    users = {i: (torch.from_numpy(c.labeled.x), torch.from_numpy(c.labeled.y)) for i, c in enumerate(fd.clients)}
    train = FederatedDataset(
        make_dataset_fn=lambda uid: Dataset(raw_data=list(users[uid]), user_id=uid),
        user_sampler=get_user_sampler("minimize_reuse", list(users)),
        user_id_to_weight={i: len(u[1]) for i, u in users.items()},
    )
    module = Net()
    model = PyTorchModel(
        module, local_optimizer_create=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=cfg.train.momentum),
        central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
    )  # fmt: skip
    test_x, test_y = torch.from_numpy(fd.test.x), torch.from_numpy(fd.test.y)
    accuracy: list[float] = []

    class Accuracy(TrainingProcessCallback):  # type: ignore[misc]
        def after_central_iteration(self, aggregate_metrics: Any, model: Any, *, central_iteration: int) -> Any:
            with torch.no_grad():
                accuracy.append(float((module(test_x).argmax(1) == test_y).float().mean()))
            return False, Metrics()

    FederatedAveraging().run(
        NNAlgorithmParams(central_num_iterations=cfg.strategy.num_rounds, evaluation_frequency=1,
                          train_cohort_size=cfg.partition.num_clients, val_cohort_size=0),
        SimulatedBackend(training_data=train, val_data=train),
        model,
        NNTrainHyperParams(local_learning_rate=cfg.train.learning_rate, local_num_epochs=cfg.train.local_epochs,
                           local_batch_size=cfg.train.batch_size),
        NNEvalHyperParams(local_batch_size=1024),
        callbacks=[Accuracy()],
    )  # fmt: skip
    return accuracy


def fedtrain_inprocess(flat: dict[str, Any], out: Path) -> list[float]:
    from fedtrain.config import load_config
    from fedtrain.results import RunFolder
    from fedtrain.runtime import run_inprocess

    run_dir = run_inprocess(load_config(overrides={**flat, "out-dir": str(out)}))
    return [r["test_accuracy"] for r in RunFolder(run_dir).read_metrics()]


def fedtrain_flwr(flat: dict[str, Any], out: Path) -> list[float]:
    from fedtrain.results import RunFolder
    from fedtrain.runtime.flwr_run import flwr_run

    result = flwr_run(ROOT, flwr_home=out / "flwr-home", num_supernodes=int(flat["num-clients"]),
                      run_config={**flat, "out-dir": str(out / "runs")}, timeout=900)  # fmt: skip
    if result.returncode != 0 or result.run_dir is None:
        raise RuntimeError(result.output[-1500:])
    return [r["test_accuracy"] for r in RunFolder(result.run_dir).read_metrics()]


def measure(contender: str, plan: str, dp: bool) -> dict[str, Any]:
    """One measurement in this process: wall seconds (imports excluded), peak RSS, accuracy per round."""
    import sklearn.model_selection  # noqa: F401  imports are not timed (torch.optim and sklearn load lazily)
    import torch
    import torch._dynamo

    import fedtrain.runtime

    if dp:  # Opacus (and the scipy it imports) loads on the first private call: every contender's, the floor's too
        import fedtrain.privacy.opacus_api  # noqa: F401
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    flat = plan_config(plan, dp)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if contender == "floor":
            acc = floor(flat)
        elif contender == "pfl":
            if dp:  # pfl's DP is central (its own mechanisms and accountants), not Opacus' per-client DP-SGD
                raise SystemExit("not run: pfl has no per-client DP-SGD to compare with")
            acc = pfl_run(flat)
        elif contender == "flwr":
            acc = fedtrain_flwr(flat, Path(tmp))
        else:
            exchange = {"sequential": {}, "vectorised": {"round-exchange": "vectorised"},
                        "pool": {"inprocess-workers": 2}}[contender]  # fmt: skip
            acc = fedtrain_inprocess({**flat, **exchange}, Path(tmp))
        wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    if contender == "flwr":  # the work runs in Ray's processes: count them too
        rss += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    return {"wall_s": round(wall, 3), "peak_rss_gb": round(rss, 3), "accuracy": [round(a, 4) for a in acc]}


PFL_PATH = os.environ.get("PFL_PATH", "/tmp/pfl-0.6")  # pip install --no-deps --target $PFL_PATH pfl==0.6.0 ...


def run_one(contender: str, plan: str, dp: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", contender, "--plan", plan] + (["--one-dp"] if dp else [])
    # pfl beside the project; a PYTHONPATH already set (a worktree's checkout) stays ahead of the installed fedtrain
    paths = [p for p in (os.environ.get("PYTHONPATH"), PFL_PATH) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)} if contender == "pfl" else None
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1][:300]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def sweep_timing(name: str) -> None:
    """The README's sweep example on the config's own exchange ('keep', before) and on 'auto' (after)."""
    from fedtrain.config import load_config
    from fedtrain.runtime.sweep import parse_epsilons, run_sweep

    base = load_config(file=ROOT / "benchmarks" / "configs" / "dp-digits.toml")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for exchange in ("keep", "auto"):
            t0 = time.perf_counter()
            folder = run_sweep(base, parse_epsilons("0.5,1,2,4,8,inf"), 3, Path(tmp) / exchange, exchange=exchange)
            wall = time.perf_counter() - t0
            payload = json.loads((folder / "sweep.json").read_text())
            rows[exchange] = {"wall_s": round(wall, 1), "rows": payload["rows"], "workers": payload["workers"]}
            print(exchange, rows[exchange]["wall_s"], flush=True)
    result = {
        "command": "nice -n 5 python benchmarks/simulation_speed.py --sweep "
        "(= fedtrain sweep --epsilons 0.5,1,2,4,8,inf --seeds 3 --config benchmarks/configs/dp-digits.toml)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "before_keep_exchange": rows["keep"],
        "after_auto_vectorised": rows["auto"],
    }
    (RESULTS / f"{name}_sweep.json").write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", default="10x20,100x10")
    parser.add_argument("--contenders", default="floor,sequential")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dp", choices=("off", "on", "both"), default="off")
    parser.add_argument("--name", default="simulation_speed", help="results file stem")
    parser.add_argument("--one", help="measure one contender in this process (internal)")
    parser.add_argument("--plan")
    parser.add_argument("--one-dp", action="store_true", help="with --one: sample-level DP")
    parser.add_argument("--sweep", action="store_true", help="time the README's sweep example, before/after")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.plan, args.one_dp)))
        return
    if args.sweep:
        sweep_timing(args.name)
        return
    contenders = args.contenders.split(",")
    dps = {"off": [False], "on": [True], "both": [False, True]}[args.dp]
    rows = []
    for plan in args.plans.split(","):
        for dp in dps:
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
            for _ in range(args.repeats):  # interleaved: floor, sequential, ..., floor, sequential, ...
                for c in contenders:
                    runs[c].append(run_one(c, plan, dp))
                    print(plan, "dp" if dp else "", c, json.dumps(runs[c][-1])[:200], flush=True)
            rows.append({"plan": plan, "dp": dp, "results": {c: _summarise(r) for c, r in runs.items()}})
    payload = {
        "command": "nice -n 5 python " + " ".join(["benchmarks/simulation_speed.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other work), "
        f"Python {platform.python_version()}",
        "work": "MLP 64-128-64-10 on digits, 1 local epoch, batch 32, SGD 0.05 momentum 0.9, FedAvg, all clients",
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(payload))
    print(markdown(payload))


def markdown(payload: dict[str, Any]) -> str:
    """The results table: median wall (s), peak RSS (GB), ratios against the floor, accuracy agreement."""
    lines = [
        "# Simulation speed", "",
        f"`{payload['command']}` on {payload['date']} ({payload['machine']}); work: {payload['work']}. Each cell "
        "is the median wall time over the repeats (fresh process each, imports excluded), peak RSS in brackets; "
        "'x floor' is wall / floor's wall (below 1 is faster than the plain loop). 'same acc.' says whether the "
        "test accuracy after every round equals the floor's.", "",
        "| plan | DP | contender | wall (s) | peak RSS (GB) | x floor | same acc. | final acc. |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in payload["rows"]:
        res = row["results"]
        base = res.get("floor", {})
        for name, r in res.items():
            if "error" in r:
                lines.append(f"| {row['plan']} | {'yes' if row['dp'] else 'no'} | {name} | error: {r['error'][:80]} "
                             "| | | | |")  # fmt: skip
                continue
            ratio = f"{r['wall_s'] / base['wall_s']:.2f}" if base.get("wall_s") else "-"
            same = "yes" if base.get("accuracy") == r["accuracy"] else "no"
            lines.append(
                f"| {row['plan']} | {'yes' if row['dp'] else 'no'} | {name} | {r['wall_s']} | {r['peak_rss_gb']} | "
                f"{ratio} | {same} | {r['accuracy'][-1] if r['accuracy'] else '-'} |"
            )
    return "\n".join(lines) + "\n"


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" in r] or runs
    if any("error" in r for r in runs):
        return {"error": ok[0]["error"]}
    return {
        "wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
        "min_wall_s": min(r["wall_s"] for r in runs),
        "walls": [r["wall_s"] for r in runs],
        "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
        "accuracy": runs[0]["accuracy"],
    }


if __name__ == "__main__":
    main()
