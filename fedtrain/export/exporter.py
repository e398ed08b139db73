"""Export one model in every requested format, validate each file, and write ``export/`` and ``export.json``.

Each file is validated before it is kept: the full ONNX checker, logits against torch on the test split,
argmax agreement, accuracy, single-sample latency (1 thread) and size. A compressed format whose accuracy
falls more than ``export-max-accuracy-drop`` points below fp32's is not written unless forced. The model card
(:mod:`fedtrain.edge.card`) is written last, with the test accuracy of that very file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from fedtrain import __version__
from fedtrain.config import ExportConfig
from fedtrain.config.export import parse_export_formats
from fedtrain.data import ArrayDataset, Normalizer
from fedtrain.edge.card import ModelCard, card_to_props
from fedtrain.edge.manifest import MANIFEST_NAME, manifest_for
from fedtrain.export.calibration import Calibration
from fedtrain.export.compress import to_fp16, to_int8_dynamic, to_int8_static, to_ort
from fedtrain.export.graph import INPUT_NAME, OUTPUT_NAME, compact, export_graph
from fedtrain.export.validate import Validation, torch_latency_us, validate
from fedtrain.logging import get_logger

__all__ = ["EXPORT_FORMAT", "ExportReport", "ExportSubject", "export_model"]

EXPORT_FORMAT = "fedtrain-export-v1"
log = get_logger()


@dataclass
class ExportSubject:
    """What is exported and what its card says about where it came from.

    ``test`` and ``val`` are the server's splits as it holds them (normalised); None where it has none.
    """

    model: nn.Module
    normalizer: Normalizer
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    input_range: list[float] | None
    test: ArrayDataset | None
    val: ArrayDataset | None
    run_id: str
    plan: list[str]
    rounds: int
    checkpoint: str
    privacy: dict[str, Any]  # summary.json's "privacy" section
    secure_aggregation: bool
    seed: int = 0


@dataclass
class ExportReport:
    """``export/export.json``: one row per file, the torch reference, the calibration, what was refused."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    torch_latency_us: float | None = None
    fp32_accuracy: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    checkpoint: str = ""
    rounds: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"format": EXPORT_FORMAT, **dataclasses.asdict(self)}


def privacy_claim(privacy: dict[str, Any]) -> dict[str, Any]:
    """The card's DP guarantee from summary.json's privacy section (whole-run ε: a bound for any round's weights)."""
    level = privacy.get("level", "none")
    claim: dict[str, Any] = {"level": level}
    if "sample" in privacy:
        s = privacy["sample"]
        claim["sample"] = {"epsilon": s.get("epsilon_max"), "delta": s.get("delta"), "accountant": s.get("accountant"),
                           "unit": "one training record, worst client"}  # fmt: skip
    if "user" in privacy:
        u = privacy["user"]
        claim["user"] = {"epsilon": u.get("epsilon"), "delta": u.get("delta"), "accountant": u.get("accountant"),
                         "unit": "one client's whole data"}  # fmt: skip
    single = claim.get("sample") or claim.get("user")
    if level in ("sample", "user") and single:
        claim.update({k: single[k] for k in ("epsilon", "delta", "accountant")})
    if privacy.get("outside_budget"):
        claim["outside_budget"] = list(privacy["outside_budget"])
    return claim


def _variant(fp32: onnx.ModelProto, name: str, calibration: Calibration) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The ``name`` variant of the fp32 graph and its card's quantisation entry."""
    if name == "fp32":
        return fp32, {"mode": "none"}
    if name == "fp16":
        return to_fp16(fp32), {"mode": "fp16 weights and activations, fp32 inputs, outputs and normalisation"}
    if name == "int8-dynamic":
        return to_int8_dynamic(fp32), {"mode": "int8 weights, activations quantised per call", "calibration": None}
    samples = calibration.samples()
    model, (low, high) = to_int8_static(fp32, samples)
    entry = {"mode": "int8 static QDQ (uint8 activations, int8 weights, MinMax)", "calibration": calibration.source,
             "samples": len(samples), "normalized_input_clip": [low, high]}  # fmt: skip
    return model, entry


def _card(subject: ExportSubject, variant: str, quantization: dict[str, Any], checked: Validation) -> ModelCard:
    return ModelCard(
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        input_shape=list(subject.input_shape),
        class_labels=list(subject.classes),
        variant=variant,
        input_range=subject.input_range,
        normalization={"method": subject.normalizer.method, "folded": True, "clip": subject.normalizer.clip},
        quantization=quantization,
        privacy=privacy_claim(subject.privacy),
        secure_aggregation=subject.secure_aggregation,
        test_accuracy=checked.accuracy,
        test_samples=0 if subject.test is None else len(subject.test.y),
        fedtrain_version=__version__,
        run_id=subject.run_id,
        plan=list(subject.plan),
        rounds=subject.rounds,
        checkpoint=subject.checkpoint,
    )


