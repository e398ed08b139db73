"""The ``fedtrain`` command.

``fedtrain run`` runs a whole federation in-process and prints the run folder as its last
line; ``fedtrain split`` writes one data file per device for a deployment; ``fedtrain export`` writes a run's
model as ONNX files for devices; ``fedtrain config``
shows the resolved configuration or renders the reference docs.
Errors caused by input end in one line, ``error: ...``, and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from fedtrain.errors import ConfigError, FedtrainError

if TYPE_CHECKING:
    from fedtrain.config import RunConfig
    from fedtrain.data.federated import RawSplits

__all__ = ["main"]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML file of config keys (flat, or in section tables)")
    p.add_argument(
        "--run-config",
        metavar="'k=v ...'",
        default="",
        help='overrides in Flower\'s syntax, e.g. "num-rounds=10 model=cnn"',
    )


def _add_preset_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        choices=("auto", "main", "none"),
        default="auto",
        help="base under --config and --run-config: `main` (pretraining, DP fine-tuning, SecAgg+, export: "
        "the main job), `none` (the generic defaults), `auto` (default): main when neither is given",
    )


def _resolve(args: argparse.Namespace, extra: dict | None = None):
    from fedtrain.config import load_config, parse_overrides

    overrides = parse_overrides(args.run_config) if args.run_config else {}
    base = None
    if getattr(args, "resume", None):
        from fedtrain.results import RunFolder

        folder = RunFolder.open(args.resume)
        base = load_config(file=folder.path / "config.toml").to_flat()
        overrides["resume-dir"] = str(folder.path)
    preset = None if base is not None else _preset_keys(args)
    overrides.update(extra or {})
    return load_config(base=base, preset=preset, file=args.config, overrides=overrides)


def _preset_keys(args: argparse.Namespace) -> dict[str, Any] | None:
    """``fedtrain run``'s preset: the main job when no config is given (``--preset auto``), or the one named."""
    from fedtrain.config.presets import preset
    from fedtrain.logging import get_logger

    name = getattr(args, "preset", "none")
    if name == "auto":
        name = "none" if (args.config or args.run_config) else "main"
    if name == "none":
        return None
    keys = preset(name)
    pairs = " ".join(f"{k}={v}" for k, v in keys.items())
    get_logger().info("Preset %r: %s (--preset none starts from the generic defaults)", name, pairs)
    return keys


