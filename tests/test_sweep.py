import csv
import json
import math

import pytest

from fedtrain.cli import main
from fedtrain.errors import ConfigError
from fedtrain.runtime.sweep import parse_epsilons


def test_parse_epsilons():
    assert parse_epsilons("8,1,inf,1") == [1.0, 8.0, math.inf]
    with pytest.raises(ConfigError, match="must be > 0"):
        parse_epsilons("0,1")
    with pytest.raises(ConfigError, match="not a number"):
        parse_epsilons("one")


def test_sweep_writes_json_csv_plot_and_html(tmp_path, capsys):
    code = main([
        "sweep", "--epsilons", "2,inf", "--seeds", "2", "--jobs", "2", "--out", str(tmp_path),
        "--run-config", "num-clients=3 num-rounds=1 hidden-sizes=16 min-clients=2",
    ])  # fmt: skip
    assert code == 0
    folder = tmp_path / capsys.readouterr().out.strip().splitlines()[-1].split("/")[-1]
    payload = json.loads((folder / "sweep.json").read_text())
    assert payload["seeds"] == 2 and len(payload["runs"]) == 4
    rows = {r["target_epsilon"]: r for r in payload["rows"]}
    assert rows[2.0]["runs"] == 2 and 0 < rows[2.0]["spent_epsilon"] <= 2.0
    assert rows["inf"]["spent_epsilon"] == "inf"
    with (folder / "sweep.csv").open() as fh:
        assert [r["target_epsilon"] for r in csv.DictReader(fh)] == ["2.0", "inf"]
    assert (folder / "accuracy_vs_epsilon.png").stat().st_size > 1000
    assert "Privacy-budget sweep" in (folder / "sweep.html").read_text()
