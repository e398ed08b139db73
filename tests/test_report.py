"""report.html and the CLI summary table: warnings, budget notices and how 'best' was chosen."""

import json

import pytest

from fedtrain.cli import _print_summary
from fedtrain.results import plot_curves, write_report

WARNING = "phase finetune: training loss rose 3 rounds in a row, rounds 1-4: 2.2 -> 4 (phase minimum 2.2)"
OUTSIDE = "normalize=standard: per-feature mean and std of the training split"
OUTSIDE_2 = "train loss of each client, sent without noise"


def _summary(selected_by="last round (no validation split)", warnings=(WARNING,), outside=(OUTSIDE, OUTSIDE_2)):
    return {
        "status": "completed",
        "rounds": 4,
        "num_clients": 3,
        "final": {"accuracy": 0.1, "loss": 9.1},
        "best": {"round": 4, "accuracy": 0.1, "val_accuracy": None, "selected_by": selected_by},
        "warnings": list(warnings),
        "wall_seconds": 1.0,
        "phases": [{"name": "finetune", "rounds": 4, "status": "completed", "reason": ""}],
        "config": {"num-clients": 3},
        "privacy": {
            "level": "user",
            "user": {"epsilon": 2.0, "delta": 1e-5, "rounds": 4, "clipping": "adaptive-server"},
            "outside_budget": list(outside),
        },
    }


def _report(tmp_path, summary) -> str:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return write_report(run_dir / "report.html", summary, []).read_text()


def test_report_shows_warnings_outside_budget_and_selection(tmp_path):
    page = _report(tmp_path, _summary())
    assert "Warnings" in page and "training loss rose 3 rounds in a row" in page
    assert "Outside the privacy budget" in page and OUTSIDE in page and OUTSIDE_2 in page
    assert "best round (last round: no validation split)" in page and "by validation" not in page


def test_report_without_warnings_has_no_notice(tmp_path):
    page = _report(tmp_path, _summary(selected_by="validation", warnings=(), outside=()))
    assert 'class="notice"' not in page and "best round (by validation)" in page


def test_report_reads_summaries_from_before_these_keys(tmp_path):
    summary = _summary()
    del summary["warnings"], summary["best"]["selected_by"], summary["privacy"]["outside_budget"]
    page = _report(tmp_path, summary)
    assert 'class="notice"' not in page and "best round (by validation)" in page


def _run_dir(tmp_path, summary):
    run_dir = tmp_path / "run"  # not the test's name, which may itself contain "warning"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps long rows at 80 columns when not on a terminal


def test_cli_summary_shows_warnings_outside_budget_and_selection(tmp_path, capsys, wide_console):
    _print_summary(_run_dir(tmp_path, _summary()))
    out = capsys.readouterr().out
    assert "│ warning" in out and WARNING in out
    assert "outside the privacy budget" in out and OUTSIDE in out and OUTSIDE_2 in out
    assert "best round (last round: no validation split)" in out and "by validation" not in out


def test_cli_summary_without_warnings(tmp_path, capsys, wide_console):
    _print_summary(_run_dir(tmp_path, _summary(selected_by="validation", warnings=(), outside=())))
    out = capsys.readouterr().out
    assert "best round (by validation)" in out and "warning" not in out and "outside the privacy" not in out


def test_plots_cope_with_null_and_non_finite_values(tmp_path):
    records = [
        {"test_accuracy": 0.5, "test_loss": 1.0, "val_accuracy": None, "val_loss": None, "train_loss": 2.0},
        {"test_accuracy": 0.4, "test_loss": 2.0, "val_accuracy": None, "val_loss": None, "train_loss": float("nan")},
        {"test_accuracy": 0.3, "test_loss": 3.0, "val_accuracy": None, "val_loss": None, "train_loss": float("inf")},
    ]
    written = plot_curves(records, tmp_path)
    assert {p.name for p in written} == {"accuracy.png", "loss.png"} and all(p.stat().st_size for p in written)
