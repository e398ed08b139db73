"""fedtrain tune: the search space, the search on validation only, and its privacy statement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedtrain.cli import main
from fedtrain.config import load_config
from fedtrain.errors import ConfigError
from fedtrain.privacy.accountant import epsilon_of
from fedtrain.tune import parse_space, run_tune

SMALL = "num-clients=3 min-clients=2 num-rounds=2 hidden-sizes=16 local-epochs=1 progress=false report=false"


def test_space_parses_kinds_and_types_choices_like_the_key():
    space = parse_space("learning-rate=log:0.01:1 batch-size=cat:16|32 model=cat:linear|mlp num-rounds=int:2:5")
    kinds = {p.key: (p.kind, p.low, p.high, p.choices) for p in space}
    assert kinds["learning-rate"] == ("log", 0.01, 1.0, ())
    assert kinds["batch-size"][3] == (16, 32)  # ints, as the key is
    assert kinds["model"][3] == ("linear", "mlp") and kinds["num-rounds"][:3] == ("int", 2, 5)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("no-such-key=float:0:1", "config key"),
        ("learning-rate=gauss:0:1", "kind"),
        ("learning-rate=log:0:1", "LOW > 0"),
        ("learning-rate=float:2:1", "LOW < HIGH"),
        ("model=cat:linear|resnet", "resnet"),
        ("batch-size=cat:16|x", "not a number"),
        ("", "empty"),
    ],
)
def test_bad_space_is_refused_with_what_to_do(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_space(text)


def test_search_selects_on_validation_and_composes_every_trials_privacy(tmp_path):
    base = load_config(overrides=f"{SMALL} dp-level=sample dp-target-epsilon=2 model=linear out-dir={tmp_path}")
    space = parse_space("learning-rate=log:0.05:1", base)
    result = run_tune(base, space, trials=2, out_dir=tmp_path, jobs=1, keep_runs=True)
    doc = json.loads((result.folder / "tune.json").read_text())
    assert len(doc["trials"]) == 2 and doc["best"]["val_accuracy"] == max(t["val_accuracy"] for t in doc["trials"])
    for t in doc["trials"]:  # each score is the validation accuracy of the trial's reported (last) round
        run = result.folder / "runs" / next(p.name for p in (result.folder / "runs").iterdir()
                                            if p.name.endswith(f"trial{t['trial']}-seed0"))  # fmt: skip
        last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
        assert t["val_accuracy"] == last["val_accuracy"]
    privacy = doc["privacy"]
    assert 1.9 < privacy["epsilon_per_trial"] <= 2.0 + 1e-9
    # Composition of two trials: more than one trial's, less than twice (RDP composes sub-additively here).
    assert 2.0 < privacy["epsilon_search"] < 4.0
    histories = {}
    for run in (result.folder / "runs").iterdir():
        for pid, c in json.loads((run / "privacy.json").read_text())["sample"]["clients"].items():
            histories.setdefault(pid, []).extend((s["noise_multiplier"], s["sample_rate"], s["steps"])
                                                 for s in c["segments"])  # fmt: skip
    # Worst client per trial is at least each client's own composition (same partitions here), and close to it.
    per_client = max(epsilon_of("rdp", h, 1e-5) for h in histories.values())
    assert per_client <= privacy["epsilon_search"] < 1.1 * per_client
    assert "together spend" in privacy["statement"]
    best = load_config(file=result.folder / "best.toml")
    assert best.train.learning_rate == pytest.approx(result.best_params["learning-rate"])


def test_tune_command_prints_the_best_and_the_privacy_statement(tmp_path, capsys):
    rc = main(["tune", "--run-config", f"{SMALL} model=linear", "--space", "learning-rate=cat:0.05|0.2",
               "--trials", "2", "--jobs", "1", "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "best: learning-rate=" in out and "No DP" in out
    assert (tmp_path / out.strip().splitlines()[-1]).is_dir() or out.strip().splitlines()[-1].startswith("/")


def test_tune_without_a_validation_split_is_refused(tmp_path):
    base = load_config(overrides=f"{SMALL} val-fraction=0")
    with pytest.raises(ConfigError, match="val-fraction"):
        run_tune(base, parse_space("learning-rate=float:0.1:0.2"), trials=1, out_dir=tmp_path)


def test_the_search_composes_each_trials_worst_client_when_partitions_differ(tmp_path):
    # Two trials whose partitions swap a large and a small client: composing by partition id would pair each
    # client's large-q history with a small-q one; a record that sat with the large client both times spends twice
    # the large history, which is what the search must report.
    from fedtrain.tune.privacy import search_privacy

    big, small = (1.0, 0.5, 40), (1.0, 0.05, 40)

    def trial(name: str, first: tuple, second: tuple) -> Path:
        run = tmp_path / name
        run.mkdir()
        clients = {
            pid: {"segments": [{"noise_multiplier": z, "sample_rate": q, "steps": n}],
                  "epsilon": epsilon_of("rdp", [(z, q, n)], 1e-5)}
            for pid, (z, q, n) in (("0", first), ("1", second))
        }  # fmt: skip
        (run / "privacy.json").write_text(json.dumps({"sample": {"clients": clients}}))
        return run

    cfg = load_config(overrides="dp-level=sample")
    out = search_privacy(cfg, [trial("a", big, small), trial("b", small, big)])
    assert out["epsilon_search"] == pytest.approx(epsilon_of("rdp", [big, big], 1e-5), rel=1e-9)
    assert out["epsilon_search"] > epsilon_of("rdp", [big, small], 1e-5)  # what composing by partition id gave
    (tmp_path / "c").mkdir()  # a trial that recorded no DP history: no finite epsilon for the search
    assert search_privacy(cfg, [tmp_path / "a", tmp_path / "c"])["epsilon_search"] == float("inf")
