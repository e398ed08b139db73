"""`fedtrain run`'s presets: the main job when no config is given, the generic defaults one flag away."""

from __future__ import annotations

import json

import pytest

from fedtrain.cli import _resolve, build_parser, main
from fedtrain.config import load_config
from fedtrain.config.presets import MAIN_JOB, MAIN_JOB_PRETRAINING_EFFECT, preset
from fedtrain.errors import ConfigError
from fedtrain.results import RunFolder


def _cfg(*argv: str):
    return _resolve(build_parser().parse_args(["run", *argv]))


def test_fedtrain_run_without_config_is_the_main_job():
    cfg = _cfg()
    assert cfg.phases == ["pretrain", "finetune", "export"]
    assert cfg.sample_dp and cfg.privacy.dp_target_epsilon == 3.0
    assert cfg.exchange == "secaggplus"
    assert cfg.strategy.server_averaging == "ema"
    assert cfg.export.export_formats == "fp32,int8-static"
    flat = cfg.to_flat()
    assert {k: flat[k] for k in MAIN_JOB} == MAIN_JOB  # every pinned key survives resolution, DP defaults included


def test_any_config_starts_from_the_generic_defaults_unless_the_preset_is_named(tmp_path):
    generic = load_config()
    assert _cfg("--run-config", "plan=finetune").to_flat() == load_config(overrides="plan=finetune").to_flat()
    (tmp_path / "x.toml").write_text("num-rounds = 4\n")
    assert _cfg("--config", str(tmp_path / "x.toml")).privacy.dp_level == generic.privacy.dp_level == "none"
    layered = _cfg("--preset", "main", "--run-config", "num-rounds=4")
    assert layered.strategy.num_rounds == 4 and layered.sample_dp and layered.exchange == "secaggplus"
    assert _cfg("--preset", "none").to_flat() == generic.to_flat()


def test_fedtrain_config_prints_what_fedtrain_run_runs(capsys):
    assert main(["config"]) == 0
    assert 'plan = "pretrain,finetune,export"' in capsys.readouterr().out
    assert main(["config", "--run-config", "num-rounds=3"]) == 0
    assert 'plan = "finetune"' in capsys.readouterr().out


def test_preset_keys_count_as_set_and_other_budgets_keep_the_whole_path():
    # At epsilon 1 the DP defaults would switch an unset model to the linear recipe (15 rounds, batch 64); the
    # preset's keys are set, and layer-wise pretraining keeps its MLP.
    cfg = _cfg("--preset", "main", "--run-config", "dp-target-epsilon=1")
    assert cfg.model.model == "mlp" and cfg.phases == ["pretrain", "finetune", "export"]
    assert cfg.strategy.num_rounds == 30 and cfg.train.batch_size == 16
    plain = load_config(overrides="dp-level=sample dp-target-epsilon=1 plan=pretrain,finetune")
    assert plain.model.model == "mlp"  # pretraining needs the MLP: the small-budget recipe steps aside


def test_an_unknown_preset_is_refused_in_one_line(capsys):
    with pytest.raises(ConfigError, match="unknown preset 'fast'; choose one of main, none"):
        preset("fast")
    with pytest.raises(SystemExit) as stop:  # argparse's own refusal, in fedtrain's one-line form
        main(["run", "--preset", "fast"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument --preset: invalid choice: 'fast'")


def test_the_main_job_runs_every_stage_end_to_end_at_small_scale(tmp_path):
    # The preset's whole path, shrunk: 1 pretraining round, 2 fine-tuning rounds, 4 clients.
    small = "num-clients=4 min-clients=2 pretrain-rounds=1 num-rounds=2 export-latency-calls=0 export-ort=false"
    code = main(["run", "--preset", "main", "--out", str(tmp_path), "--run-config", f"{small} progress=false"])
    assert code == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [p["name"] for p in summary["phases"]] == ["pretrain-1", "finetune", "export"]
    assert all(p["status"] == "completed" for p in summary["phases"])
    assert 0 < summary["privacy"]["sample"]["epsilon_max"] <= 3.0
    assert summary["secure_aggregation"]["halted_rounds"] == []
    records = RunFolder(run_dir).read_metrics()
    assert [r["phase"] for r in records] == ["pretrain-1", "finetune", "finetune"]
    assert all(r["secagg_attempts"] == 1 for r in records)
    assert {"model-fp32.onnx", "model-int8-static.onnx"} <= {p.name for p in (run_dir / "export").iterdir()}
    pre = summary["pretraining"]
    assert pre["rounds"] == 1 and pre["layers"] == 1 and 0 < pre["epsilon_after"] < 3.0
    assert 0 < pre["steps_after"] < pre["steps_total"]
    report = (run_dir / "report.html").read_text()
    assert f"{pre['steps_after']} of {pre['steps_total']} DP-SGD steps per client" in report
    assert MAIN_JOB_PRETRAINING_EFFECT not in report  # measured for the preset's own rounds, not this shrunk copy


def test_the_report_states_what_pretraining_bought_for_the_preset_itself():
    from fedtrain.results.report import _pretraining_note

    summary = {
        "config": {**load_config(preset=preset("main")).to_flat()},
        "pretraining": {"rounds": 5, "layers": 1, "epsilon_after": 1.5, "steps_after": 20, "steps_total": 230},
        "privacy": {"sample": {"epsilon_max": 3.0}},
    }
    note = _pretraining_note(summary)
    assert "took 20 of 230 DP-SGD steps per client" in note and "ε = 1.50 after them, of ε = 3.00" in note
    assert MAIN_JOB_PRETRAINING_EFFECT in note
    summary["config"]["num-rounds"] = 10  # another recipe: the preset's measurement does not apply
    assert MAIN_JOB_PRETRAINING_EFFECT not in _pretraining_note(summary)
