"""ONNX export: file size, accuracy and single-sample latency of every format, against the trained torch model.

Three models on digits, each trained in-process (``plan=finetune``, defaults otherwise) for each seed and
exported with ``fedtrain.export.export_run`` in every format (fp32, fp16, int8-static, int8-dynamic, each also
as ``.ort``), ``export-force=true`` (so a format over the accuracy-drop threshold is still measured; the
threshold's verdict is recorded) and ``export-latency-calls=0`` (latency is timed here):

- ``mlp``: the default MLP (hidden sizes 128,64);
- ``cnn``: the default CNN (channels 16,32, about 6k parameters);
- ``cnn-wide``: the CNN with channels 32,64, because the default CNN is so small that the graph's fixed
  overhead dominates its int8 file.

- **size**: the file's bytes (model card included) and the ratio fp32 / this file, ``.onnx`` against fp32's
  ``.onnx`` and ``.ort`` against fp32's ``.ort``.
- **accuracy**: the export's own validation on the test split (raw inputs, normalisation folded into the
  graph): accuracy (mean and range over seeds), drop against the fp32 file in points (mean, worst seed),
  argmax agreement with torch (worst seed), max |logit - torch logit| (worst seed).
- **latency**: for the first seed of each model, one raw sample (the first test sample), batch 1, 1 thread:
  torch eager (``torch.set_num_threads(1)``, ``torch.inference_mode()``, the checkpoint's model as
  ``run_export`` rebuilds it, fed the normalised sample) and ONNX Runtime on every file
  (``validate.low_power_session``: 1 thread, sequential, no spinning) fed the raw sample. Interleaved: in each
  of ``--rounds`` rounds every variant runs a block of calls (the order rotates each round), each call timed
  alone; the pooled median per variant is reported, with the spread of the per-round medians.
- **bytes of one int8 file**: ``onnx.load`` of the int8-static and int8-dynamic CNN files (first seed), split into
  initializers by dtype, nodes, metadata (the model card) and the rest (inputs, outputs, opset, framing).

Nothing is tuned: the seeds (1, 2, 3 by default) were used for no choice, and only test figures are reported.

    python benchmarks/export.py                 # writes benchmarks/results/export.{json,md}
    python benchmarks/export.py --quick --out /tmp/ex    # 1 seed, 200 latency calls per variant
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"model": "mlp", "hidden-sizes": "128,64"},
    "cnn": {"model": "cnn", "cnn-channels": "16,32"},
    "cnn-wide": {"model": "cnn", "cnn-channels": "32,64"},
}
FORMATS = ["fp32", "fp16", "int8-static", "int8-dynamic"]
TARGET_SPEEDUP = 3.5  # ORT fp32 at least 3.5x faster than torch eager, single sample
TARGET_SHRINK = 3.0  # int8 at least 3x smaller than fp32
TARGET_DROP = 0.5  # at most 0.5 points of test accuracy lost, every format, model and seed


def train_and_export(name: str, seed: int, tmp: Path) -> tuple[Path, dict[str, Any], float, float]:
    """Train ``name`` with ``seed``; export every format. Returns the run folder, export.json, train s, export s."""
    from fedtrain.config import load_config
    from fedtrain.export import export_run
    from fedtrain.runtime.inprocess import run_inprocess

    overrides = {"progress": False, "out-dir": str(tmp / f"{name}-{seed}"), "plan": "finetune", "seed": seed,
                 **MODELS[name]}  # fmt: skip
    cfg = load_config(overrides=overrides)
    t0 = time.perf_counter()
    run_dir = run_inprocess(cfg)
    t1 = time.perf_counter()
    settings = dataclasses.replace(cfg.export, export_formats=",".join(FORMATS), export_ort=True,
                                   export_latency_calls=0, export_force=True)  # fmt: skip
    _out, report = export_run(run_dir, settings)
    t2 = time.perf_counter()
    return run_dir, report.to_dict(), t1 - t0, t2 - t1


def rebuild(run_dir: Path) -> tuple[Any, np.ndarray, np.ndarray, int]:
    """The checkpoint's torch model (as ``run_export.export_run`` builds it), one normalised and one raw sample."""
    from fedtrain.config import load_config
    from fedtrain.data import Normalizer, server_data
    from fedtrain.models import build_model
    from fedtrain.pretrain import AUX_PREFIX
    from fedtrain.results import RunFolder

    folder = RunFolder.open(run_dir)
    cfg = load_config(file=folder.path / "config.toml")
    ckpt = folder.load_checkpoint(cfg.export.export_checkpoint)
    norm = ckpt["normalizer"]
    normalizer = Normalizer(norm["method"], np.asarray(norm["shift"], np.float32),
                            np.asarray(norm["scale"], np.float32), norm["clip"])  # fmt: skip
    model = build_model(cfg.model, tuple(int(d) for d in ckpt["input_shape"]), len(ckpt["classes"]))
    model.load_state_dict({k: v for k, v in ckpt["arrays"].items() if not k.startswith(AUX_PREFIX)})
    model.eval()
    test = server_data(cfg).test
    normalized = np.ascontiguousarray(test.x[:1])
    raw = np.ascontiguousarray(normalizer.invert(normalized))
    return model, normalized, raw, sum(p.numel() for p in model.parameters())


