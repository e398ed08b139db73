"""The `fedtrain` command: one clear error line for bad input, the run folder as last line."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from fedtrain.cli import main
from fedtrain.errors import FedtrainError


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "x.npz").write_bytes(b"PK\x03\x04 truncated")
    np.savez(tmp / "flat.npz", x=np.arange(10.0), y=np.arange(10) % 2)
    np.savez(tmp / "tab.npz", x=np.random.default_rng(0).random((60, 5)), y=np.arange(60) % 2)
    (tmp / "bad.toml").write_text("num-rounds = [")
    (tmp / "notarun").mkdir()
    run = tmp / "broken-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text("num-rounds = 2\n")
    (run / "checkpoints" / "latest.pt").write_bytes(b"\x00garbage")
    return [
        (["--run-config", "num-round=3"], "unknown config key 'num-round'; did you mean 'num-rounds'?"),
        (["--run-config", "learning-rate=-0.1"], "learning-rate=-0.1 is out of range"),
        (["--run-config", "num-clients=ten"], "num-clients='ten' must be an integer"),
        (["--run-config", "strategy=fedsgd"], "strategy='fedsgd' is not one of"),
        (["--run-config", "optimizer=adamm"], "did you mean 'adam'"),
        (["--run-config", "min-clients=11"], "min-clients=11 is larger than num-clients=10"),
        (["--run-config", "fraction-train=0"], "fraction-train=0.0 is out of range"),
        (["--run-config", "dataset=file"], "dataset='file' needs data-path"),
        (["--run-config", f"dataset=file data-path={tmp / 'nope.npz'}"], "does not exist"),
        (["--run-config", f"dataset=file data-path={tmp / 'x.npz'}"], "not a readable .npz"),
        (
            ["--run-config", f"dataset=file data-path={tmp / 'flat.npz'}"],
            "inputs must have shape",
        ),
        (["--run-config", f"dataset=file data-path={tmp / 'tab.npz'} model=cnn num-clients=2"], "use model='mlp'"),
        (["--config", str(tmp / "bad.toml")], "is not valid TOML"),
        (["--config", str(tmp / "missing.toml")], "does not exist"),
        (["--resume", str(tmp / "notarun")], "is not a fedtrain run folder"),
        (["--resume", str(run)], "is corrupt or not a fedtrain checkpoint"),
        (["--run-config", "dirichlet-alpha=0.01 num-clients=100 min-partition-size=12"], "raise dirichlet-alpha"),
        (["--run-config", "partitioner=pathological classes-per-client=11"], "classes-per-client=11 exceeds"),
        (["--run-config", "runtime=simulation"], "use `flwr run ."),
        (["--run-config", "num-rounds 5"], "cannot parse"),
    ]


def test_at_least_fifteen_bad_inputs_end_in_one_clear_line(tmp_path, capsys):
    cases = _bad_inputs(tmp_path)
    assert len({expected for _, expected in cases}) >= 15
    for args, expected in cases:
        code = main(["run", "--out", str(tmp_path / "runs"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0, args
        assert err[-1].startswith("error: ") and expected in err[-1], (args, err)
        assert not any("Traceback" in line for line in err), args


def test_error_exit_codes_follow_error_type(tmp_path, capsys):
    assert main(["run", "--run-config", "num-round=3"]) == 2
    assert main(["run", "--run-config", f"dataset=file data-path={tmp_path / 'none.npz'}", "--out", str(tmp_path)]) == 3


def test_an_environment_error_exits_with_1(tmp_path, capsys, monkeypatch):
    import fedtrain.runtime as runtime

    def unavailable(*args, **kwargs):
        raise FedtrainError("the federation is not reachable")

    monkeypatch.setattr(runtime, "run_inprocess", unavailable)
    assert main(["run", "--run-config", f"out-dir={tmp_path} progress=false"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: the federation is not reachable"


def test_config_command_prints_resolved_toml(capsys):
    assert main(["config", "--run-config", "num-rounds=3"]) == 0
    assert "num-rounds = 3" in capsys.readouterr().out


def test_run_prints_run_folder_as_last_line(tmp_path):
    out = (
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fedtrain.cli",
                "run",
                "--out",
                str(tmp_path),
                "--name",
                "cli",
                "--run-config",
                "num-clients=3 num-rounds=1 progress=false report=false",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    run_dir = Path(out[-1])
    assert run_dir.parent == tmp_path and run_dir.name.endswith("-cli")
    assert (run_dir / "summary.json").is_file()
    assert any("final test accuracy" in line for line in out)
