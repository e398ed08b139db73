"""The torch-free ONNX client against the torch/Opacus client: epoch time, peak RSS, install size, accuracy.

Epoch time: one client holding the whole digits training split (1,293 samples), the digits MLP 64-128-64-10,
batch 32, 1 thread (torch and onnxruntime), one local epoch per call, DP-SGD (sigma 1.0, C 1.0) and without.
The four contenders run interleaved in one process (the order rotates every repetition), so shared load
affects them alike; the median of the repetitions (after a warm-up) is reported. The torch call includes
Opacus' wrapping (each round makes a fresh PrivacyEngine), the ONNX call the device's whole local call with
its graphs already loaded (a device loads them once per phase).

Peak RSS: a fresh process per client runtime running three local DP epochs (the ONNX one with torch, Opacus,
scikit-learn, scipy and dp-accounting blocked from import). Install size: ``du`` of fresh venvs made with
``python -m venv`` and ``pip install`` from the machine's package index: the ONNX client's, by
deploy/edge-train-requirements.txt's recipe (its requirements, then flwr with ``--no-deps``), the same runtime
with all of flwr's declared dependencies, the torch client's (flwr, numpy, torch, opacus, scikit-learn) and flwr
with numpy alone; fedtrain itself (3 MB) is in none of them. Each venv's size per installed package (the files
of its RECORD, byte-compiled files included) shows what makes up the figures.

Accuracy (``--accuracy``): the digits defaults with sample-level DP (epsilon 3), seeds 0..N-1 (``--seeds``,
3 by default), every client on torch, every client on ONNX, and half and half, each drawing its own batches and
noise (paired differences with 95 % t-intervals); and every client on torch consuming the batches and noise the
all-ONNX run drew (``torch-replayed``): the same randomness, so what differs is the computation alone. Without
``--accuracy`` the last accuracy results are kept; ``--only-accuracy`` reruns them alone, keeping the timings.

    python benchmarks/edge_client.py [--edge-venv DIR --edge-full-venv DIR --torch-venv DIR --base-venv DIR]
        [--accuracy [--seeds N]]
    python benchmarks/edge_client.py --only-accuracy --seeds 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REPEATS = 9
OVERRIDES = "hidden-sizes=128,64 activation=relu batch-size=32 local-epochs=1"
SIGMA = 1.0
EDGE_REQUIREMENTS = ROOT / "deploy" / "edge-train-requirements.txt"
# Each venv: the pip install lines that make it (one list of arguments per line).
VENV_RECIPES: dict[str, list[list[str]]] = {
    "onnx": [["-r", str(EDGE_REQUIREMENTS)], ["--no-deps", "flwr==1.42.*"]],  # the device's recipe
    "onnx_full_flwr": [["flwr==1.42.*", "numpy", "onnxruntime==1.32.0"]],  # the same with all flwr declares
    "torch": [["flwr==1.42.*", "numpy", "torch==2.13.0", "opacus==1.6.0", "scikit-learn"]],
    "base": [["flwr==1.42.*", "numpy"]],  # what both clients need: the difference is each runtime's own cost
}
# Bytes per installed distribution of the running venv: every file its RECORD lists (pyc included), each file once.
PACKAGE_SIZES = """
import importlib.metadata as md, json
from pathlib import Path
seen, out = set(), {}
for d in md.distributions():
    total = 0
    for f in d.files or []:
        p = Path(d.locate_file(f)).resolve()
        if p not in seen and p.is_file():
            seen.add(p)
            total += p.stat().st_size
    out[d.metadata["Name"]] = out.get(d.metadata["Name"], 0) + total
print(json.dumps(out))
"""
BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "opacus", "sklearn", "functorch", "scipy", "dp_accounting"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, _Block())
"""


def _setup(dp: bool) -> tuple[Any, Any]:
    from fedtrain.config import load_config
    from fedtrain.data import ArrayDataset, build_federated_data

    cfg = load_config(overrides=OVERRIDES + (" dp-level=sample dp-max-grad-norm=1.0" if dp else ""))
    fd = build_federated_data(cfg.data, cfg.partition, 0)
    data = ArrayDataset(
        np.concatenate([c.train.x for c in fd.clients]), np.concatenate([c.train.y for c in fd.clients]), fd.classes
    )
    return cfg, data


