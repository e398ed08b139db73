"""Fixtures of the bad-input suite: the tiny run folder and its ONNX model, made once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from bad_inputs import OBSERVED, TINY, run_cli

# Set by gen_errors_doc.py: where to write the messages this session saw.
DUMP = "FEDTRAIN_ERRORS_DUMP"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished run (2 clients, 1 round, an 8-unit MLP): the cases copy it before they damage it."""
    out = tmp_path_factory.mktemp("tiny")
    code, stdout, err = run_cli(["run", "--out", str(out), "--run-config", TINY])
    assert code == 0, err
    return Path(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run: Path) -> Path:
    code, _stdout, err = run_cli(["export", str(tiny_run), "--formats", "fp32", "--no-ort", "--latency-calls", "0"])
    assert code == 0, err
    return tiny_run / "export" / "model-fp32.onnx"


def pytest_collection_modifyitems(items):
    # The docs check reads the messages of every case, so it runs after them.
    items.sort(key=lambda item: item.name.startswith("test_errors_doc_"))


def pytest_sessionfinish(session):
    if os.environ.get(DUMP) and OBSERVED:
        Path(os.environ[DUMP]).write_text(json.dumps(OBSERVED, indent=1, sort_keys=True))
