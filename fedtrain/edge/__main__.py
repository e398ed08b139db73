"""``python -m fedtrain.edge predict MODEL INPUT``: the predict command without the full ``fedtrain`` CLI."""

from __future__ import annotations

import argparse
import sys

from fedtrain.edge.bench import add_bench_parser
from fedtrain.edge.cli import add_fetch_parser, add_predict_parser
from fedtrain.errors import FedtrainError


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; input errors end in one ``error: ...`` line and their exit code."""
    parser = argparse.ArgumentParser(prog="python -m fedtrain.edge", description="Run exported fedtrain models.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_predict_parser(sub)
    add_fetch_parser(sub)
    add_bench_parser(sub)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except FedtrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())
