"""ONNX export: the export stage, `fedtrain export`, every format validated, the card, refusals and errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from fedtrain.cli import main
from fedtrain.config import load_config
from fedtrain.data import ArrayDataset, Normalizer, server_data
from fedtrain.data.federated import raw_splits
from fedtrain.edge import card_from_props
from fedtrain.errors import ExportError
from fedtrain.export import ExportSubject, export_model, export_run
from fedtrain.export.graph import NORMALIZATION_NODES, export_graph
from fedtrain.models import build_model
from fedtrain.results import RunFolder
from fedtrain.runtime import run_inprocess

FORMATS = ("fp32", "fp16", "int8-static", "int8-dynamic")
QUICK = {"export-latency-calls": 20}


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory) -> Path:
    """One small federation with the export stage at the end of its plan."""
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        overrides={
            "num-clients": 3,
            "num-rounds": 3,
            "min-clients": 2,
            "local-epochs": 1,
            "progress": False,
            "plan": "finetune,export",
            "out-dir": str(out),
            **QUICK,
        }
    )
    return run_inprocess(cfg)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _card(path: Path):
    return card_from_props({p.key: p.value for p in onnx.load(path).metadata_props})


def _trained(run_dir: Path, which: str = "best"):
    folder = RunFolder.open(run_dir)
    cfg = load_config(file=run_dir / "config.toml")
    ckpt = folder.load_checkpoint(which)
    model = build_model(cfg.model, tuple(ckpt["input_shape"]), len(ckpt["classes"]))
    model.load_state_dict(ckpt["arrays"])
    return cfg, ckpt, model.eval()


def test_the_stage_writes_every_format_validated(exported_run):
    export = exported_run / "export"
    report = json.loads((export / "export.json").read_text())
    names = [r["format"] for r in report["rows"]]
    assert names == [n for f in FORMATS for n in (f, f"{f} (.ort)")]
    for row in report["rows"]:
        assert row["written"] and (export / row["file"]).is_file()
        assert row["bytes"] == (export / row["file"]).stat().st_size
        assert row["accuracy"] is not None and row["latency_us"] > 0
    for name in FORMATS:
        onnx.checker.check_model(str(export / f"model-{name}.onnx"), full_check=True)
    fp32 = report["rows"][0]
    assert fp32["max_abs_logit_diff"] < 1e-4 and fp32["agreement"] == 1.0
    summary = json.loads((exported_run / "summary.json").read_text())
    assert summary["export"]["rows"] == report["rows"]
    assert [p["name"] for p in summary["phases"]] == ["finetune", "export"]
    page = (exported_run / "report.html").read_text()
    assert "<h2>Export</h2>" in page and "model-int8-static.onnx" in page
    assert (exported_run / "export_size_accuracy.png").is_file()


def test_the_file_takes_raw_features_and_matches_torch(exported_run):
    # The normalisation is folded in: the file is fed raw pixels, torch the normalised ones.
    cfg, _ckpt, model = _trained(exported_run)
    raw = raw_splits(cfg.data, cfg.partition, cfg.runtime.seed).test.x  # digits' own pixels, 0..16
    logits = _session(exported_run / "export" / "model-fp32.onnx").run(None, {"input": raw})[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(server_data(cfg).normalizer(raw))).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_card_describes_this_very_file(exported_run):
    _cfg, ckpt, _ = _trained(exported_run)
    report = json.loads((exported_run / "export" / "export.json").read_text())
    by_format = {r["format"]: r for r in report["rows"]}
    for name in FORMATS:
        for suffix in (".onnx", ".ort"):
            session = _session(exported_run / "export" / f"model-{name}{suffix}")
            card = card_from_props(session.get_modelmeta().custom_metadata_map)
            assert card is not None and card.variant == name
            assert card.test_accuracy == pytest.approx(by_format[name]["accuracy"])
            assert card.class_labels == list(ckpt["classes"]) and card.input_shape == list(ckpt["input_shape"])
            assert card.input_range == [0.0, 16.0]
            assert card.privacy == {"level": "none"} and card.secure_aggregation is False
            assert card.plan == ["finetune", "export"] and card.run_id == exported_run.name
            assert card.rounds == report["rounds"] and card.checkpoint == "best"
    static = _card(exported_run / "export" / "model-int8-static.onnx")
    assert static is not None and static.quantization["calibration"].startswith("server")
    assert static.quantization["samples"] >= 16


def test_no_source_paths_or_stack_traces_ship(exported_run):
    for path in (exported_run / "export").glob("*.onnx"):
        model = onnx.load(path)
        assert all(len(n.metadata_props) == 0 for n in model.graph.node), path.name
        assert len(model.graph.metadata_props) == 0 and not model.graph.value_info, path.name
        assert all(len(v.metadata_props) == 0 for v in [*model.graph.input, *model.graph.output]), path.name
        assert all(not n.name for n in model.graph.node), path.name
        assert b"/work/" not in path.read_bytes() and b".py" not in path.read_bytes(), path.name


def test_int8_static_clips_to_the_calibrated_range_and_keeps_the_normalisation_fp32(exported_run):
    model = onnx.load(exported_run / "export" / "model-int8-static.onnx")
    consumer = {i: n for n in model.graph.node for i in n.input}
    first = [consumer["input"]]
    for _ in range(2):
        first.append(consumer[first[-1].output[0]])
    assert [n.op_type for n in first] == ["Mul", "Add", "Clip"]  # fp32, not quantised
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    low, high = (float(inits[name]) for name in first[2].input[1:])
    card = _card(exported_run / "export" / "model-int8-static.onnx")
    assert [low, high] == pytest.approx(card.quantization["normalized_input_clip"])
    assert -5 <= low < high <= 5  # within the standard normaliser's own clip
    path, node = [], first[2]
    while node.op_type not in ("QuantizeLinear", "Gemm"):  # the clipped input is quantised before the first layer
        node = consumer[node.output[0]]
        path.append(node.op_type)
    assert path[-1] == "QuantizeLinear" and set(path[:-1]) <= {"Reshape", "Flatten"}
    assert len(NORMALIZATION_NODES) == 3


def test_int8_static_carries_no_qdq_that_changes_nothing(exported_run):
    """The logits leave the last layer in fp32, and no DequantizeLinear of weights or biases has a zero-point."""
    model = onnx.load(exported_run / "export" / "model-int8-static.onnx")
    producer = {o: n for n in model.graph.node for o in n.output}
    assert producer["logits"].op_type == "Gemm"
    inits = {i.name: i for i in model.graph.initializer}
    dequantized = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    kinds = {inits[n.input[0]].data_type for n in dequantized}
    assert kinds == {onnx.TensorProto.INT8, onnx.TensorProto.INT32}  # weights and biases are there ...
    assert all(len(n.input) == 2 for n in dequantized)  # ... without their all-zero zero-points
    used = {name for n in model.graph.node for name in n.input}
    assert set(inits) <= used  # nothing left behind


def test_fedtrain_export_rewrites_a_finished_run(exported_run, tmp_path, capsys):
    run = tmp_path / exported_run.name
    shutil.copytree(exported_run, run)  # its export/ holds every format: a re-export must leave only its own
    assert main(["export", str(run), "--formats", "fp32,int8-dynamic", "--no-ort", "--latency-calls", "10"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == str(run / "export")
    assert sorted(p.name for p in (run / "export").iterdir()) == [
        "export.json", "manifest.json", "model-fp32.onnx", "model-int8-dynamic.onnx"
    ]  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert [r["format"] for r in summary["export"]["rows"]] == ["fp32", "int8-dynamic"]
    assert "model-int8-dynamic.onnx" in (run / "report.html").read_text()


def _outlier_subject(tmp_path: Path) -> ExportSubject:
    """A linear model whose int8 weights lose everything: one huge weight on a feature that is always 0."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    x[:, 7] = 0.0
    w = rng.normal(size=(4, 8)).astype(np.float32) * 0.01
    y = (x @ w.T).argmax(1)
    w[:, 7] = 1000.0  # sets int8's per-tensor scale; the real weights round to zero
    model = nn.Linear(8, 4)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(w))
        model.bias.zero_()
    norm = Normalizer("none", np.zeros(8, np.float32), np.ones(8, np.float32), None)
    classes = ("a", "b", "c", "d")
    test, val = ArrayDataset(x[:100], y[:100], classes), ArrayDataset(x[100:], y[100:], classes)
    return ExportSubject(model, norm, classes, (8,), None, test, val, "synthetic", ["finetune"], 1, "latest",
                         {"level": "none"}, False)  # fmt: skip


