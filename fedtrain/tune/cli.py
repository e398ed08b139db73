"""The ``fedtrain tune`` subcommand: parser and command (added to ``fedtrain``'s parser by ``fedtrain.cli``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_tune_parser", "cmd_tune"]

_HELP = (
    'search space: KEY=KIND:... entries, e.g. "learning-rate=log:0.05:2 batch-size=cat:16|32|64 '
    'model=cat:linear|mlp" (kinds: float:LOW:HIGH, log:LOW:HIGH, int:LOW:HIGH, cat:A|B|...)'
)


def add_tune_parser(sub: Any, check_out_dir: Callable[[str | Path, str], Path]) -> None:
    """Add ``tune`` to the subcommands ``sub`` of fedtrain's parser (``check_out_dir``: the CLI's ``--out`` check)."""
    tune = sub.add_parser("tune", help="hyperparameter search (Optuna) over config keys, selected on validation")
    tune.add_argument("--config", metavar="FILE", help="TOML file of config keys (the base of every trial)")
    tune.add_argument("--run-config", metavar="'k=v ...'", default="", help="overrides of the base, Flower syntax")
    tune.add_argument("--space", required=True, help=_HELP)
    tune.add_argument("--trials", type=int, default=20, help="trials (default 20)")
    tune.add_argument("--seeds", type=int, default=1, help="seeds per trial, from the config's seed (default 1)")
    tune.add_argument("--jobs", type=int, default=None, help="parallel processes (default: all cores)")
    tune.add_argument("--out", metavar="DIR", help="folder for the tune folder (default: out-dir)")
    tune.add_argument("--keep-runs", action="store_true", help="keep every trial's run folder in the tune folder")
    tune.set_defaults(func=cmd_tune, check_out_dir=check_out_dir)


def cmd_tune(args: argparse.Namespace) -> int:
    from fedtrain.config import load_config, parse_overrides
    from fedtrain.tune import parse_space, run_tune

    base = load_config(file=args.config, overrides=parse_overrides(args.run_config) if args.run_config else {})
    space = parse_space(args.space, base)
    out_dir = args.check_out_dir(args.out or base.output.out_dir, "--out" if args.out else "out-dir")
    result = run_tune(base, space, trials=args.trials, out_dir=Path(out_dir), seeds=args.seeds, jobs=args.jobs,
                      keep_runs=args.keep_runs)  # fmt: skip
    from rich.console import Console
    from rich.table import Table

    rows = json.loads((result.folder / "tune.json").read_text())["trials"]
    table = Table(title=f"fedtrain tune: {len(rows)} trials, ranked by validation accuracy")
    for col in ("trial", "val accuracy", "epsilon", *[p.key for p in space]):
        table.add_column(col)
    for r in sorted(rows, key=lambda r: -r["val_accuracy"]):
        eps = r["epsilon"]
        table.add_row(str(r["trial"]), f"{r['val_accuracy']:.4f}", f"{eps:.3g}",
                      *[str(r["params"][p.key]) for p in space])  # fmt: skip
    console = Console()
    console.print(table)
    pairs = " ".join(f"{k}={v}" for k, v in result.best_params.items())
    console.print(f"best: {pairs} (validation accuracy {result.best_value:.4f})")
    console.print(f"privacy of the search: {result.privacy['statement']}")
    print(result.folder)
    return 0
