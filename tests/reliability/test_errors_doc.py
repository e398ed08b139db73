"""docs/errors.md is the suite's own table (regenerated from this session's messages) and the codes stay stable."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs import EXIT_CODES, OBSERVED
from gen_errors_doc import all_cases, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def test_errors_doc_exit_codes_are_stable():
    from fedtrain.deploy.errors import DeployError
    from fedtrain.edge.errors import EdgeInputError, EdgeModelError
    from fedtrain.errors import CheckpointError, ConfigError, DataError, ExportError, FedtrainError, ModelError

    codes = {cls: cls.exit_code for cls in (FedtrainError, ConfigError, DataError, ModelError, CheckpointError,
             ExportError, DeployError, EdgeInputError, EdgeModelError)}  # fmt: skip
    assert [codes[c] for c in (FedtrainError, ConfigError, DataError, ModelError, CheckpointError, ExportError,
            DeployError, EdgeInputError, EdgeModelError)] == [1, 2, 3, 4, 5, 6, 7, 3, 4]  # fmt: skip
    assert EXIT_CODES == {"config": 2, "cli": 2, "data": 3, "model": 4, "checkpoint": 5, "export": 6, "deploy": 7}


def test_errors_doc_lists_at_least_sixty_distinct_cases():
    ids = [c.id for c in all_cases()]
    assert len(ids) == len(set(ids)) >= 60


def test_errors_doc_is_current():
    # Runs last (conftest): it reads the messages every case of this session recorded.
    missing = [c.id for c in all_cases() if c.id not in OBSERVED]
    if missing:
        pytest.skip(f"{len(missing)} cases did not run in this session (e.g. {missing[0]}): run the whole suite")
    assert DOC.read_text(encoding="utf-8") == render(OBSERVED), (
        "docs/errors.md is stale: python tests/reliability/gen_errors_doc.py > docs/errors.md"
    )