def _settings(**kw):
    return load_config(overrides={"export-latency-calls": 0, "export-ort": False, **kw}).export


def test_a_format_that_loses_too_much_accuracy_is_refused_with_the_drop(tmp_path):
    subject = _outlier_subject(tmp_path)
    report = export_model(subject, _settings(**{"export-formats": "fp32,int8-dynamic"}), tmp_path / "out")
    assert report.fp32_accuracy == 1.0
    (refused,) = report.refused
    drop = float(re.search(r"is ([0-9.]+) points below", refused).group(1))
    row = report.rows[-1]
    assert row["format"] == "int8-dynamic" and not row["written"]
    assert drop == pytest.approx(row["accuracy_drop_points"], abs=0.01) and drop > 1
    assert "--force" in refused and not (tmp_path / "out" / "model-int8-dynamic.onnx").exists()
    forced = export_model(subject, _settings(**{"export-formats": "fp32,int8-dynamic", "export-force": True}),
                          tmp_path / "forced")  # fmt: skip
    assert (tmp_path / "forced" / "model-int8-dynamic.onnx").is_file() and "forced" in forced.refused[0]


def test_the_command_exits_non_zero_when_a_format_is_refused(exported_run, tmp_path, capsys):
    run = tmp_path / exported_run.name
    shutil.copytree(exported_run, run)
    # fp16 changes a few logits by ~1e-3; a drop threshold of 0 refuses it only if one test sample flips.
    code = main(["export", str(run), "--formats", "int8-dynamic", "--no-ort", "--latency-calls", "0",
                 "--max-accuracy-drop", "0"])  # fmt: skip
    report = json.loads((run / "export" / "export.json").read_text())
    dyn = report["rows"][-1]
    assert (code == 6) == (not dyn["written"]) and (dyn["written"] == (dyn["accuracy_drop_points"] <= 0))