def _onnx_call(
    cfg: Any, data: Any, graphs: Path, dp: bool, start: dict[str, np.ndarray], noise: str = "run", clipped: bool = True
) -> Any:
    from fedtrain.edge.train.graph import graph_name, load_graph
    from fedtrain.edge.train.sampling import build_draws
    from fedtrain.edge.train.trainer import DPSettings, LocalData, train

    graph = load_graph(graphs, graph_name("finetune", -1, dp, clipped=clipped), threads=1)
    local = LocalData(data.x, data.y)
    names = list(graph.spec.params)

    def call() -> None:
        params = {k: v.copy() for k, v in start.items()}
        dps = DPSettings(SIGMA, cfg.privacy.dp_max_grad_norm) if dp else None
        train(graph, params, local, cfg.train, lr=0.05, draws=build_draws(noise, 0), trainable=names, dp=dps)

    return call


def _torch_call(cfg: Any, data: Any, dp: bool) -> Any:
    from fedtrain.models import build_model
    from fedtrain.privacy import dp_train_local
    from fedtrain.train import train_local

    def call() -> None:
        model = build_model(cfg.model, data.input_shape, 10)
        if dp:
            dp_train_local(model, data, cfg, lr=0.05, seed=0, noise_multiplier=SIGMA)
        else:
            train_local(model, data, cfg.train, lr=0.05, seed=0)

    return call


def epoch_times(graphs: Path) -> dict[str, Any]:
    import torch

    from fedtrain.models import build_model

    torch.set_num_threads(1)
    calls: dict[str, Any] = {}
    for dp in (True, False):
        cfg, data = _setup(dp)
        model = build_model(cfg.model, data.input_shape, 10)
        start = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
        tag = "dp" if dp else "plain"
        calls[f"torch_{tag}"] = _torch_call(cfg, data, dp)
        calls[f"onnx_{tag}"] = _onnx_call(cfg, data, graphs, dp, start)
        if dp:  # the per-sample graph, clipping in numpy: what ghost clipping inside the graph saves
            calls["onnx_dp_numpy_clip"] = _onnx_call(cfg, data, graphs, dp, start, clipped=False)
    names = list(calls)
    for name in names:  # warm-up
        calls[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(REPEATS):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            t0 = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(s) for n, s in samples.items()}
    return {
        "samples": len(_setup(False)[1].y),
        "seconds_per_epoch": {n: round(v, 4) for n, v in med.items()},
        "all_seconds": {n: [round(x, 4) for x in s] for n, s in samples.items()},
        "speedup_dp": round(med["torch_dp"] / med["onnx_dp"], 2),
        "speedup_plain": round(med["torch_plain"] / med["onnx_plain"], 2),
    }


