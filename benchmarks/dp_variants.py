"""Rank DP-recipe variants on validation: each line of a variants file, on the tuning seeds, in parallel.

A variants file holds one variant per line, ``NAME key=value ...`` (``#`` starts a comment). Every variant runs
on top of the DP defaults with ``dp-level=sample``, the default validation split, no client evaluation and the
vectorised round exchange, once per seed; the line printed per variant gives the mean validation accuracy of the
reported model (the ranking), the mean and std of its test accuracy (for the record only, never used to choose)
and the largest epsilon any client spent. Use tuning seeds only (100 and up), never the reporting seeds 0-2 of
``privacy_utility.py``. Results of the runs behind the DP defaults are in benchmarks/results/dp_tuning.md.

    python benchmarks/dp_variants.py benchmarks/configs/dp_variants/accountant.txt 100-107 [JOBS]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

BASE: dict[str, Any] = {"dp-level": "sample", "progress": False, "report": False, "val-fraction": 0.1,
                        "client-eval-fraction": 0, "fraction-evaluate": 0, "round-exchange": "vectorised"}  # fmt: skip


def read_variants(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(name, overrides)`` per line of a variants file (values parsed as ``--run-config`` parses them)."""
    from fedtrain.config import parse_overrides

    out = []
    for line in path.read_text().splitlines():
        name, _, keys = line.split("#", 1)[0].strip().partition(" ")
        if name:
            out.append((name, parse_overrides(keys)))
    return out


def parse_seeds(text: str) -> list[int]:
    """``100-107`` or ``100,101``."""
    if "-" in text:
        first, last = (int(x) for x in text.split("-", 1))
        return list(range(first, last + 1))
    return [int(x) for x in text.split(",")]


def _final(run_dir: str) -> tuple[float, float]:
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return lines[-1]["val_accuracy"], lines[-1]["test_accuracy"]


def main() -> None:
    from fedtrain.runtime.batch import run_configs

    variants, seeds = read_variants(Path(sys.argv[1])), parse_seeds(sys.argv[2])
    jobs = int(sys.argv[3]) if len(sys.argv) > 3 else None
    flats = [{**BASE, **keys, "seed": seed} for _, keys in variants for seed in seeds]
    results = iter(run_configs(flats, jobs=jobs))
    for name, keys in variants:
        mine = [next(results) for _ in seeds]
        val, test = zip(*(_final(r["run_dir"]) for r in mine), strict=True)
        spent = max(r["spent_epsilon"] for r in mine)
        sd = statistics.stdev(test) if len(test) > 1 else 0.0
        print(f"{name:12s} val {statistics.fmean(val):.3f}  test {statistics.fmean(test):.3f} +- {sd:.3f}  "
              f"max eps {spent:.3f}  {' '.join(f'{k}={v}' for k, v in keys.items())}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
