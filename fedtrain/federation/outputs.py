"""What a run leaves in its folder however it ends: summary.json, privacy.json, plots and report.html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedtrain.config import RunConfig
from fedtrain.export import EXPORT_DIR
from fedtrain.federation.run_state import RunState
from fedtrain.privacy.ledger import PrivacyLedger
from fedtrain.privacy.unaccounted import label_counts_allowed
from fedtrain.results import RunFolder, plot_curves, plot_export, plot_label_distribution, write_report
from fedtrain.results.provenance import provenance
from fedtrain.results.report import SELECTED_BY_LAST_ROUND, SELECTED_BY_VALIDATION

__all__ = ["participants", "refresh_outputs", "secagg_summary", "summary", "write_outputs", "write_privacy"]


def _nan_if_none(value: Any) -> float:
    return float("nan") if value is None else float(value)


def summary(
    cfg: RunConfig,
    state: RunState,
    last: dict[str, Any],
    status: str,
    reason: str,
    privacy: PrivacyLedger,
    *,
    has_val: bool,
) -> dict[str, Any]:
    """summary.json: how the run ended, its final and selected rounds, warnings, config and privacy spent."""
    best_val = state.best.val_accuracy if has_val else None
    payload: dict[str, Any] = {
        "status": status,
        "rounds": int(state.global_round),
        "num_clients": cfg.partition.num_clients,
        "final": {"accuracy": _nan_if_none(last.get("test_accuracy")), "loss": _nan_if_none(last.get("test_loss"))},
        "best": {
            "round": int(state.best.round),
            "accuracy": _nan_if_none(state.best.accuracy),
            "val_accuracy": None if best_val is None else float(best_val),
            # "last round": the test split is the only held-out data, and it must not choose the model
            "selected_by": SELECTED_BY_VALIDATION if has_val else SELECTED_BY_LAST_ROUND,
        },
        "warnings": list(state.warnings),
        "wall_seconds": round(state.wall_seconds, 3),
        "phases": [vars(s) for s in state.stages],
        "config": cfg.to_flat(),
        "privacy": privacy.summary(),
        "provenance": provenance(),
    }
    if reason:
        payload["reason"] = reason
    return payload


def secagg_summary(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The SecAgg+ figures of a run (None without SecAgg+): shares, threshold, clipping, retried and halted rounds."""
    rounds = [r for r in records if "secagg_attempts" in r]
    if not rounds:
        return None
    last = rounds[-1]
    return {
        "shares": last.get("secagg_shares"),
        "threshold": last.get("secagg_threshold"),
        "clipping_range": last.get("secagg_clipping_range"),
        "clipped": sum(int(r.get("secagg_clipped", 0)) for r in rounds),
        "max_clipped_fraction": max(float(r.get("secagg_clipped_fraction", 0.0)) for r in rounds),
        "retried_rounds": sum(int(r["secagg_attempts"]) > 1 for r in rounds),
        "halted_rounds": [
            {"phase": r["phase"], "round": r["round"], "stages": r["secagg_halted"]}
            for r in rounds
            if r.get("secagg_halted")
        ],
    }


def participants(records: list[dict[str, Any]]) -> dict[str, int] | None:
    """Rounds each partition (a deployment's device index) took part in, by the aggregated updates."""
    counts: dict[int, int] = {}
    seen = False
    for r in records:
        if "trained_partitions" in r:
            seen = True
            for pid in r["trained_partitions"]:
                counts[int(pid)] = counts.get(int(pid), 0) + 1
    return {str(k): counts[k] for k in sorted(counts)} if seen else None


def pretraining_summary(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pretraining stages' share of the run: rounds, layers, last reconstruction error, budget spent."""
    pre = [r for r in records if str(r.get("phase", "")).startswith("pretrain")]
    if not pre:
        return None
    last = {int(r["layer"]): r.get("recon_error") for r in pre if "layer" in r}
    out: dict[str, Any] = {"rounds": len(pre), "layers": len(last), "recon_error_last": last or None}
    if pre[-1].get("epsilon_max") is not None:  # sample-level DP: the accountant after the last pretraining round
        out["epsilon_after"] = float(pre[-1]["epsilon_max"])
        out["steps_after"] = int(pre[-1].get("steps_max") or 0)
        ends = [r for r in records if r.get("epsilon_max") is not None]
        out["steps_total"] = int(ends[-1].get("steps_max") or 0)
    return out


def write_outputs(
    folder: RunFolder,
    cfg: RunConfig,
    payload: dict[str, Any],
    label_counts: np.ndarray | None,
    classes: tuple[str, ...],
) -> None:
    """summary.json, then (unless ``report=false``) the plots and report.html."""
    records = folder.read_metrics()
    secagg = secagg_summary(records)
    if secagg is not None:
        payload["secure_aggregation"] = secagg
    took_part = participants(records)
    if took_part is not None:
        payload["participants"] = took_part
    pretraining = pretraining_summary(records)
    if pretraining is not None:
        payload["pretraining"] = pretraining
    _attach_export(folder, payload)
    folder.write_json("summary.json", payload)
    if not cfg.output.report:
        return
    # Each client's label counts are private: under DP only when opted in; unknown without the clients' data.
    labels = None
    if label_counts is not None and label_counts_allowed(cfg):
        labels = plot_label_distribution(label_counts, classes, folder.path)
    _draw_report(folder, payload, records, labels)


def _draw_report(
    folder: RunFolder, payload: dict[str, Any], records: list[dict[str, Any]], labels: Path | None
) -> None:
    """The plots (``labels``: the label-distribution plot, if any) and report.html for ``payload``."""
    images = plot_curves(records, folder.path)
    if labels is not None:
        images.append(labels)
    filters = folder.path / "filters.png"  # drawn by the pretraining stages
    if filters.is_file():
        images.append(filters)
    if payload.get("export"):
        images.append(plot_export(payload["export"]["rows"], folder.path))
    write_report(folder.path / "report.html", payload, images)


def _attach_export(folder: RunFolder, payload: dict[str, Any]) -> None:
    """``export/export.json`` (written by the export stage or ``fedtrain export``) as the summary's export section."""
    path = folder.path / EXPORT_DIR / "export.json"
    if path.is_file():
        payload["export"] = json.loads(path.read_text(encoding="utf-8"))


def refresh_outputs(folder: RunFolder, cfg: RunConfig) -> None:
    """After ``fedtrain export``: the summary gets the export section, the report is drawn again."""
    payload = json.loads((folder.path / "summary.json").read_text(encoding="utf-8"))
    _attach_export(folder, payload)
    folder.write_json("summary.json", payload)
    if not cfg.output.report:
        return
    labels = folder.path / "label_distribution.png"  # drawn by the run only where its label counts were allowed
    _draw_report(folder, payload, folder.read_metrics(), labels if labels.is_file() else None)


def write_privacy(folder: RunFolder, cfg: RunConfig, ledger: PrivacyLedger) -> None:
    """``privacy.json``: every client's DP history, so anyone can recompute each epsilon."""
    if cfg.privacy.dp_level != "none":
        folder.write_json("privacy.json", ledger.document())