def test_calibration_needs_enough_server_data(tmp_path):
    subject = _outlier_subject(tmp_path)
    subject.val = ArrayDataset(subject.val.x[:10], subject.val.y[:10], subject.classes)
    with pytest.raises(ExportError, match="at least 16 calibration samples, got 10"):
        export_model(subject, _settings(**{"export-formats": "fp32,int8-static"}), tmp_path / "a")
    subject.val = None
    with pytest.raises(ExportError, match="needs the server's validation split"):
        export_model(subject, _settings(**{"export-formats": "int8-static"}), tmp_path / "b")
    with pytest.raises(ExportError, match="needs a bounded raw input range"):
        settings = _settings(**{"export-formats": "int8-static", "export-calibration": "input-range"})
        export_model(subject, settings, tmp_path / "c")


def test_input_range_calibration_reads_no_data(tmp_path):
    subject = _outlier_subject(tmp_path)
    subject.val, subject.input_range = None, [-4.0, 4.0]
    settings = _settings(**{"export-formats": "fp32,int8-static", "export-calibration": "input-range",
                            "export-force": True})  # fmt: skip
    report = export_model(subject, settings, tmp_path / "out")
    assert report.calibration["source"].startswith("input-range") and report.calibration["samples"] == 200


class _Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x  # data-dependent control flow: torch.export cannot trace it