def child(kind: str, work: str) -> None:
    """Three local DP epochs in this fresh process; print the peak RSS (MiB)."""
    from fedtrain.config import RunConfig
    from fedtrain.data import ArrayDataset

    folder = Path(work)
    arrays = np.load(folder / "data.npz")
    data = ArrayDataset(arrays["x"], arrays["y"], tuple(str(c) for c in range(10)))
    flat = json.loads((folder / "config.json").read_text())
    if kind == "onnx":
        from fedtrain.edge.train.graph import load_graph
        from fedtrain.federation.onnx_client import device_config

        cfg: RunConfig = device_config(flat)  # torch is blocked here: the registries' names are the server's
        spec = load_graph(folder / "graphs", "finetune-per-sample").spec
        rng = np.random.default_rng(0)
        start = {k: (0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in spec.params.items()}
        call = _onnx_call(cfg, data, folder / "graphs", True, start)
    else:
        import torch

        from fedtrain.config import load_config

        torch.set_num_threads(1)
        call = _torch_call(load_config(base=flat), data, True)
    for _ in range(3):
        call()
    loaded = sorted(m for m in ("torch", "opacus", "sklearn", "scipy", "dp_accounting") if m in sys.modules)
    # VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss over fork and exec into the child's
    peak = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:")) / 1024  # fmt: skip
    print(json.dumps({"kind": kind, "peak_rss_mib": round(peak, 1), "loaded": loaded}))


def peak_rss(work: Path) -> dict[str, Any]:
    cfg, data = _setup(True)
    np.savez(work / "data.npz", x=data.x, y=data.y)
    (work / "config.json").write_text(json.dumps(cfg.to_flat()))
    out = {}
    for kind in ("torch", "onnx"):
        script = str(Path(__file__).resolve())
        code = (BLOCK if kind == "onnx" else "") + (
            f"import runpy, sys; sys.path.insert(0, {str(ROOT)!r}); sys.argv = [{script!r}, '--child', {kind!r}, "
            f"{str(work)!r}]; runpy.run_path({script!r}, run_name='__main__')"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def _recipe_text(recipe: list[list[str]]) -> str:
    return "; ".join("pip install " + " ".join(a.replace(str(ROOT) + "/", "") for a in args) for args in recipe)


def venv_sizes(given: dict[str, Path | None], work: Path) -> dict[str, Any]:
    """Bytes of each venv (whole folder, site-packages, per package), building the ones not given."""
    out: dict[str, Any] = {}
    for name, recipe in VENV_RECIPES.items():
        venv = given.get(name) or work / f"venv-{name}"
        if given.get(name) is None:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            for args in recipe:
                subprocess.run([venv / "bin" / "pip", "install", "-q", *args], check=True, capture_output=True)
        site = next((venv / "lib").glob("python3*/site-packages"))
        sizes = json.loads(
            subprocess.run([venv / "bin" / "python", "-c", PACKAGE_SIZES], capture_output=True, text=True,
                           check=True).stdout
        )  # fmt: skip
        out[name] = {
            "recipe": _recipe_text(recipe), "venv_mb": round(_du(venv) / 1e6, 1),
            "site_packages_mb": round(_du(site) / 1e6, 1), "has_torch": (site / "torch").exists(),
            "packages_mb": {k: round(v / 1e6, 2) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])},
        }  # fmt: skip
    out["ratio_venv"] = round(out["torch"]["venv_mb"] / out["onnx"]["venv_mb"], 2)
    out["target_onnx_venv_mb"] = round(out["torch"]["venv_mb"] / 5, 1)
    extra = {k: out[k]["venv_mb"] - out["base"]["venv_mb"] for k in ("onnx", "onnx_full_flwr", "torch")}
    out["over_base_mb"] = {k: round(v, 1) for k, v in extra.items()}
    return out


def _paired(rows: list[dict[str, Any]], arm: str) -> dict[str, float]:
    """Mean of ``arm`` minus torch over the seeds, with a 95 % t-interval of the paired difference."""
    from scipy import stats  # type: ignore[import-untyped, unused-ignore]

    diff = [r[arm]["test_accuracy"] - r["torch"]["test_accuracy"] for r in rows]
    mean = statistics.mean(diff)
    half = (
        float(stats.t.ppf(0.975, len(diff) - 1) * statistics.stdev(diff) / len(diff) ** 0.5) if len(diff) > 1 else 0.0
    )
    return {"mean": mean, "low": mean - half, "high": mean + half}


class _Shared:
    """The ONNX arm's Poisson batches and noise, in the order drawn, for the ``torch-replayed`` arm to consume."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, list[int]]] = []  # (records the client holds, the batch's indices)
        self.noise: list[np.ndarray] = []

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Every ONNX client call's draws (whatever they are: ``dp-noise-seed`` decides) pass through here."""
        import fedtrain.federation.onnx_client as onnx_client
        from fedtrain.edge.train.sampling import Draws, build_draws

        shared = self

        class Recorded(Draws):
            def __init__(self, inner: Draws) -> None:
                self.inner = inner

            def uniform(self, size: int) -> np.ndarray:
                return self.inner.uniform(size)

            def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
                z = self.inner.normal(shape, std)
                shared.noise.append(z)
                return z

            def poisson(self, n: int, q: float) -> np.ndarray:
                idx = self.inner.poisson(n, q)
                shared.batches.append((n, idx.tolist()))
                return idx

            def permutation(self, n: int) -> np.ndarray:
                return self.inner.permutation(n)

        with mock.patch.object(onnx_client, "build_draws", lambda *a: Recorded(build_draws(*a))):
            yield

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Opacus' sampler and noise give the recorded draws; a client of another size or shape fails loudly."""
        import torch
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        batches, noise = list(self.batches), list(self.noise)

        def sampler_iter(sampler: Any) -> Iterator[list[int]]:
            for _ in range(sampler.steps):
                n, idx = batches.pop(0)
                if n != sampler.num_samples:
                    raise RuntimeError(f"replay out of step: {n} records recorded, client has {sampler.num_samples}")
                yield idx

        def replayed_noise(std: float, reference: Any, generator: Any = None, secure_mode: bool = False) -> Any:
            z = noise.pop(0)
            if tuple(z.shape) != tuple(reference.shape):
                raise RuntimeError(f"replay out of step: noise of shape {z.shape} for a parameter of {reference.shape}")
            return torch.from_numpy(z.copy())

        with (
            mock.patch.object(UniformWithReplacementSampler, "__iter__", sampler_iter),
            mock.patch("opacus.optimizers.optimizer._generate_noise", replayed_noise),
        ):
            yield
        if batches or noise:
            raise RuntimeError(f"replay left {len(batches)} batches and {len(noise)} noise draws unused")


