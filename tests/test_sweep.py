import csv
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from fedtrain.cli import main
from fedtrain.errors import ConfigError
from fedtrain.runtime.sweep import parse_epsilons
from fedtrain.runtime.sweep_page import format_accuracy, plot_sweep, write_sweep_html


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
    last = capsys.readouterr().out.strip().splitlines()[-1]
    folder = Path(last)
    assert folder.is_absolute() and folder.parent == tmp_path, last  # the last line is the sweep folder
    payload = json.loads((folder / "sweep.json").read_text())
    assert payload["seeds"] == 2 and len(payload["runs"]) == 4
    rows = {r["target_epsilon"]: r for r in payload["rows"]}
    assert rows[2.0]["runs"] == 2 and 0 < rows[2.0]["spent_epsilon"] <= 2.0
    assert rows["inf"]["spent_epsilon"] == "inf"
    with (folder / "sweep.csv").open() as fh:
        assert [r["target_epsilon"] for r in csv.DictReader(fh)] == ["2.0", "inf"]
    assert (folder / "accuracy_vs_epsilon.png").stat().st_size > 1000
    page = (folder / "sweep.html").read_text()
    assert "Privacy-budget sweep" in page and "(n=2)" in page
    # Every run's report is linked twice (table row and plot dot), relative to the sweep folder.
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert len(hrefs) == 8 and all(not h.startswith(("/", "file:")) for h in hrefs), hrefs
    assert all((folder / h).is_file() for h in hrefs)
    assert {h.split("/")[1] for h in hrefs} == {Path(r["run_dir"]).name for r in payload["runs"]}


@pytest.mark.parametrize(("level", "without_budget"), [("sample", "standard"), ("both", "range")])
def test_sweep_of_the_linear_recipe_normalises_its_inf_run_without_a_release(tmp_path, capsys, level, without_budget):
    # The DP defaults (linear model, normalize=dp-standard) hold for every epsilon; at inf there is no
    # sample-level budget for dp-standard's release, so that run normalises the way its DP level allows.
    code = main([
        "sweep", "--epsilons", "3,inf", "--seeds", "1", "--jobs", "1", "--out", str(tmp_path),
        "--run-config", f"dp-level={level} num-clients=3 num-rounds=1 min-clients=2 dp-user-noise-multiplier=0.5",
    ])  # fmt: skip
    assert code == 0
    payload = json.loads((Path(capsys.readouterr().out.strip().splitlines()[-1]) / "sweep.json").read_text())
    used = {r["target_epsilon"]: json.loads((Path(r["run_dir"]) / "summary.json").read_text())["config"]
            for r in payload["runs"]}  # fmt: skip
    assert (used[3.0]["model"], used[3.0]["normalize"]) == ("linear", "dp-standard")
    assert (used["inf"]["model"], used["inf"]["normalize"]) == ("linear", without_budget)


def _synthetic(tmp_path, epsilons, seeds):
    """Rows and runs as run_sweep writes them, each run folder holding a report.html."""
    rows, runs = [], []
    for i, eps in enumerate(epsilons):
        accs = [0.5 + 0.1 * i + 0.01 * s for s in range(seeds)]
        for s, acc in enumerate(accs):
            run_dir = tmp_path / "runs" / f"eps{eps}-seed{s}"
            run_dir.mkdir(parents=True)
            (run_dir / "report.html").write_text("<html></html>")
            runs.append({"target_epsilon": eps, "seed": s, "accuracy": acc, "run_dir": str(run_dir),
                         "spent_epsilon": math.inf if eps == "inf" else eps})  # fmt: skip
        std = statistics.stdev(accs) if seeds > 1 else None
        rows.append({"target_epsilon": eps, "spent_epsilon": eps, "accuracy_mean": statistics.fmean(accs),
                     "accuracy_std": std, "runs": seeds})  # fmt: skip
    payload = {"delta": 1e-5, "accountant": "rdp", "seeds": seeds, "workers": 1, "wall_seconds": 1.0,
               "rows": rows, "runs": runs}  # fmt: skip
    return payload


def test_plot_axes_strictly_contain_every_point_with_room(tmp_path):
    payload = _synthetic(tmp_path, [1.0, 8.0, "inf"], seeds=3)
    info = plot_sweep(payload["rows"], payload["runs"], tmp_path, tmp_path / "plot.png")
    lo, hi = info.xlim
    xs = [1.0, 8.0, info.inf_x]
    # Log axis: each outermost point keeps at least a factor 1.5 of room from the frame (eps=1 was on the edge).
    assert lo < min(xs) / 1.5 and hi > max(xs) * 1.5 and info.inf_x > 8.0
    ys = [r["accuracy"] for r in payload["runs"]]
    tops = [r["accuracy_mean"] + r["accuracy_std"] for r in payload["rows"]]
    bottoms = [r["accuracy_mean"] - r["accuracy_std"] for r in payload["rows"]]
    assert info.ylim[0] < min(ys + bottoms) - 0.01 and info.ylim[1] > max(ys + tops) + 0.01
    # One clickable dot per run, inside the image, linking its report relative to the sweep folder.
    assert len(info.areas) == 9
    assert all(0 < a.x < info.width and 0 < a.y < info.height for a in info.areas)
    expected = {f"runs/eps{e}-seed{s}/report.html" for e in (1.0, 8.0, "inf") for s in range(3)}
    assert {a.href for a in info.areas} == expected
    # Higher accuracy is higher on the image (pixel y grows downwards).
    by_acc = sorted(info.areas, key=lambda a: float(a.title.rsplit(": ", 1)[1]))
    assert by_acc[0].y > by_acc[-1].y


def test_single_run_shows_value_and_n1_not_a_zero_std(tmp_path):
    assert format_accuracy(0.81234, None, 1) == "0.8123 (n=1)"
    assert format_accuracy(0.81234, 0.0, 1) == "0.8123 (n=1)"
    assert format_accuracy(0.81234, 0.01, 3) == "0.8123 ± 0.0100 (n=3)"
    payload = _synthetic(tmp_path, [1.0, "inf"], seeds=1)
    info = plot_sweep(payload["rows"], payload["runs"], tmp_path, tmp_path / "plot.png")
    lo, hi = info.xlim
    assert lo < 1.0 < hi and lo < info.inf_x < hi and info.ylim[0] < 0.5 and info.ylim[1] > 0.6
    page = write_sweep_html(payload, tmp_path, tmp_path / "plot.png", info).read_text()
    page = re.sub(r'src="data:[^"]*"', "", page)  # base64 may spell anything
    assert "0.5000 (n=1)" in page and "0.6000 (n=1)" in page
    assert "±" not in page and "std" not in page
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert sorted(hrefs) == sorted(["runs/eps1.0-seed0/report.html", "runs/epsinf-seed0/report.html"] * 2)


def test_a_run_without_report_is_listed_without_a_link(tmp_path):
    payload = _synthetic(tmp_path, [2.0], seeds=2)
    (Path(payload["runs"][1]["run_dir"]) / "report.html").unlink()  # e.g. report=false
    info = plot_sweep(payload["rows"], payload["runs"], tmp_path, tmp_path / "plot.png")
    page = write_sweep_html(payload, tmp_path, tmp_path / "plot.png", info).read_text()
    assert re.findall(r'href="([^"]+)"', page) == ["runs/eps2.0-seed0/report.html"] * 2
    assert "seed 1: 0.5100" in page