def _save(model: onnx.ModelProto, path: Path, card: ModelCard | None = None) -> None:
    if card is not None:
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, card_to_props(card))
    onnx.save(model, path)


def _drop_problem(name: str, checked: Validation, fp32: float | None, settings: ExportConfig) -> str:
    """Why ``name`` must not be written ('' when it may)."""
    if name == "fp32":
        return ""
    if fp32 is None or checked.accuracy is None:
        return (f"{name}: its accuracy cannot be checked (the server holds no test data); not written. Pass --force "
                "(export-force=true) to write it unchecked")  # fmt: skip
    drop = 100 * (fp32 - checked.accuracy)
    if drop <= settings.export_max_accuracy_drop:
        return ""
    return (f"{name}: test accuracy {checked.accuracy:.4f} is {drop:.2f} points below fp32's {fp32:.4f} (threshold "
            f"export-max-accuracy-drop={settings.export_max_accuracy_drop:g}); not written. Pass --force "
            "(export-force=true) to write it anyway, or raise the threshold")  # fmt: skip


def export_model(subject: ExportSubject, settings: ExportConfig, out_dir: Path) -> ExportReport:
    """Write every format of ``settings`` into ``out_dir``; return what was written, measured and refused.

    Raises
    ------
    ExportError
        The model cannot be exported, calibration data is missing or too small, or a file fails validation.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("model-*.onnx"), *out_dir.glob("model-*.ort"), out_dir / MANIFEST_NAME]:
        old.unlink(missing_ok=True)  # a re-export replaces the last one: no file the records do not describe
    model = subject.model.eval()
    raw_x = y = reference = None
    if subject.test is not None and len(subject.test.y):
        raw_x, y = subject.normalizer.invert(subject.test.x), subject.test.y
        with torch.no_grad():
            reference = model(torch.from_numpy(subject.test.x)).double().numpy()
    sample = raw_x[:1] if raw_x is not None else np.zeros((1, *subject.input_shape), dtype=np.float32)
    raw_val = None if subject.val is None else subject.normalizer.invert(subject.val.x)
    calibration = Calibration(subject, raw_val, settings.export_calibration, settings.export_calibration_samples)
    report = ExportReport(checkpoint=subject.checkpoint, rounds=subject.rounds)
    published: list[Path] = []
    cards: dict[str, dict[str, Any]] = {}
    if settings.export_latency_calls:
        normalized = torch.from_numpy(subject.test.x[:1] if subject.test is not None else sample)
        report.torch_latency_us = torch_latency_us(model, normalized.numpy(), settings.export_latency_calls)
    fp32 = export_graph(model, subject.input_shape, subject.normalizer)
    for name in parse_export_formats(settings.export_formats):
        variant, quantization = _variant(fp32, name, calibration)
        variant = compact(variant)
        path = out_dir / f"model-{name}.onnx"
        _save(variant, path)
        checked = validate(path, raw_x, y, reference, sample=sample, latency_calls=settings.export_latency_calls)
        if name == "fp32":
            report.fp32_accuracy = checked.accuracy
        if quantization.get("calibration"):
            report.calibration = {"source": calibration.source, **{k: v for k, v in quantization.items()
                                  if k in ("samples", "normalized_input_clip")}}  # fmt: skip
        problem = _drop_problem(name, checked, report.fp32_accuracy, settings)
        written = not problem or settings.export_force
        if problem:
            report.refused.append(problem if not written else problem.replace("not written", "written (forced)"))
            log.warning("export %s", report.refused[-1])
        if not written:
            path.unlink()
        else:
            card = _card(subject, name, quantization, checked)
            _save(variant, path, card)
            checked.bytes = path.stat().st_size
            published.append(path)
            cards[path.name] = cards[path.with_suffix(".ort").name] = dataclasses.asdict(card)
        report.rows.append(_row(name, path, checked, report.fp32_accuracy, written))
        if written and settings.export_ort:
            ort_path = to_ort(path)
            ort_checked = validate(ort_path, raw_x, y, reference, sample=sample,
                                   latency_calls=settings.export_latency_calls, check=False)  # fmt: skip
            report.rows.append(_row(f"{name} (.ort)", ort_path, ort_checked, report.fp32_accuracy, True))
            published.append(ort_path)
    manifest = manifest_for(out_dir, published, cards)  # what devices fetch and verify (fedtrain fetch)
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (out_dir / "export.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report


def _row(name: str, path: Path, v: Validation, fp32: float | None, written: bool) -> dict[str, Any]:
    drop = None if fp32 is None or v.accuracy is None else round(100 * (fp32 - v.accuracy), 4)
    return {"format": name, "file": path.name if written else None, "bytes": v.bytes, "accuracy": v.accuracy,
            "accuracy_drop_points": drop, "agreement": v.agreement, "max_abs_logit_diff": v.max_abs_logit_diff,
            "latency_us": v.latency_us, "written": written}  # fmt: skip