def latency(run_dir: Path, calls: int, rounds: int) -> dict[str, Any]:
    """Interleaved single-sample latency of torch eager and ORT on every exported file (µs)."""
    import torch

    from fedtrain.export.graph import INPUT_NAME
    from fedtrain.export.validate import low_power_session

    model, normalized, raw, _ = rebuild(run_dir)
    torch.set_num_threads(1)
    x = torch.from_numpy(normalized)
    variants: dict[str, Callable[[], object]] = {}

    def torch_call() -> object:
        with torch.inference_mode():
            return model(x)

    variants["torch eager"] = torch_call
    feed = {INPUT_NAME: raw}
    for fmt in FORMATS:
        for ext in ("onnx", "ort"):
            session = low_power_session(run_dir / "export" / f"model-{fmt}.{ext}")
            variants[f"{fmt} (.{ext})"] = lambda s=session: s.run(None, feed)
    with torch.inference_mode():
        ref = model(x).double().numpy()
    for label, call in variants.items():  # warm-up, and a check that every variant computes the same thing
        for _ in range(50):
            out = call()
        logits = np.asarray(out if label == "torch eager" else out[0], dtype=np.float64)  # type: ignore[index]
        assert logits.argmax() == ref.argmax(), label
    block = max(1, calls // rounds)
    times: dict[str, list[float]] = defaultdict(list)
    per_round: dict[str, list[float]] = defaultdict(list)
    names = list(variants)
    clock = time.perf_counter
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for label in order:
            call = variants[label]
            call()
            block_times = []
            for _ in range(block):
                t0 = clock()
                call()
                block_times.append(clock() - t0)
            times[label] += block_times
            per_round[label].append(statistics.median(block_times) * 1e6)
    torch_us = statistics.median(times["torch eager"]) * 1e6
    rows = []
    for label in names:
        med = statistics.median(times[label]) * 1e6
        rows.append({"variant": label, "median_us": round(med, 2), "calls": len(times[label]),
                     "round_medians_us": [round(v, 2) for v in per_round[label]],
                     "p90_us": round(float(np.percentile(times[label], 90)) * 1e6, 2),
                     "torch_over_this": round(torch_us / med, 3)})  # fmt: skip
    return {"run": run_dir.name, "calls_per_variant": block * rounds, "rounds": rounds, "block": block, "rows": rows}


def byte_breakdown(path: Path) -> dict[str, Any]:
    """Where the bytes of one ONNX file go: initializers by dtype, nodes, metadata (the card), the rest."""
    import onnx

    model = onnx.load(str(path))
    init: dict[str, int] = defaultdict(int)
    raw_data: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    for t in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
        init[dtype] += len(t.SerializeToString())
        raw_data[dtype] += int(np.prod(t.dims, dtype=np.int64)) * np.dtype(dtype).itemsize
        count[dtype] += 1
    nodes = sum(len(n.SerializeToString()) for n in model.graph.node)
    ops: dict[str, int] = defaultdict(int)
    for n in model.graph.node:
        ops[n.op_type] += 1
    metadata = sum(len(p.SerializeToString()) for p in model.metadata_props)
    graph_meta = sum(len(p.SerializeToString()) for p in model.graph.metadata_props)  # e.g. torch.export's
    value_info = sum(len(v.SerializeToString()) for v in model.graph.value_info)
    io = sum(len(v.SerializeToString()) for v in [*model.graph.input, *model.graph.output])
    total = path.stat().st_size
    parts = sum(init.values()) + nodes + metadata + graph_meta + value_info + io
    return {
        "file": path.name, "bytes": total,
        "initializers": {d: {"bytes": init[d], "tensors": count[d], "values_bytes": raw_data[d]} for d in init},
        "nodes_bytes": nodes, "nodes": len(model.graph.node), "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "metadata_bytes": metadata, "metadata_keys": len(model.metadata_props),
        "graph_metadata_bytes": graph_meta, "graph_metadata_keys": [p.key for p in model.graph.metadata_props],
        "value_info_bytes": value_info, "value_infos": len(model.graph.value_info), "io_bytes": io,
        "other_bytes": total - parts,
    }  # fmt: skip


def summarise(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per model and format (onnx and ort) over the seeds."""
    rows = []
    for name, per_seed in runs.items():
        labels = [r["format"] for r in per_seed[0]["export"]["rows"]]
        for label in labels:
            ext = "ort" if label.endswith("(.ort)") else "onnx"
            fp32_label = "fp32 (.ort)" if ext == "ort" else "fp32"
            seeds = []
            for run in per_seed:
                by = {r["format"]: r for r in run["export"]["rows"]}
                seeds.append({"seed": run["seed"], **by[label], "fp32_bytes": by[fp32_label]["bytes"]})
            acc = [100 * s["accuracy"] for s in seeds]
            drop = [s["accuracy_drop_points"] for s in seeds]
            size = [s["bytes"] for s in seeds]
            ratio = [s["fp32_bytes"] / s["bytes"] for s in seeds]
            rows.append({
                "model": name, "parameters": per_seed[0]["parameters"], "format": label, "ext": ext,
                "bytes_mean": statistics.mean(size), "bytes_min": min(size), "bytes_max": max(size),
                "ratio_to_fp32": round(statistics.mean(ratio), 3), "ratio_to_fp32_min": round(min(ratio), 3),
                "accuracy_mean": round(statistics.mean(acc), 3), "accuracy_min": round(min(acc), 3),
                "accuracy_max": round(max(acc), 3), "drop_points_mean": round(statistics.mean(drop), 3),
                "drop_points_max": round(max(drop), 3), "agreement_min": min(s["agreement"] for s in seeds),
                "agreement_mean": round(statistics.mean(s["agreement"] for s in seeds), 5),
                "max_abs_logit_diff": max(s["max_abs_logit_diff"] for s in seeds),
                "per_seed": [{k: s[k] for k in ("seed", "bytes", "accuracy", "accuracy_drop_points", "agreement",
                                                 "max_abs_logit_diff")} for s in seeds],
            })  # fmt: skip
    return rows


def targets(rows: list[dict[str, Any]], lat: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    speed = {m: next(r for r in v["rows"] if r["variant"] == "fp32 (.onnx)")["torch_over_this"] for m, v in lat.items()}
    if speed:
        ok = all(s >= TARGET_SPEEDUP for s in speed.values())
        lines.append(
            f"- ORT fp32 at least {TARGET_SPEEDUP:g}x faster than torch eager (single sample, 1 thread, .onnx): "
            f"**{'met' if ok else 'not met'}** ("
            + ", ".join(f"{m} {s:.2f}x{'' if s >= TARGET_SPEEDUP else ' (not met)'}" for m, s in speed.items())
            + ")."
        )
    for fmt in ("int8-static", "int8-dynamic"):
        sel = [r for r in rows if r["format"] == fmt]
        ok = all(r["ratio_to_fp32_min"] >= TARGET_SHRINK for r in sel)
        verdict = "met" if ok else "not met"
        lines.append(
            f"- {fmt} at least {TARGET_SHRINK:g}x smaller than fp32 (.onnx, worst seed): **{verdict}** ("
            + ", ".join(
                f"{r['model']} {r['ratio_to_fp32_min']:.2f}x"
                + ("" if r["ratio_to_fp32_min"] >= TARGET_SHRINK else " (not met)")
                for r in sel
            )
            + "); as .ort: "
            + ", ".join(f"{r['model']} {r['ratio_to_fp32_min']:.2f}x" for r in rows if r["format"] == f"{fmt} (.ort)")
            + "."
        )
    worst = max((r for r in rows if not r["format"].startswith("fp32")), key=lambda r: r["drop_points_max"])
    over = [r for r in rows if r["drop_points_max"] > TARGET_DROP]
    lines.append(
        f"- At most {TARGET_DROP:g} points of test accuracy lost (every format, model and seed): "
        f"**{'met' if not over else 'not met'}** (worst: {worst['model']} {worst['format']}, "
        f"{worst['drop_points_max']:+.2f} points"
        + (
            "; over: " + ", ".join(f"{r['model']} {r['format']} {r['drop_points_max']:+.2f}" for r in over)
            if over
            else ""
        )
        + ")."
    )
    return lines


def _kb(n: float) -> str:
    return f"{n / 1000:.1f}"


def write(payload: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "export.json").write_text(json.dumps(payload, indent=2) + "\n")
    seeds = payload["seeds"]
    lines = [
        "# ONNX export: size, accuracy, latency",
        "",
        f"`{payload['command']}` on {payload['date']} ({payload['machine']}; {payload['load']}; "
        f"{payload['total_wall_s']:.0f} s in all).",
        "",
        f"Plan: {payload['plan']}",
        "",
        f"## Size and accuracy (seeds {', '.join(map(str, seeds))})",
        "",
        "Bytes: the file as written (model card included; mean over seeds, they differ by a few bytes). Ratio: "
        "fp32 / this file, `.onnx` against fp32's `.onnx` and `.ort` against fp32's `.ort` (worst seed). "
        "Accuracy: test, % (mean, [min, max] over seeds). Drop: fp32 file's accuracy minus this file's, points "
        "(negative = better than fp32). Agreement: argmax equal to torch's (worst seed). Max |Δlogit|: against "
        "torch (worst seed).",
        "",
        "| model (parameters) | format | bytes | kB | ratio | accuracy % | drop mean / max (points) | "
        "agreement | max abs Δlogit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| {r['model']} ({r['parameters']:,}) | {r['format']} | {r['bytes_mean']:,.0f} | {_kb(r['bytes_mean'])} "
            f"| {r['ratio_to_fp32_min']:.2f}x | {r['accuracy_mean']:.2f} [{r['accuracy_min']:.2f}, "
            f"{r['accuracy_max']:.2f}] | {r['drop_points_mean']:+.2f} / {r['drop_points_max']:+.2f} | "
            f"{r['agreement_min']:.4f} | {r['max_abs_logit_diff']:.3g} |"
        )
    refused = [f"{m} seed {x['seed']}: {t}" for m, v in payload["runs"].items() for x in v for t in x["refused"]]
    lines += [
        "",
        "The export's own refusal (more than `export-max-accuracy-drop` = 1 point below fp32) "
        + ("did not trigger for any file." if not refused else "triggered (written here only because forced): ")
        + "; ".join(refused),
        "",
        "## Latency (single sample, batch 1, 1 thread)",
        "",
    ]
    for m, lat in payload["latency"].items():
        lines += [
            f"**{m}** (run `{lat['run']}`, seed {seeds[0]}): {lat['calls_per_variant']} calls per variant in "
            f"{lat['rounds']} interleaved rounds of {lat['block']}.",
            "",
            "| variant | median µs | p90 µs | per-round medians min-max µs | torch / this |",
            "|---|---|---|---|---|",
            *(
                f"| {r['variant']} | {r['median_us']:.1f} | {r['p90_us']:.1f} | {min(r['round_medians_us']):.1f}-"
                f"{max(r['round_medians_us']):.1f} | {r['torch_over_this']:.2f}x |"
                for r in lat["rows"]
            ),
            "",
        ]
    lines += ["## Targets", "", *payload["targets"], ""]
    lines += ["## What the bytes are", "", payload["bytes_text"], ""]
    for b in payload["bytes"]:
        lines += [
            f"`{b['model']}` seed {seeds[0]}, `{b['file']}` ({b['bytes']:,} bytes, {b['nodes']} nodes):",
            "",
            "| part | bytes | share |",
            "|---|---|---|",
            *(
                f"| initializers {d} ({v['tensors']} tensors; {v['values_bytes']:,} bytes of values) | "
                f"{v['bytes']:,} | {v['bytes'] / b['bytes']:.0%} |"
                for d, v in b["initializers"].items()
            ),
            f"| nodes ({', '.join(f'{k} {n}' for k, n in b['ops'].items())}) | {b['nodes_bytes']:,} | "
            f"{b['nodes_bytes'] / b['bytes']:.0%} |",
            f"| metadata: model card ({b['metadata_keys']} keys) | {b['metadata_bytes']:,} | "
            f"{b['metadata_bytes'] / b['bytes']:.0%} |",
            f"| graph metadata ({', '.join(f'`{k}`' for k in b['graph_metadata_keys']) or 'none'}) | "
            f"{b['graph_metadata_bytes']:,} | {b['graph_metadata_bytes'] / b['bytes']:.0%} |",
            f"| value_info (shapes of {b['value_infos']} intermediate tensors) | {b['value_info_bytes']:,} | "
            f"{b['value_info_bytes'] / b['bytes']:.0%} |",
            f"| graph input and output | {b['io_bytes']:,} | {b['io_bytes'] / b['bytes']:.0%} |",
            f"| other (opset, producer, graph name, field framing) | {b['other_bytes']:,} | "
            f"{b['other_bytes'] / b['bytes']:.0%} |",
            "",
        ]
    (out / "export.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def bytes_text(breakdowns: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """A short paragraph on the CNN int8 file(s): what is weight data, what is fixed overhead."""
    parts = []
    for b in breakdowns:
        weights = b["initializers"].get("int8", {}).get("bytes", 0)
        other_init = sum(v["bytes"] for d, v in b["initializers"].items() if d != "int8")
        fixed = b["bytes"] - weights
        parts.append(
            f"In `{b['model']}` `{b['file']}` ({b['bytes']:,} bytes) the int8 weights are {weights:,} bytes "
            f"({weights / b['bytes']:.0%}); the rest, {fixed:,} bytes, does not shrink with int8: other "
            f"initializers (fp32 biases, scales, zero points, normalisation constants) {other_init:,}, nodes "
            f"{b['nodes_bytes']:,}, the model card {b['metadata_bytes']:,}, graph-level metadata left by "
            f"torch.export {b['graph_metadata_bytes']:,}, graph input and output {b['io_bytes']:,}, other (opset, "
            f"producer, framing) {b['other_bytes']:,}."
        )
    fp32 = {r["model"]: r for r in rows if r["format"] == "fp32"}
    if "cnn" in fp32 and breakdowns:
        c, b = fp32["cnn"], breakdowns[0]
        budget = c["bytes_mean"] / TARGET_SHRINK
        weights = b["initializers"].get("int8", {}).get("bytes", 0)
        parts.append(
            f"The default CNN has {c['parameters']:,} parameters ({4 * c['parameters']:,} bytes as fp32, of a "
            f"{c['bytes_mean']:,.0f}-byte fp32 file). 3x smaller means at most {budget:,.0f} bytes; the int8 "
            f"weights alone take {weights:,}, which leaves {budget - weights:,.0f} bytes for everything else, "
            f"against the {b['bytes'] - weights:,} bytes it takes now: at this size the fixed part of the graph, "
            "not the weights, decides the ratio."
        )
    if "cnn-wide" in fp32:
        w = fp32["cnn-wide"]
        ratios = {r["format"]: r["ratio_to_fp32_min"] for r in rows if r["model"] == "cnn-wide"}
        parts.append(
            f"The wider CNN (channels 32,64, {w['parameters']:,} parameters, fp32 file {w['bytes_mean']:,.0f} bytes) "
            f"reaches {ratios.get('int8-static', float('nan')):.2f}x (int8-static) and "
            f"{ratios.get('int8-dynamic', float('nan')):.2f}x (int8-dynamic) with the same code."
        )
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated training seeds (never used for tuning)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--latency-calls", type=int, default=2000, help="timed single-sample calls per variant")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds the latency calls are split into")
    parser.add_argument("--quick", action="store_true", help="1 seed (the first of --seeds), 200 latency calls")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for export.{json,md}")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    if any(m not in MODELS for m in models) or args.latency_calls < 1 or args.rounds < 1:
        parser.error(f"models from {list(MODELS)}; --latency-calls and --rounds >= 1")
    if args.quick:
        seeds, args.latency_calls, args.rounds = seeds[:1], 200, 5
    import torch

    from fedtrain.logging import get_logger

    get_logger().setLevel(logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    load = f"load average {os.getloadavg()[0]:.2f} at start, machine shared"
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {}
    lat: dict[str, dict[str, Any]] = {}
    breakdowns = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            runs[name] = []
            for seed in seeds:
                run_dir, report, train_s, export_s = train_and_export(name, seed, Path(tmp))
                params = rebuild(run_dir)[3]
                runs[name].append({"seed": seed, "run_dir": str(run_dir), "parameters": params,
                                   "train_s": round(train_s, 2), "export_s": round(export_s, 2),
                                   "export": report, "refused": report["refused"]})  # fmt: skip
                print(json.dumps({"model": name, "seed": seed, "train_s": round(train_s, 1),
                                  "export_s": round(export_s, 1), "fp32_accuracy": report["fp32_accuracy"]}),
                      flush=True)  # fmt: skip
                torch.set_num_threads(threads)
            first = Path(runs[name][0]["run_dir"])
            lat[name] = latency(first, args.latency_calls, args.rounds)
            torch.set_num_threads(threads)
            print(json.dumps({"model": name, "latency": {r["variant"]: r["median_us"] for r in lat[name]["rows"]}}),
                  flush=True)  # fmt: skip
            if name == "cnn":
                for fmt in ("int8-static", "int8-dynamic"):
                    breakdowns.append({"model": name, **byte_breakdown(first / "export" / f"model-{fmt}.onnx")})
    rows = summarise(runs)
    command = "python benchmarks/export.py"
    command += " --quick" if args.quick else ""
    command += f" --seeds {args.seeds}" if args.seeds != "1,2,3" else ""
    command += f" --models {args.models}" if args.models != ",".join(MODELS) else ""
    if not args.quick:
        command += f" --latency-calls {args.latency_calls}" if args.latency_calls != 2000 else ""
        command += f" --rounds {args.rounds}" if args.rounds != 10 else ""
    import onnxruntime

    payload = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {threads} torch threads for training, "
        "1 thread for every latency figure",
        "load": load,
        "seeds": seeds,
        "plan": (
            "digits, 10 clients, plan=finetune (30 rounds, FedAvg, defaults otherwise), the `best` checkpoint "
            "(validation-selected), exported by `fedtrain.export.export_run` in fp32, fp16, int8-static (QDQ, "
            "calibrated on the server's validation split) and int8-dynamic, each also as .ort, export-force=true. "
            "Models: "
            + ", ".join(f"{m} ({', '.join(f'{k}={v}' for k, v in MODELS[m].items())})" for m in models)
            + ". Accuracy figures are the export's own validation on the test split (raw inputs into the file); "
            "latency on the first seed, torch eager (normalised input) against ORT (raw input, "
            "`validate.low_power_session`), interleaved."
        ),
        "targets": [],
        "total_wall_s": 0.0,
        "rows": rows,
        "latency": lat,
        "bytes": breakdowns,
        "bytes_text": bytes_text(breakdowns, rows),
        "runs": runs,
    }
    payload["targets"] = targets([r for r in rows if r["ext"] == "onnx"] + [r for r in rows if r["ext"] == "ort"], lat)
    payload["total_wall_s"] = round(time.perf_counter() - t0, 1)
    write(payload, args.out)


if __name__ == "__main__":
    main()
