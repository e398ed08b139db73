"""CLI misuse, a bad --out, a model that does not fit its data, deployment input, and Ctrl-C before a run folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import TINY, Case, Ctx, check, params, run_cli

import fedtrain.runtime


def _argv(*parts: str):
    return lambda ctx: [p.replace("{tmp}", str(ctx.tmp)) for p in parts]


def _file_at(name: str, *parts: str):
    def argv(ctx: Ctx) -> list[str]:
        (ctx.tmp / name).write_text("not a folder\n")
        return [p.replace("{tmp}", str(ctx.tmp)) for p in parts]

    return argv


def _tabular(model: str):
    def argv(ctx: Ctx) -> list[str]:
        rng = np.random.default_rng(0)
        np.savez(ctx.tmp / "tab.npz", x=rng.normal(size=(60, 5)), y=np.arange(60) % 3)
        run_config = f"{TINY} dataset=file data-path='{ctx.tmp / 'tab.npz'}' model={model}"
        return ["run", "--out", str(ctx.tmp / "runs"), "--run-config", run_config]

    return argv


RUN = ["run", "--run-config", TINY]
L, D = "cli", "deploy"
CASES = [
    Case(
        "no-command",
        L,
        "fedtrain without a command",
        _argv(),
        r"error: the following arguments are required: command; see fedtrain --help",
    ),
    Case(
        "unknown-command",
        L,
        "a command that does not exist",
        _argv("train"),
        r"argument command: invalid choice: 'train' \(choose from 'run', 'sweep'.*see fedtrain --help",
    ),
    Case(
        "unknown-option",
        L,
        "an option that does not exist",
        _argv("run", "--rounds", "5"),
        r"unrecognized arguments: --rounds 5; see fedtrain --help",
    ),
    Case(
        "export-no-run",
        L,
        "export without its run folder",
        _argv("export"),
        r"the following arguments are required: RUN_DIR; see fedtrain export --help",
    ),
    Case(
        "predict-no-input",
        L,
        "predict without an input",
        _argv("predict", "m.onnx"),
        r"the following arguments are required: INPUT; see fedtrain predict --help",
    ),
    Case(
        "split-no-out",
        L,
        "split without its output folder",
        _argv("split"),
        r"the following arguments are required: OUT_DIR; see fedtrain split --help",
    ),
    Case(
        "sweep-no-epsilons",
        L,
        "sweep without --epsilons",
        _argv("sweep"),
        r"the following arguments are required: --epsilons; see fedtrain sweep --help",
    ),
    Case(
        "option-type",
        L,
        "a word for --seeds",
        _argv("sweep", "--epsilons", "1", "--seeds", "two"),
        r"argument --seeds: invalid int value: 'two'; see fedtrain sweep --help",
    ),
    Case(
        "choice-option",
        L,
        "an unknown --checkpoint",
        _argv("export", "{tmp}", "--checkpoint", "last"),
        r"argument --checkpoint: invalid choice: 'last' \(choose from 'best', 'latest'\); see fedtrain export --help",
    ),
    Case(
        "sweep-epsilon-word",
        "config",
        "a word in --epsilons",
        _argv("sweep", "--epsilons", "1,lots"),
        r"--epsilons: 'lots' is not a number; use e\.g\. 0\.5,1,2,inf",
    ),
    Case(
        "sweep-epsilon-zero",
        "config",
        "a zero epsilon",
        _argv("sweep", "--epsilons", "0,1"),
        r"--epsilons: 0(\.0)? must be > 0 \(use inf for no sample-level DP\)",
    ),
    Case(
        "sweep-seeds",
        L,
        "--seeds 0",
        _argv("sweep", "--epsilons", "1", "--seeds", "0"),
        r"--seeds=0 must be >= 1 \(runs per epsilon\)",
    ),
    Case(
        "out-is-file",
        "config",
        "--out names a regular file",
        _file_at("f", *RUN, "--out", "{tmp}/f"),
        r"--out '.*/f' is a file, not a folder; pass a folder for run folders \(made if missing\)",
    ),
    Case(
        "out-under-file",
        "config",
        "--out inside a regular file",
        _file_at("f", *RUN, "--out", "{tmp}/f/runs"),
        r"--out '.*/f/runs' cannot be created \(Not a directory\); pass a folder you can write to",
    ),
    Case(
        "out-key-is-file",
        "config",
        "out-dir names a regular file",
        _file_at("f", "run", "--run-config", f"{TINY} out-dir='{{tmp}}/f'"),
        r"out-dir '.*/f' is a file, not a folder",
    ),
    Case(
        "sweep-out-is-file",
        "config",
        "sweep --out names a regular file",
        _file_at("f", "sweep", "--epsilons", "1", "--out", "{tmp}/f", "--run-config", TINY),
        r"--out '.*/f' is a file, not a folder",
    ),
    Case(
        "resume-not-a-run",
        "checkpoint",
        "--resume of a folder that is no run",
        _argv("run", "--resume", "{tmp}"),
        r"'.*' is not a fedtrain run folder \(no config\.toml\); pass a folder that `fedtrain run` printed",
    ),
    Case(
        "node-config-count",
        "config",
        "fewer --node-config than clients",
        _argv(*RUN, "--node-config", "partition-id=0"),
        r"1 --node-config options for num-clients=2: give one per client",
    ),
    Case(
        "node-config-missing",
        "config",
        "data-source=node without node files",
        _argv("run", "--run-config", f"{TINY} data-source=node classes='0,1' input-shape=64 normalize=none"),
        r"data-source=node reads each client's records from its own file, but no --node-config was given",
    ),
    Case(
        "runtime-simulation",
        "cli",
        "runtime=simulation with fedtrain run",
        _argv("run", "--run-config", "runtime=simulation"),
        r"runtime='simulation' runs through Flower: use `flwr run \. --run-config \.\.\.`",
    ),
    Case(
        "model-cnn-tabular",
        "model",
        "model=cnn on tabular data",
        _tabular("cnn"),
        r"model='cnn' needs image inputs of shape \(channels, height, width\); the data has shape \(5,\): "
        r"use model='mlp' for tabular data",
    ),
    Case(
        "deploy-no-devices",
        D,
        "deploy init without devices",
        _argv("deploy", "init", "{tmp}/kit", "--superlink-host", "10.0.0.1"),
        r"give --devices N or one --device NAME per device",
    ),
    Case(
        "deploy-both",
        D,
        "deploy init with --devices and --device",
        _argv("deploy", "init", "{tmp}/kit", "--superlink-host", "h", "--devices", "2", "--device", "a"),
        r"give either --devices N or --device NAME \(repeated\), not both",
    ),
]
if Path("/sys").is_dir():  # a folder no one may write, root included (os.access says yes to root)
    CASES.append(
        Case(
            "out-not-writable",
            "config",
            "--out names a folder that cannot be written",
            _argv(*RUN, "--out", "/sys"),
            r"--out '/sys' cannot be written \(permission denied\); pass a folder you can write to",
        )
    )


@pytest.mark.parametrize("case", params(CASES))
def test_cli_misuse_is_one_clear_line(case: Case, tmp_path: Path):
    check(case, Ctx(tmp_path))
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # no run folder


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_folder_without_write_permission(tmp_path: Path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    code, _, err = run_cli([*RUN, "--out", str(folder)])
    assert code == 2 and "cannot be written (permission denied)" in err


def test_out_check_comes_before_any_work(tmp_path: Path, monkeypatch):
    (tmp_path / "f").write_text("")
    monkeypatch.setattr(fedtrain.runtime, "run_inprocess", lambda *a, **k: pytest.fail("the run started"))
    code, _, err = run_cli([*RUN, "--out", str(tmp_path / "f")])
    assert code == 2 and err.count("\n") == 1


def _interrupt_after(make=None):
    def fake(cfg, **_):
        if make:
            make(Path(cfg.output.out_dir))
        raise KeyboardInterrupt

    return fake


def test_ctrl_c_before_the_run_folder_exists_says_nothing_to_resume(tmp_path: Path, monkeypatch):
    (tmp_path / "runs" / "older-run").mkdir(parents=True)  # a folder from before this command is not ours
    monkeypatch.setattr(fedtrain.runtime, "run_inprocess", _interrupt_after())
    code, _, err = run_cli([*RUN, "--out", str(tmp_path / "runs")])
    assert code == 130
    assert err == "error: interrupted before the run folder was made: there is nothing to resume; start the run again\n"


def test_ctrl_c_while_loading_the_config_says_nothing_to_resume(monkeypatch):
    import fedtrain.cli

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedtrain.cli, "_resolve", interrupted)
    code, _, err = run_cli(RUN)
    assert code == 130 and err == "error: interrupted before the run folder was made: there is nothing to resume\n"


def test_ctrl_c_before_the_first_checkpoint_names_the_folder_and_says_nothing_to_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(fedtrain.runtime, "run_inprocess", _interrupt_after(lambda out: (out / "r1").mkdir()))
    code, _, err = run_cli([*RUN, "--out", str(tmp_path)])
    assert code == 130
    assert f"{tmp_path / 'r1'} holds no checkpoint, so there is nothing to resume" in err and err.count("\n") == 1


def test_ctrl_c_after_a_round_names_the_folder_to_resume(tmp_path, monkeypatch):
    def make(out: Path) -> None:
        (out / "r1" / "checkpoints").mkdir(parents=True)
        (out / "r1" / "checkpoints" / "latest.pt").write_bytes(b"")

    monkeypatch.setattr(fedtrain.runtime, "run_inprocess", _interrupt_after(make))
    code, _, err = run_cli([*RUN, "--out", str(tmp_path)])
    assert code == 130
    run = tmp_path / "r1"
    assert err == f"error: interrupted; {run} keeps every finished round: resume with fedtrain run --resume {run}\n"
