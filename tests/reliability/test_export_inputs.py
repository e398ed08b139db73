"""Damaged checkpoints and run folders under ``fedtrain export`` and ``--resume``; ONNX models and inputs under
``fedtrain predict``. One tiny run (and its fp32 model) serves every case; a case damages its own copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_inputs import Case, Ctx, check, params, run_cli

EXPORT = ["--formats", "fp32", "--no-ort", "--latency-calls", "0"]


def _damaged(damage, *command: str):
    """``fedtrain COMMAND RUN ...`` on a copy of the tiny run that ``damage(copy)`` changed."""

    def argv(ctx: Ctx) -> list[str]:
        assert ctx.run is not None
        copy = ctx.tmp / "run"
        shutil.copytree(ctx.run, copy)
        damage(copy)
        args = [a.replace("{run}", str(copy)) for a in command]
        return args if "{run}" in " ".join(command) else [*args, str(copy)]

    return argv


def _truncate(name: str):
    def damage(run: Path) -> None:
        path = run / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:400])

    return damage


def _replace(name: str, payload):
    def damage(run: Path) -> None:
        torch.save(payload(run) if callable(payload) else payload, run / "checkpoints" / name)

    return damage


def _other_model(run: Path) -> dict:
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["arrays"] = {k: torch.zeros(*(2 * d for d in v.shape)) for k, v in ckpt["arrays"].items()}
    return ckpt


def _other_version(run: Path) -> dict:
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    return {**ckpt, "format": "fedtrain-checkpoint-v0"}


def _write(rel: str, data: bytes):
    def damage(run: Path) -> None:
        (run / rel).write_bytes(data)

    return damage


def _delete(*rels: str):
    def damage(run: Path) -> None:
        for rel in rels:
            (run / rel).unlink()

    return damage


def _predict(model, make_input):
    """``fedtrain predict MODEL INPUT``: ``model(ctx)`` gives the model path, ``make_input(folder)`` the input."""

    def argv(ctx: Ctx) -> list[str]:
        return ["predict", str(model(ctx)), str(make_input(ctx.tmp))]

    return argv


def _good(ctx: Ctx) -> Path:
    assert ctx.onnx is not None
    return ctx.onnx


def _model_file(name: str, data: bytes):
    def model(ctx: Ctx) -> Path:
        (ctx.tmp / name).write_bytes(data)
        return ctx.tmp / name

    return model


def _npz(x):
    def make(tmp: Path) -> Path:
        np.savez(tmp / "in.npz", x=x)
        return tmp / "in.npz"

    return make


def _csv(text: str):
    def make(tmp: Path) -> Path:
        (tmp / "in.csv").write_text(text)
        return tmp / "in.csv"

    return make


NAN = np.full((2, 1, 8, 8), 3.0, dtype=np.float32)
NAN[1, 0, 2, 2] = np.nan
K, IN = "checkpoint", "data"
CASES = [
    Case(
        "ckpt-truncated",
        K,
        "a truncated checkpoint",
        _damaged(_truncate("best.pt"), "export", *EXPORT),
        r"checkpoint '.*best\.pt' is corrupt or not a fedtrain checkpoint \(RuntimeError\)",
        needs_run=True,
    ),
    Case(
        "ckpt-not-torch",
        K,
        "a text file as checkpoint",
        _damaged(_write("checkpoints/best.pt", b"hello\n"), "export", *EXPORT),
        r"checkpoint '.*best\.pt' is corrupt or not a fedtrain checkpoint \(\w+\); start a new run",
        needs_run=True,
    ),
    Case(
        "ckpt-not-checkpoint",
        K,
        "a torch file that is not a checkpoint",
        _damaged(_replace("best.pt", {"weights": torch.ones(3)}), "export", *EXPORT),
        r"'.*best\.pt' is not a fedtrain-checkpoint-v1 file.*(start a new run|another version|re-run)",
        needs_run=True,
    ),
    Case(
        "ckpt-tensor",
        K,
        "a bare tensor as checkpoint",
        _damaged(_replace("best.pt", torch.ones(3)), "export", *EXPORT),
        r"'.*best\.pt' is not a fedtrain-checkpoint-v1 file.*(start a new run|another version|re-run)",
        needs_run=True,
    ),
    Case(
        "ckpt-other-version",
        K,
        "a checkpoint of another fedtrain version",
        _damaged(_replace("best.pt", _other_version), "export", *EXPORT),
        r"'.*best\.pt' is not a fedtrain-checkpoint-v1 file.*(start a new run|another version|re-run)",
        needs_run=True,
    ),
    Case(
        "ckpt-other-model",
        K,
        "a checkpoint of another model",
        _damaged(_replace("best.pt", _other_model), "export", *EXPORT),
        r"does not fit the model its config\.toml builds: size mismatch for \S+",
        needs_run=True,
    ),
    Case(
        "ckpt-missing",
        K,
        "a run folder without checkpoints",
        _damaged(_delete("checkpoints/best.pt", "checkpoints/latest.pt"), "export", *EXPORT),
        r"no checkpoint at '.*(best|latest)\.pt'",
        needs_run=True,
    ),
    Case(
        "run-config-damaged",
        "config",
        "a run folder whose config.toml is damaged",
        _damaged(_write("config.toml", b"num-rounds = = 1\n"), "export", *EXPORT),
        r"config file '.*config\.toml' is not valid TOML",
        needs_run=True,
    ),
    Case(
        "run-not-a-run",
        K,
        "export of a folder that is no run",
        lambda ctx: ["export", str(ctx.tmp)],
        r"'.*' is not a fedtrain run folder \(no config\.toml\); pass a folder that `fedtrain run` printed",
    ),
    Case(
        "export-format",
        "config",
        "an unknown export format",
        _damaged(lambda run: None, "export", "--formats", "fp8"),
        r"export-formats='fp8' names unknown formats \['fp8'\]; choose from fp32, fp16, int8-static, int8-dynamic",
        needs_run=True,
    ),
    Case(
        "export-drop",
        "config",
        "a negative accuracy drop",
        _damaged(lambda run: None, "export", "--max-accuracy-drop", "-1"),
        r"export-max-accuracy-drop=-1\.0 is out of range: must be >= 0\.0",
        needs_run=True,
    ),
    Case(
        "resume-truncated",
        K,
        "--resume with a truncated latest.pt",
        _damaged(_truncate("latest.pt"), "run", "--resume", "{run}"),
        r"checkpoint '.*latest\.pt' is corrupt or not a fedtrain checkpoint",
        needs_run=True,
    ),
    Case(
        "resume-other-version",
        K,
        "--resume from another version's checkpoint",
        _damaged(_replace("latest.pt", _other_version), "run", "--resume", "{run}"),
        r"'.*latest\.pt' is not a fedtrain-checkpoint-v1 file.*(start a new run|another version|re-run)",
        needs_run=True,
    ),
    Case(
        "onnx-missing",
        "model",
        "a model file that does not exist",
        _predict(lambda ctx: ctx.tmp / "none.onnx", _npz(NAN)),
        r"none\.onnx: model file not found; pass an \.onnx or \.ort file that `fedtrain export` wrote",
    ),
    Case(
        "onnx-corrupt",
        "model",
        "a corrupt .onnx",
        _predict(_model_file("m.onnx", b"\x08\x07garbage" * 20), _npz(NAN)),
        r"m\.onnx: not a loadable ONNX or ORT model .*re-export it, or copy it again",
    ),
    Case(
        "onnx-text",
        "model",
        "a text file as model",
        _predict(_model_file("m.txt", b"not a model\n"), _npz(NAN)),
        r"m\.txt: not a loadable ONNX or ORT model \(.*INVALID_PROTOBUF.*\); re-export it",
    ),
    Case(
        "onnx-checkpoint",
        "model",
        "a torch checkpoint as model",
        lambda ctx: ["predict", str(ctx.run / "checkpoints" / "best.pt"), str(_npz(NAN)(ctx.tmp))],
        r"best\.pt: not a loadable ONNX or ORT model \(.*\); re-export it",
        needs_run=True,
    ),
    Case(
        "onnx-empty",
        "model",
        "an empty .onnx",
        _predict(_model_file("m.onnx", b""), _npz(NAN)),
        r"m\.onnx: not a loadable ONNX or ORT model \(.*No graph was found.*\); "
        r"re-export it",
    ),
    Case(
        "input-shape",
        IN,
        "inputs of the wrong shape",
        _predict(_good, _npz(np.zeros((3, 5), np.float32))),
        r"in\.npz: input shape \(3, 5\) does not match the model: expected \(1, 8, 8\)",
        needs_run=True,
    ),
    Case(
        "input-nan",
        IN,
        "a NaN input",
        _predict(_good, _npz(NAN)),
        r"in\.npz: input holds 1 non-finite values \(1 NaN, 0 inf.*\); "
        r"first at index \(1, 0, 2, 2\); replace or drop",
        needs_run=True,
    ),
    Case(
        "input-inf",
        IN,
        "an infinite input",
        _predict(_good, _npz(np.where(NAN == 3.0, np.inf, 0.0).astype(np.float32))),
        r"in\.npz: input holds 127 non-finite values \(0 NaN, 127 inf",
        needs_run=True,
    ),
    Case(
        "input-missing",
        IN,
        "an input that does not exist",
        _predict(_good, lambda tmp: tmp / "none.npz"),
        r"none\.npz: input not found; pass a \.npz, a \.csv, an image or a folder of images",
        needs_run=True,
    ),
    Case(
        "input-csv-columns",
        IN,
        "a CSV with the wrong number of columns",
        _predict(_good, _csv("a,b,c\n1,2,3\n")),
        r"in\.csv: rows have 3 feature columns; the model takes 64 \(shape \(1, 8, 8\)\)",
        needs_run=True,
    ),
    Case(
        "input-csv-text",
        IN,
        "a CSV with a word in it",
        _predict(_good, _csv(",".join(f"p{i}" for i in range(64)) + "\n" + ",".join(["1"] * 63 + ["x"]) + "\n")),
        r"in\.csv.*'x'",
        needs_run=True,
    ),
    Case(
        "input-empty-csv", IN, "an empty CSV", _predict(_good, _csv("")), r"in\.csv: the CSV is empty", needs_run=True
    ),
    Case(
        "input-strings",
        IN,
        "an .npz of strings",
        _predict(_good, _npz(np.array([["a"] * 64]))),
        r"in\.npz: input dtype <U1 is not a real number type; pass float32 values",
        needs_run=True,
    ),
    Case(
        "predict-top-k",
        IN,
        "--top-k 0",
        lambda ctx: ["predict", str(ctx.onnx), "x.npz", "--top-k", "0"],
        r"--top-k must be >= 1, got 0",
        needs_run=True,
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_checkpoint_or_model_is_one_clear_line(case: Case, tmp_path: Path, request):
    if case.needs_run:
        run, onnx = request.getfixturevalue("tiny_run"), request.getfixturevalue("tiny_onnx")
        check(case, Ctx(tmp_path, run=run, onnx=onnx))
    else:
        check(case, Ctx(tmp_path))


def test_a_damaged_checkpoint_leaves_the_run_folder_as_it_was(tiny_run: Path, tmp_path: Path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    _truncate("best.pt")(copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    code, _, _ = run_cli(["export", str(copy), *EXPORT])
    assert code == 5
    assert {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
