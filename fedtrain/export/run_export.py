"""Export a run: from its folder (``fedtrain export RUN_DIR``) or from inside the plan (the ``export`` stage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fedtrain.config import ExportConfig, RunConfig, load_config
from fedtrain.data import ArrayDataset, Normalizer, server_data
from fedtrain.errors import CheckpointError
from fedtrain.export.exporter import ExportReport, ExportSubject, export_model
from fedtrain.models import build_model
from fedtrain.pretrain import AUX_PREFIX
from fedtrain.results import RunFolder

__all__ = ["EXPORT_DIR", "export_run", "raw_input_range", "subject_for_run"]

EXPORT_DIR = "export"


def raw_input_range(normalizer: Normalizer, max_value: float | None) -> list[float] | None:
    """The raw feature range the model was trained on: the format's nominal range, else what the normaliser maps."""
    if max_value:
        return [0.0, float(max_value)]
    shift, scale = np.asarray(normalizer.shift, np.float64), np.asarray(normalizer.scale, np.float64)
    if normalizer.clip is not None:
        return [float((shift - normalizer.clip * scale).min()), float((shift + normalizer.clip * scale).max())]
    if normalizer.method == "minmax":
        return [float(shift.min()), float((shift + scale).max())]
    return None


def subject_for_run(
    cfg: RunConfig,
    model: nn.Module,
    normalizer: Normalizer,
    classes: tuple[str, ...],
    input_shape: tuple[int, ...],
    *,
    test: ArrayDataset | None,
    val: ArrayDataset | None,
    run_id: str,
    rounds: int,
    checkpoint: str,
    privacy: dict[str, Any],
) -> ExportSubject:
    max_value = next((d.max_value for d in (test, val) if d is not None), None)
    return ExportSubject(
        model=model, normalizer=normalizer, classes=classes, input_shape=input_shape,
        input_range=raw_input_range(normalizer, max_value or cfg.data.input_max or None),
        test=test, val=None if val is test else val, run_id=run_id, plan=cfg.phases, rounds=rounds,
        checkpoint=checkpoint, privacy=privacy, secure_aggregation=cfg.secagg.secure_aggregation or
        cfg.strategy.round_exchange == "secaggplus", seed=cfg.runtime.seed,
    )  # fmt: skip


def export_run(run_dir: str | Path, settings: ExportConfig | None = None) -> tuple[Path, ExportReport]:
    """Export a finished (or cut) run from its folder into ``<run>/export/``.

    ``settings`` default to the run's own export keys. The test and validation splits are rebuilt from the
    run's config, as the server held them.

    Raises
    ------
    CheckpointError
        The folder, its config or the chosen checkpoint is missing or corrupt.
    ExportError
        The model cannot be exported, calibrated or validated.
    """
    folder = RunFolder.open(run_dir)
    cfg = load_config(file=folder.path / "config.toml")
    settings = settings or cfg.export
    ckpt = folder.load_checkpoint(settings.export_checkpoint)
    try:
        classes, input_shape = tuple(ckpt["classes"]), tuple(int(d) for d in ckpt["input_shape"])
        norm = ckpt["normalizer"]
        normalizer = Normalizer(norm["method"], np.asarray(norm["shift"], np.float32),
                                np.asarray(norm["scale"], np.float32), norm["clip"])  # fmt: skip
        weights = {k: v for k, v in ckpt["arrays"].items() if not k.startswith(AUX_PREFIX)}  # no pretraining decoders
        rounds = int(ckpt["state"]["global_round"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint of {str(folder.path)!r} lacks or has a bad {err}; it cannot be exported"
        ) from None
    model = build_model(cfg.model, input_shape, len(classes))
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        # torch's first line says only "Error(s) in loading state_dict"; the next ones name the tensors
        lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()]
        detail = lines[0] if lines else str(err).splitlines()[0]
        raise CheckpointError(
            f"the checkpoint in {str(folder.path)!r} does not fit the model its config.toml builds: {detail}; "
            "export the run with the config it was trained with (model, hidden-sizes, cnn-channels unchanged)"
        ) from None
    data = server_data(cfg)
    summary_path = folder.path / "summary.json"
    privacy = json.loads(summary_path.read_text())["privacy"] if summary_path.is_file() else {"level": "unknown"}
    subject = subject_for_run(cfg, model, normalizer, classes, input_shape, test=data.test,
                              val=data.val if cfg.data.val_fraction > 0 else None, run_id=folder.path.name,
                              rounds=rounds, checkpoint=settings.export_checkpoint, privacy=privacy)  # fmt: skip
    out = folder.path / EXPORT_DIR
    return out, export_model(subject, settings, out)