def _print_summary(run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from fedtrain.results.report import best_round_label

    summary = json.loads((run_dir / "summary.json").read_text())
    table = Table(title=f"fedtrain run {run_dir.name}", show_header=False)
    final, best = summary["final"], summary["best"]
    alert = "bold red"  # rows that must not be missed
    rows: list[tuple[str, str, str]] = [
        ("status", summary["status"] + (f" ({summary['reason']})" if summary.get("reason") else ""), ""),
        *(("warning", w, alert) for w in summary.get("warnings", [])),
        ("rounds", str(summary["rounds"]), ""),
        ("clients", str(summary["num_clients"]), ""),
        ("final test accuracy", f"{final['accuracy']:.4f}", ""),
        ("final test loss", f"{final['loss']:.4f}", ""),
        (best_round_label(best), f"{best['round']} (test accuracy {best['accuracy']:.4f})", ""),
        ("wall time", f"{summary['wall_seconds']:.1f} s", ""),
    ]
    privacy = summary.get("privacy", {})
    if "sample" in privacy:
        s = privacy["sample"]
        text = f"(ε = {s['epsilon_max']:.2f}, δ = {s['delta']:g}) max over clients"
        rows.append(("sample-level privacy", text, ""))
    if "user" in privacy:
        u = privacy["user"]
        rows.append(("user-level privacy", f"(ε = {u['epsilon']:.2f}, δ = {u['delta']:g})", ""))
    secagg = summary.get("secure_aggregation")
    if secagg:
        halted = len(secagg.get("halted_rounds", []))
        text = (f"SecAgg+, {secagg['shares']} shares / threshold {secagg['threshold']}, {secagg['clipped']} values "
                f"clipped, {secagg['retried_rounds']} rounds retried, {halted} halted")  # fmt: skip
        rows.append(("secure aggregation", text, alert if halted or secagg["clipped"] else ""))
    export = summary.get("export")
    if export:
        files = [r for r in export["rows"] if r["written"] and not r["format"].endswith("(.ort)")]
        text = ", ".join(f"{r['format']} {r['bytes'] / 1000:.1f} kB" + (f" acc {r['accuracy']:.4f}" if r["accuracy"]
                         is not None else "") for r in files)  # fmt: skip
        rows.append(("exported (export/)", text, alert if export.get("refused") else ""))
    for i, item in enumerate(privacy.get("outside_budget", [])):  # one row per statistic, labelled once
        rows.append(("outside the privacy budget" if i == 0 else "", str(item), alert))
    rows.append(("report", str(run_dir / "report.html"), ""))
    for k, v, style in rows:
        # Text, not markup: warnings and paths may hold "[...]", which rich would read as tags
        table.add_row(Text(k, style=style), Text(v, style=style))
    Console().print(table)


def _as_int(value: object) -> int | None:
    """A node-config value as an int (Flower's syntax may quote it), or None when it is not an integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _node_configs(texts: list[str] | None, cfg: RunConfig) -> list[dict[str, Any]] | None:
    """One node config per client, as ``--node-config`` gives a SuperNode, checked before any run folder exists.

    A node without ``partition-id`` is the client of its position (the in-process grid's default).
    """
    from fedtrain.config import parse_overrides
    from fedtrain.errors import ConfigError

    n = cfg.partition.num_clients
    node_mode = cfg.data.data_source == "node"
    if not texts:
        if node_mode:
            # Without node files every client fails in round 1, after the run folder was made.
            raise ConfigError(
                f"data-source=node reads each client's records from its own file, but no --node-config was given: "
                f'pass one --node-config "data-path=FILE" per client ({n}, in partition order; fedtrain split '
                "writes the files and prints these options), or use data-source=partition"
            )
        return None
    if len(texts) != n:
        raise ConfigError(
            f"{len(texts)} --node-config options for num-clients={n}: give one per client, in partition "
            "order (fedtrain split prints them)"
        )
    configs = [parse_overrides(text) for text in texts]
    problems: list[str] = []
    owner: dict[int, int] = {}  # partition id -> position of the --node-config that claims it
    for i, node in enumerate(configs):
        where = f"--node-config #{i + 1}"
        pid = _as_int(node.get("partition-id", i))
        if pid is None:
            problems.append(f"{where}: partition-id={node['partition-id']!r} must be an integer in 0..{n - 1}")
        elif not 0 <= pid < n:
            problems.append(f"{where}: partition-id={pid} is outside 0..{n - 1} (num-clients={n})")
        elif pid in owner:
            problems.append(
                f"{where} and #{owner[pid] + 1} both train partition-id={pid} (a node without partition-id is the "
                f"client of its position): give each of 0..{n - 1} to one node"
            )
        else:
            owner[pid] = i
        if "num-partitions" in node and _as_int(node["num-partitions"]) != n:
            problems.append(f"{where}: num-partitions={node['num-partitions']!r} but num-clients={n}")
        if node_mode and not str(node.get("data-path", "")).strip():
            problems.append(f"{where} has no data-path, which every node needs with data-source=node")
    if problems:
        raise ConfigError(problems)
    return configs


def check_out_dir(path: str | Path, option: str) -> Path:
    """Make sure ``path`` is a folder this process can write, creating it if missing; return it.

    Run before any data is read or process started, so a bad ``--out`` costs one line, not a traceback
    after the first rounds. The write is tried for real: ``os.access`` says yes to root on a read-only mount.
    """
    folder = Path(path).expanduser()
    where = f"{option} {str(folder)!r}"
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{where} is a file, not a folder; pass a folder for run folders (made if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{where} cannot be created ({err.strerror}); pass a folder you can write to") from None
    try:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        why = "permission denied" if isinstance(err, PermissionError) else err.strerror
        raise ConfigError(f"{where} cannot be written ({why}); pass a folder you can write to") from None
    return folder


def _entries(folder: Path) -> set[str]:
    try:
        return {p.name for p in folder.iterdir() if p.is_dir()}
    except OSError:
        return set()


def _interrupted(out_dir: Path, before: set[str], resume: str | None) -> str:
    """What an interrupt leaves: the run folder made by this command (if any) and whether it can be resumed."""
    if resume:
        made = [Path(resume)]
    else:  # the runner returns the folder only at the end: find the one that appeared during this command
        made = sorted((out_dir / n for n in _entries(out_dir) - before), key=lambda p: p.stat().st_mtime)[-1:]
    if not made:
        return "interrupted before the run folder was made: there is nothing to resume; start the run again"
    run_dir = made[0]
    if not (run_dir / "checkpoints" / "latest.pt").is_file():
        return (
            f"interrupted before the first round finished: {run_dir} holds no checkpoint, so there is nothing to "
            "resume; start the run again (and delete that folder)"
        )
    return f"interrupted; {run_dir} keeps every finished round: resume with fedtrain run --resume {run_dir}"


def cmd_run(args: argparse.Namespace) -> int:
    extra = {}
    if args.out:
        extra["out-dir"] = args.out
    if args.name:
        extra["run-name"] = args.name
    cfg = _resolve(args, extra)
    if cfg.runtime.runtime != "inprocess":
        raise ConfigError(
            f"runtime={cfg.runtime.runtime!r} runs through Flower: use `flwr run . --run-config ...` "
            "from the repository root (see README, 'Flower Simulation Engine')"
        )
    node_configs = _node_configs(args.node_config, cfg)
    if args.resume:  # the resumed run writes into its own folder
        out_dir = check_out_dir(args.resume, "--resume")
    else:
        out_dir = check_out_dir(cfg.output.out_dir, "--out" if args.out else "out-dir")
    from fedtrain.runtime import run_inprocess

    before = _entries(out_dir)
    try:
        run_dir = run_inprocess(cfg, node_configs=node_configs)
    except KeyboardInterrupt:
        print(f"error: {_interrupted(out_dir, before, args.resume)}", file=sys.stderr)
        return 130
    _print_summary(run_dir)
    print(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    return 0 if summary["status"] in ("completed", "stopped") else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    from fedtrain.runtime.sweep import parse_epsilons, run_sweep

    epsilons = parse_epsilons(args.epsilons)
    if args.seeds < 1:
        raise ConfigError(f"--seeds={args.seeds} must be >= 1 (runs per epsilon)")
    cfg = _resolve(args)
    out_dir = check_out_dir(args.out or cfg.output.out_dir, "--out" if args.out else "out-dir")
    folder = run_sweep(cfg, epsilons, args.seeds, out_dir, jobs=args.jobs)
    rows = json.loads((folder / "sweep.json").read_text())["rows"]
    from rich.console import Console
    from rich.table import Table

    table = Table(title="privacy-budget sweep")
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r.values()))
    Console().print(table)
    print(folder)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from fedtrain.data.federated import raw_splits, write_node_files

    extra: dict[str, object] = {}
    if args.data_path:
        extra.update({"dataset": "file", "data-path": args.data_path})
    if args.data_format:
        extra["data-format"] = args.data_format
    cfg = _resolve(args, extra)
    files = write_node_files(cfg, args.out_dir, server_test=args.server_test, overwrite=args.force)
    raw = raw_splits(cfg.data, cfg.partition, cfg.runtime.seed)
    n = cfg.partition.num_clients
    for pid, (path, idx) in enumerate(zip(files, raw.parts, strict=False)):
        node = f"data-path='{path.resolve()}' partition-id={pid} num-partitions={n}"
        print(f'client {pid}: {len(idx)} records  flower-supernode ... --node-config "{node}"')
    server = [f"data-source=node num-clients={n}"]
    if args.server_test:
        vf = cfg.data.val_fraction
        held_out = f" (the server holds out val-fraction={vf:g} of them for validation)" if vf > 0 else ""
        print(f"server: {len(raw.test.y)} test records in {files[-1]}{held_out}")
        server.append(f"server-data-path='{files[-1].resolve()}'")
    else:  # the server then reads no data: it needs the federation's classes and input shape as keys
        shape = ",".join(str(d) for d in raw.train.input_shape)
        server.append(f"classes='{','.join(raw.train.classes)}' input-shape='{shape}'")
    normalize, note = _server_normalize(cfg, raw, server_file=args.server_test)
    server.append(normalize)
    print(f'run config: --run-config "{" ".join(server)}"')
    if note:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _server_normalize(cfg: RunConfig, raw: RawSplits, *, server_file: bool) -> tuple[str, str]:
    """The normaliser keys of the server's run config for these node files, and a note when they cannot be complete.

    The method is always named, so the printed run config resolves to the split's normaliser even
    where it came from a default (under DP, ``range``). ``range`` needs the inputs' nominal maximum:
    a server file carries it (``max_value``), otherwise it goes in as ``input-max``.
    """
    method = cfg.data.normalize
    if method == "dp-standard":  # its release needs simulated partitions: node data gets range, as the DP defaults do
        method = "range"
    max_value = raw.full.max_value or cfg.data.input_max or None
    if server_file:  # standard and minmax are fitted on the server's file
        if method == "range" and raw.full.max_value is None:
            if max_value is None:
                note = "normalize=range needs the inputs' nominal maximum: add input-max=... to the run config"
                return "normalize=range", note
            return f"normalize=range input-max={max_value:g}", ""
        return f"normalize={method}", ""
    if method == "none":
        return "normalize=none", ""
    if max_value is None:
        return (
            f"normalize={method}",
            f"normalize={method} needs data or a nominal maximum at the server, and this data set has no known value "
            "range: pass --server-test (a file for the server), or add normalize=none, or input-max=... (the "
            "inputs' nominal maximum) with normalize=range, to the run config",
        )
    # No server file: standard and minmax cannot be fitted; range on the format's nominal maximum reads no data.
    note = ""
    if method != "range":
        note = (
            f"normalize={method} is fitted on data, which the server holds only with --server-test: the run config "
            "scales by the inputs' nominal maximum instead (normalize=range)"
        )
    return f"normalize=range input-max={max_value:g}", note


def cmd_export(args: argparse.Namespace) -> int:
    import dataclasses

    from fedtrain.config import load_config
    from fedtrain.export import export_run
    from fedtrain.federation.outputs import refresh_outputs
    from fedtrain.results import RunFolder

    folder = RunFolder.open(args.run_dir)
    cfg = load_config(file=folder.path / "config.toml")
    given = {"export-formats": args.formats, "export-checkpoint": args.checkpoint, "export-calibration":
             args.calibration, "export-max-accuracy-drop": args.max_accuracy_drop, "export-force": args.force or None,
             "export-ort": False if args.no_ort else None, "export-latency-calls": args.latency_calls}  # fmt: skip
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = load_config(base=cfg.to_flat(), overrides=overrides).export if overrides else cfg.export
    out, report = export_run(folder.path, settings)
    refresh_outputs(folder, dataclasses.replace(cfg, export=settings))
    for row in report.rows:
        acc = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        lat = "" if row["latency_us"] is None else f"  {row['latency_us']:.1f} us"
        status = row["file"] or "refused"
        print(f"{row['format']:<22} {row['bytes'] / 1000:8.1f} kB  test acc {acc}{lat}  {status}")
    for problem in report.refused:
        print(f"warning: {problem}", file=sys.stderr)
    print(out)
    return 6 if any(not r["written"] for r in report.rows) else 0


def cmd_config(args: argparse.Namespace) -> int:
    from fedtrain.config import dump_toml
    from fedtrain.config.reference import render_app_table, render_markdown

    if args.markdown:
        print(render_markdown(), end="")
    elif args.app_table:
        print(render_app_table(), end="")
    else:
        print(dump_toml(_resolve(args)), end="")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (its default prints the whole usage first); exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    # Subcommands, those of fedtrain.edge and fedtrain.deploy included, are made with the parser's own class.
    parser = _Parser(prog="fedtrain", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a simulated federation in this process")
    _add_config_args(run)
    run.add_argument("--out", metavar="DIR", help="folder for run folders (config key out-dir)")
    run.add_argument("--name", help="suffix of the run folder name (config key run-name)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    _add_preset_arg(run)
    run.add_argument(
        "--node-config",
        action="append",
        metavar="'k=v ...'",
        help="one per client, in order: that node's config, e.g. \"data-path='nodes/client-0.npz'\" (node-local data)",
    )
    run.set_defaults(func=cmd_run)

    sweep = sub.add_parser("sweep", help="run the plan at several privacy budgets and seeds")
    _add_config_args(sweep)
    sweep.add_argument("--epsilons", required=True, help="target epsilons, e.g. 0.5,1,2,4,8,inf (inf: no DP)")
    sweep.add_argument("--seeds", type=int, default=1, help="seeds per epsilon (default 1)")
    sweep.add_argument("--jobs", type=int, default=None, help="parallel processes (default: all cores)")
    sweep.add_argument("--out", metavar="DIR", help="folder for the sweep folder (default: out-dir)")
    sweep.set_defaults(func=cmd_sweep)

    split = sub.add_parser(
        "split", help="write one data file per device (the configured partitioner's partitions), for deployment"
    )
    _add_config_args(split)
    split.add_argument("out_dir", metavar="OUT_DIR", help="folder for client-<i>.npz (and server-test.npz)")
    split.add_argument("--data-path", help="data set to split (default: the embedded digits; config key data-path)")
    split.add_argument("--data-format", help="its format (config key data-format; default: from the suffix)")
    split.add_argument("--server-test", action="store_true", help="also write the test split as server-test.npz")
    split.add_argument("--force", action="store_true", help="replace files already in OUT_DIR")
    split.set_defaults(func=cmd_split)

    export = sub.add_parser("export", help="export a run's model as validated ONNX files for devices (docs/export.md)")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a run folder that `fedtrain run` printed")
    export.add_argument("--formats", help="comma-separated: fp32,fp16,int8-static,int8-dynamic (export-formats)")
    export.add_argument("--checkpoint", choices=("best", "latest"), help="weights to export (export-checkpoint)")
    export.add_argument(
        "--calibration", choices=("server", "input-range"), help="int8-static ranges (export-calibration)"
    )
    export.add_argument("--max-accuracy-drop", type=float, help="points a format may lose (export-max-accuracy-drop)")
    export.add_argument("--force", action="store_true", help="write formats even over the accuracy-drop threshold")
    export.add_argument("--no-ort", action="store_true", help="do not write .ort files (export-ort=false)")
    export.add_argument("--latency-calls", type=int, help="timed single-sample calls; 0 skips (export-latency-calls)")
    export.set_defaults(func=cmd_export)

    from fedtrain.edge.cli import add_fetch_parser, add_predict_parser  # numpy, onnxruntime: no torch needed

    add_predict_parser(sub)
    add_fetch_parser(sub)
    from fedtrain.deploy.cli import add_deploy_parser  # stdlib only at import; each command imports lazily

    add_deploy_parser(sub)
    from fedtrain.tune.cli import add_tune_parser  # stdlib only at import; Optuna when the command runs

    add_tune_parser(sub, check_out_dir)

    config = sub.add_parser("config", help="print the resolved config, or render its reference")
    _add_config_args(config)
    _add_preset_arg(config)  # `fedtrain config` prints what `fedtrain run` with the same arguments runs
    config.add_argument("--markdown", action="store_true", help="print docs/configuration.md")
    config.add_argument("--app-table", action="store_true", help="print pyproject's [tool.flwr.app.config]")
    config.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FedtrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # `run` reports its own once its run may have started (cmd_run)
        what = " before the run folder was made: there is nothing to resume" if args.command == "run" else ""
        print(f"error: interrupted{what}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