def test_a_model_that_cannot_be_exported_names_the_layer():
    model = nn.Sequential(nn.Linear(4, 4), _Branchy(), nn.Linear(4, 2))
    norm = Normalizer("none", np.zeros(4, np.float32), np.ones(4, np.float32), None)
    with pytest.raises(ExportError, match=r"layer '1' \(_Branchy\)"):
        export_graph(model, (4,), norm)


def test_bad_run_folders_and_checkpoints_are_one_line_errors(exported_run, tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 5
    assert "not a fedtrain run folder" in capsys.readouterr().err
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    (run / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    assert main(["export", str(run)]) == 5
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "corrupt" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(run), "--formats", "fp64"]) == 2
    assert "export-formats" in capsys.readouterr().err


def test_dp_runs_carry_their_guarantee(small_config, tmp_path):
    cfg = small_config(**{"dp-level": "sample", "plan": "finetune,export", "export-formats": "fp32",
                          "export-ort": False, "export-latency-calls": 0, "num-rounds": 1})  # fmt: skip
    run = run_inprocess(cfg)
    summary = json.loads((run / "summary.json").read_text())
    card = _card(run / "export" / "model-fp32.onnx")
    assert card.privacy["level"] == "sample"
    assert card.privacy["epsilon"] == pytest.approx(summary["privacy"]["sample"]["epsilon_max"])
    assert card.privacy["delta"] == cfg.privacy.dp_delta and card.privacy["accountant"] == cfg.privacy.dp_accountant


def test_export_run_refuses_a_checkpoint_of_another_model(exported_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    text = (run / "config.toml").read_text().replace('hidden-sizes = "128,64"', 'hidden-sizes = "16"')
    (run / "config.toml").write_text(text)
    with pytest.raises(Exception, match="does not fit the model"):
        export_run(run, _settings())


_PREDICT_WITHOUT_TORCH = """
import contextlib, io, json, sys
sys.path.insert(0, {site!r})
from fedtrain.edge.__main__ import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    code = main(["predict", {model!r}, {npz!r}, "--json"])
print(json.dumps({{"code": code, "out": json.loads(buf.getvalue()), "torch": "torch" in sys.modules}}))
"""


def test_predict_without_torch_gives_the_labels_the_card_promises(exported_run, tmp_path):
    from test_edge import _site_without_torch  # the no-torch site of tests/test_edge.py

    cfg = load_config(file=exported_run / "config.toml")
    raw = raw_splits(cfg.data, cfg.partition, cfg.runtime.seed).test
    np.savez(tmp_path / "test.npz", x=raw.x, y=raw.y)
    model = exported_run / "export" / "model-int8-static.onnx"
    site = _site_without_torch(tmp_path / "site")
    script = _PREDICT_WITHOUT_TORCH.format(site=str(site), model=str(model), npz=str(tmp_path / "test.npz"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["torch"] is False
    card = _card(model)
    assert len(result["out"]["predictions"]) == len(raw.y) == card.test_samples
    assert result["out"]["accuracy"] == pytest.approx(card.test_accuracy, abs=1.01 / len(raw.y))


def test_published_models_are_fetched_and_verified_by_checksum(exported_run, tmp_path, capsys):
    import functools
    import http.server
    import threading

    from fedtrain.edge.manifest import MANIFEST_NAME, fetch, verify

    export = exported_run / "export"
    manifest = json.loads((export / MANIFEST_NAME).read_text())
    written = sorted(r["file"] for r in json.loads((export / "export.json").read_text())["rows"] if r["written"])
    assert sorted(e["file"] for e in manifest["files"]) == written
    assert len(verify(export)) == len(written)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(export))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        got = fetch(url, tmp_path / "device", ["int8-static"])
        assert sorted(p.name for p in got) == ["model-int8-static.onnx", "model-int8-static.ort"]
        assert main(["fetch", url, str(tmp_path / "device2"), "--formats", "fp32"]) == 0
        assert "verified" in capsys.readouterr().out
    finally:
        server.shutdown()
        server.server_close()
    damaged = tmp_path / "device" / "model-int8-static.onnx"
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    assert main(["verify", str(tmp_path / "device")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not match its checksum" in err