ARMS = ("torch", "onnx", "mixed", "torch-replayed")


def accuracy(graph_dir: Path, out_dir: Path, seeds: int) -> dict[str, Any]:
    from fedtrain.config import load_config
    from fedtrain.export.gradient_graph import publish_run_graphs
    from fedtrain.runtime import run_inprocess

    rows = []
    for seed in range(seeds):
        # model=mlp: the gradient graphs cover the MLP only (unset, the DP defaults pick the linear model)
        base = f"dp-level=sample model=mlp seed={seed} progress=false report=false out-dir={out_dir}"
        cfg = load_config(overrides=base)
        graphs = graph_dir / f"seed{seed}"
        publish_run_graphs(cfg, graphs)
        n = cfg.partition.num_clients
        onnx = {"client-runtime": "onnx", "gradient-graphs": str(graphs)}
        shared = _Shared()
        arms: dict[str, tuple[list[dict[str, Any]], Any]] = {
            "torch": ([{}] * n, contextlib.nullcontext()),
            "onnx": ([onnx] * n, shared.recording()),
            "mixed": ([onnx if i % 2 == 0 else {} for i in range(n)], contextlib.nullcontext()),
            "torch-replayed": ([{}] * n, shared.replaying()),  # after "onnx": its batches and noise
        }
        row: dict[str, Any] = {"seed": seed}
        for arm, (nodes, draws) in arms.items():
            t0 = time.perf_counter()
            with draws:
                summary = json.loads((run_inprocess(cfg, node_configs=nodes) / "summary.json").read_text())
            row[arm] = {
                "test_accuracy": summary["final"]["accuracy"],
                "epsilon_max": summary["privacy"]["sample"]["epsilon_max"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    mean = {arm: statistics.mean(r[arm]["test_accuracy"] for r in rows) for arm in ARMS}
    paired = {arm: _paired(rows, arm) for arm in ("onnx", "mixed")}
    replayed = [r["onnx"]["test_accuracy"] - r["torch-replayed"]["test_accuracy"] for r in rows]
    return {"config": "defaults + dp-level=sample model=mlp (the MLP DP defaults apply)", "seeds": rows, "mean": mean,
            "paired": paired, "onnx_minus_replayed": {"mean": statistics.mean(replayed),
                                                       "max_abs": max(abs(d) for d in replayed)}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2)
    parser.add_argument("--edge-venv", type=Path, help="a venv made by deploy/edge-train-requirements.txt's recipe")
    parser.add_argument("--edge-full-venv", type=Path, help="flwr, numpy and onnxruntime, pip's full dependencies")
    parser.add_argument("--torch-venv", type=Path)
    parser.add_argument("--base-venv", type=Path)
    parser.add_argument("--accuracy", action="store_true", help="also the accuracy runs (about a minute a seed)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of the accuracy runs")
    parser.add_argument("--only-accuracy", action="store_true", help="the accuracy runs alone; keep the last timings")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from fedtrain.export.gradient_graph import publish_run_graphs

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg, _ = _setup(True)
        publish_run_graphs(cfg, work / "graphs")
        payload: dict[str, Any] = {
            "command": "python " + " ".join(["benchmarks/edge_client.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs), 1 thread",
            "setup": f"{OVERRIDES}, sigma {SIGMA}, C 1.0, {REPEATS} interleaved repetitions, median",
            "targets": {"speedup_dp": ">= 4", "ratio_venv": ">= 5", "accuracy": "within 0.5 points of torch"},
        }
        if args.only_accuracy:
            old = json.loads((RESULTS / "edge_client.json").read_text())
            payload.update({k: old[k] for k in ("command", "date", "machine", "setup", "epoch", "peak_rss", "install")})
        else:
            payload["epoch"] = epoch_times(work / "graphs")
            print(json.dumps(payload["epoch"]), flush=True)
            payload["peak_rss"] = peak_rss(work)
            print(json.dumps(payload["peak_rss"]), flush=True)
            given = {"onnx": args.edge_venv, "onnx_full_flwr": args.edge_full_venv, "torch": args.torch_venv,
                     "base": args.base_venv}  # fmt: skip
            payload["install"] = venv_sizes(given, work)
            print(json.dumps(payload["install"]), flush=True)
        if args.accuracy or args.only_accuracy:
            payload["accuracy"] = accuracy(work / "acc-graphs", work / "runs", args.seeds)
            payload["accuracy"].update(
                command="python " + " ".join(["benchmarks/edge_client.py", *sys.argv[1:]]),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "edge_client.json"
    if not (args.accuracy or args.only_accuracy) and previous.exists():  # timing alone: keep the last accuracy runs
        old = json.loads(previous.read_text())
        if "accuracy" in old:
            payload["accuracy"] = old["accuracy"]
    previous.write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "edge_client.md").write_text(render(payload))


def render(p: dict[str, Any]) -> str:
    e, r, i = p["epoch"], p["peak_rss"], p["install"]
    s = e["seconds_per_epoch"]
    lines = [
        "# ONNX client against the torch client",
        "",
        f"`{p['command']}`, {p['date']}, {p['machine']}. {p['setup']}; one client with {e['samples']} samples.",
        "",
        "| local epoch | torch / Opacus client | ONNX client | ONNX speed-up |",
        "|---|---|---|---|",
        f"| DP-SGD | {s['torch_dp']:.3f} s | {s['onnx_dp']:.3f} s | {e['speedup_dp']}x (target >= 4x) |",
        f"| no DP | {s['torch_plain']:.3f} s | {s['onnx_plain']:.3f} s | {e['speedup_plain']}x |",
        f"| DP-SGD, per-sample graph clipped in numpy (not what the client runs) | | {s['onnx_dp_numpy_clip']:.3f} s "
        f"| {s['torch_dp'] / s['onnx_dp_numpy_clip']:.2f}x |",
        "",
        "| | torch client | ONNX client |",
        "|---|---|---|",
        f"| peak RSS, 3 DP epochs in a fresh process | {r['torch']['peak_rss_mib']} MiB "
        f"| {r['onnx']['peak_rss_mib']} MiB |",
        f"| modules loaded of torch, opacus, sklearn, scipy, dp_accounting | {', '.join(r['torch']['loaded'])} | "
        f"{', '.join(r['onnx']['loaded']) or 'none'} |",
        f"| venv (`du -sb`) | {i['torch']['venv_mb']} MB | {i['onnx']['venv_mb']} MB |",
        f"| of which site-packages | {i['torch']['site_packages_mb']} MB | {i['onnx']['site_packages_mb']} MB |",
        f"| made by | `{i['torch']['recipe']}` | `{i['onnx']['recipe']}` |",
        f"| against a venv of flwr (all it declares) and numpy, {i['base']['venv_mb']} MB "
        f"| {i['over_base_mb']['torch']:+.1f} MB | {i['over_base_mb']['onnx']:+.1f} MB |",
        "",
        *_install_verdict(i),
        "",
        *_package_table(i),
        "",
    ]
    if "accuracy" in p:
        a = p["accuracy"]
        lines += [
            f"## Accuracy: {a['config']}, epsilon 3, delta 1e-5",
            "",
            f"`{a.get('command', p['command'])}`, {a.get('date', p['date'])}; the ServerApp evaluates centrally "
            "(test split), every client trains every round.",
            "",
            "| seed | all torch | all ONNX | half and half | all torch, ONNX arm's draws | epsilon max (torch / ONNX / "
            "mixed / torch, ONNX's draws) |",
            "|---|---|---|---|---|---|",
        ]
        arms = [k for k in ARMS if k in a["seeds"][0]]  # results of before the replayed arm lack it
        for row in a["seeds"]:
            eps = " / ".join(f"{row[k]['epsilon_max']:.3f}" for k in arms)
            accs = " | ".join(f"{row[k]['test_accuracy']:.4f}" if k in row else "" for k in ARMS)
            lines.append(f"| {row['seed']} | {accs} | {eps} |")
        m = a["mean"]
        lines += [f"| mean | {' | '.join(f'{m[k]:.4f}' if k in m else '' for k in ARMS)} | |", ""]
        for arm in ("onnx", "mixed"):
            d = a.get("paired", {}).get(arm)
            if d:
                lines.append(
                    f"- {arm} minus torch, paired over {len(a['seeds'])} seeds: {100 * d['mean']:+.2f} points, 95 % "
                    f"t-interval [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] (own draws each)."
                )
        r = a.get("onnx_minus_replayed")
        if r:
            met = 100 * r["max_abs"] <= 0.5
            lines.append(
                f"- onnx minus torch on the same draws, over {len(a['seeds'])} seeds: {100 * r['mean']:+.2f} points "
                f"on average, at most {100 * r['max_abs']:.2f} in any seed (target: within 0.5 points: "
                f"**{'met' if met else 'not met'}**)."
            )
        lines += [
            "",
            "`all torch`, `all ONNX` and `half and half` each draw their own Poisson batches and noise (numpy on the "
            "ONNX nodes, torch's generator on the torch nodes), so per seed they differ by the noise realisation, "
            "several points at this budget. `all torch, ONNX arm's draws` runs the torch/Opacus clients on the "
            "batches and noise the `all ONNX` run drew, in the order drawn (Opacus' sampler and noise patched in the "
            "benchmark; a batch for a client of another size, or noise of another shape, stops the run): the same "
            "computation on the same randomness, so the two accuracies differ only by float rounding carried through "
            "the rounds. Per-step equality is what tests/test_edge_train.py checks.",
            "",
        ]
    return "\n".join(lines)


def _install_verdict(i: dict[str, Any]) -> list[str]:
    met = i["ratio_venv"] >= 5
    pk = i["onnx"]["packages_mb"]
    runtime = sum(pk.get(k, 0.0) for k in ("numpy", "onnxruntime", "flatbuffers"))
    tools = sum(pk.get(k, 0.0) for k in ("pip", "setuptools"))
    flower = sum(pk.values()) - runtime - tools - pk.get("fedtrain", 0.0)
    return [
        f"The torch venv is {i['ratio_venv']}x the ONNX venv (target >= 5x, an ONNX venv of at most "
        f"{i['target_onnx_venv_mb']} MB: **{'met' if met else 'not met'}**). The ONNX venv holds numpy and "
        f"onnxruntime ({runtime:.1f} MB), pip and setuptools ({tools:.1f} MB, in every venv) and flwr with the "
        f"dependencies a SuperNode and its ClientApp import ({flower:.1f} MB); with all of flwr's declared "
        f"dependencies it is {i['onnx_full_flwr']['venv_mb']} MB "
        f"({i['torch']['venv_mb'] / i['onnx_full_flwr']['venv_mb']:.2f}x)."
        + (
            ""
            if met
            else f" Without pip and setuptools, the rest (the runtime and what flwr needs at run time) is "
            f"{runtime + flower:.1f} MB, "
            f"{'above' if runtime + flower > i['target_onnx_venv_mb'] else 'below'} the target's "
            f"{i['target_onnx_venv_mb']} MB."
        ),
    ]


def _package_table(i: dict[str, Any], floor_mb: float = 1.0) -> list[str]:
    """Per installed package, MB in each venv: those of at least ``floor_mb`` somewhere, then the rest summed."""
    cols = [("base", "flwr + numpy"), ("onnx_full_flwr", "ONNX, all of flwr's deps"), ("onnx", "ONNX client"),
            ("torch", "torch client")]  # fmt: skip
    sizes = {k: i[k]["packages_mb"] for k, _ in cols}
    names = sorted({n for v in sizes.values() for n in v}, key=lambda n: -max(v.get(n, 0.0) for v in sizes.values()))
    big = [n for n in names if max(v.get(n, 0.0) for v in sizes.values()) >= floor_mb]
    lines = [
        "What each venv holds, MB per installed package (the files its RECORD lists, byte-compiled files included; "
        "the venv's own folders and interpreter links make up the rest of `du`):",
        "",
        "| package | " + " | ".join(c for _, c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for n in big:
        cells = [f"{sizes[k][n]:.1f}" if n in sizes[k] else "" for k, _ in cols]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    rest = [sum(v for n, v in sizes[k].items() if n not in big) for k, _ in cols]
    counts = [sum(1 for n in sizes[k] if n not in big) for k, _ in cols]
    lines.append("| others (count) | " + " | ".join(f"{r:.1f} ({c})" for r, c in zip(rest, counts, strict=True)) + " |")
    lines.append("| venv, `du -sb` | " + " | ".join(f"{i[k]['venv_mb']}" for k, _ in cols) + " |")
    return lines


if __name__ == "__main__":
    main()
