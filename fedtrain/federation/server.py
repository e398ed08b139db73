"""The ServerApp's main: run the plan of phases and keep the run folder up to date.

After every round the metrics line, the latest checkpoint (and the best one: by central
validation accuracy, or the latest without a validation split) are written, so a crash loses
at most the round in flight and ``--resume`` continues from there. Summary, plots and report are written however the run
ends (completed, stopped early, or failed).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid

from fedtrain.aggregation import build_strategy
from fedtrain.aggregation.state import load_strategy_state
from fedtrain.config import RunConfig, dp_default_changes, format_dp_default_changes
from fedtrain.data import FederatedData
from fedtrain.errors import CheckpointError, FedtrainError
from fedtrain.federation.context import config_from_run_config, federated_data
from fedtrain.federation.phases import Phase, PhaseResult, RoundOutcome, build_plan
from fedtrain.federation.progress import RoundProgress
from fedtrain.logging import get_logger, quiet_flower
from fedtrain.models import build_model
from fedtrain.pretrain import AUX_PREFIX
from fedtrain.privacy.ledger import PrivacyLedger
from fedtrain.privacy.preflight import check_privacy_plan, warn_weak_user_dp
from fedtrain.privacy.unaccounted import label_counts_allowed
from fedtrain.privacy.user_level import wrap_user_dp
from fedtrain.results import RunFolder, plot_curves, plot_filters, plot_label_distribution, write_report
from fedtrain.results.report import SELECTED_BY_LAST_ROUND, SELECTED_BY_VALIDATION
from fedtrain.results.trends import LossWatch
from fedtrain.train import evaluate

__all__ = ["RUN_DIR_STATE_KEY", "run_server"]

RUN_DIR_STATE_KEY = "fedtrain"
log = get_logger()


class _Tracker:
    """Central evaluation, model selection, early stopping, metrics and checkpoints, one round at a time.

    The test split never chooses a model: with a validation split the best round is the one with
    the highest validation accuracy; without one (``val-fraction = 0``) it is the latest supervised
    round and early stopping is off.
    """

    def __init__(self, cfg: RunConfig, folder: RunFolder, data: FederatedData, state: dict[str, Any]) -> None:
        self.cfg, self.folder, self.data = cfg, folder, data
        self.state = state  # resumable: best, patience counter, phase position, wall time, privacy, warnings
        self.privacy = PrivacyLedger(cfg, state.setdefault("privacy", {}))
        self.model = build_model(cfg.model, data.input_shape, len(data.classes))
        self.progress: RoundProgress | None = None
        self.last: dict[str, Any] = {}
        # Without its own split, FederatedData.val is the test split: never evaluate (select) on it.
        self.has_val = _has_validation(cfg)
        state.setdefault("warnings", [])
        state.setdefault("loss_watch", {})
        if not self.has_val and cfg.strategy.early_stopping_patience:
            self.warn("early stopping is off: it needs a validation split (val-fraction > 0)")

    def warn(self, message: str) -> None:
        """Log ``message`` as a warning and keep it for summary.json (once per run)."""
        if message not in self.state["warnings"]:
            log.warning("%s", message)
            self.state["warnings"].append(message)

    def _watch_loss(self, outcome: RoundOutcome, record: dict[str, Any]) -> None:
        """Warn when the phase's loss keeps rising or is not finite.

        The clients' training loss when they report it; under DP they keep it to themselves, so the
        server watches its own central loss instead (validation, else test: a warning selects nothing).
        """
        watch = self.state["loss_watch"]
        if watch.get("phase") != outcome.phase:  # a new phase: its loss is on a new scale
            watch.clear()
            watch["phase"] = outcome.phase
        quantity, loss = "training loss", outcome.train_loss
        if loss is None:
            name = "recon_error" if not outcome.supervised else "val_loss" if self.has_val else "test_loss"
            quantity, loss = f"central {name.replace('_', ' ')}", record.get(name)
        alert = LossWatch(watch.setdefault("state", {}), outcome.phase).observe(outcome.phase_round, loss, quantity)
        if alert is not None:
            self.warn(alert.message())

    def on_round(self, outcome: RoundOutcome, phase_index: int) -> str | None:
        """Evaluate, log, checkpoint; return a reason to stop early (supervised phases only)."""
        weights = outcome.arrays.to_torch_state_dict()
        self.model.load_state_dict({k: v for k, v in weights.items() if not k.startswith(AUX_PREFIX)})
        test = evaluate(self.model, self.data.test)
        val = evaluate(self.model, self.data.val) if self.has_val else None
        record = {
            "phase": outcome.phase,
            "round": outcome.phase_round,
            "global_round": outcome.global_round,
            "lr": outcome.lr,
            "train_loss": outcome.train_loss,
            "test_loss": test.loss,
            "test_accuracy": test.accuracy,
            "val_loss": val.loss if val else None,
            "val_accuracy": val.accuracy if val else None,
            "client_eval_loss": outcome.client_eval_loss,
            "client_eval_accuracy": outcome.client_eval_accuracy,
            "clients_trained": outcome.clients_trained,
            "clients_evaluated": outcome.clients_evaluated,
            "failures": len(outcome.failures),
            "seconds": round(outcome.seconds, 4),
            **outcome.extra,
        }
        self.privacy.sync_user_releases()  # histories arrived before aggregation (Phase.run's on_spent)
        record.update(self.privacy.record(outcome.declined))
        self.folder.append_metrics(record)
        self.last = record
        s = self.state
        if outcome.supervised:
            self._select(outcome, test.accuracy, val.accuracy if val else None)
        s["phase_index"], s["phase_round"], s["global_round"] = phase_index, outcome.phase_round, outcome.global_round
        s["records"] = s.get("records", 0) + 1
        s["strategy"] = outcome.strategy_state
        val_text = f"{val.accuracy:.4f}" if val else "- (no validation split)"
        detail = (
            f"test acc {test.accuracy:.4f} loss {test.loss:.4f} | val acc {val_text}"
            if outcome.supervised
            else f"layer {record.get('layer')} reconstruction error {record.get('recon_error', float('nan')):.4f}"
        )
        log.info(
            "[%s %d/%d] train loss %.4f | %s | %d clients | %.2fs", outcome.phase, outcome.phase_round,
            outcome.phase_rounds, outcome.train_loss or float("nan"), detail, outcome.clients_trained, outcome.seconds,
        )  # fmt: skip
        if self.cfg.privacy.dp_level != "none":
            log.info("Privacy spent: %s", self.privacy.log_line())
        self._watch_loss(outcome, record)  # before the checkpoint, so a resumed run keeps the episode
        self.folder.save_checkpoint(self.checkpoint(outcome.arrays), best=s["best"]["round"] == outcome.global_round)
        if self.progress:
            self.progress.advance(test.accuracy, val.accuracy if val else None, record.get("epsilon_max"))
        patience = self.cfg.strategy.early_stopping_patience
        if outcome.supervised and self.has_val and patience and s["bad_rounds"] >= patience:
            min_delta = self.cfg.strategy.early_stopping_min_delta
            return f"early stopping: no validation gain above {min_delta} for {patience} rounds"
        return None

    def _select(self, outcome: RoundOutcome, accuracy: float, val_accuracy: float | None) -> None:
        """Update the best round (by validation, else the latest) and the early-stopping counter."""
        s = self.state
        best = {"round": outcome.global_round, "accuracy": accuracy, "val_accuracy": val_accuracy,
                "phase": outcome.phase}  # fmt: skip
        if val_accuracy is None:
            s["best"] = best
            return
        improved = val_accuracy > s["best_val"] + self.cfg.strategy.early_stopping_min_delta
        if val_accuracy > s["best_val"]:
            s["best"], s["best_val"] = best, val_accuracy
        s["bad_rounds"] = 0 if improved else s["bad_rounds"] + 1

    def checkpoint(self, arrays: ArrayRecord) -> dict[str, Any]:
        return {
            "arrays": arrays.to_torch_state_dict(),
            "normalizer": self.data.normalizer.state_dict(),
            "classes": list(self.data.classes),
            "input_shape": list(self.data.input_shape),
            "state": dict(self.state),
            "random_state": random.getstate(),
            "numpy_random_state": _numpy_state(self.cfg),
        }


def _initial_state() -> dict[str, Any]:
    return {
        "best": {"round": 0, "accuracy": 0.0, "val_accuracy": 0.0, "phase": ""},
        "best_val": -1.0,
        "bad_rounds": 0,
        "phase_index": 0,
        "phase_round": 0,
        "global_round": 0,
        "phases": [],
        "wall_seconds": 0.0,
        "records": 0,
    }


def _open_folder(cfg: RunConfig) -> tuple[RunFolder, dict[str, Any], ArrayRecord | None]:
    """A new run folder, or the resumed one with its saved state and weights."""
    if not cfg.output.resume_dir:
        folder = RunFolder.create(cfg.output.out_dir, cfg.output.run_name)
        return folder, _initial_state(), None
    folder = RunFolder.open(cfg.output.resume_dir)
    ckpt = folder.load_checkpoint("latest")
    try:
        state, arrays = dict(ckpt["state"]), ArrayRecord(ckpt["arrays"])
        random.setstate(_as_random_state(ckpt["random_state"]))
        _restore_numpy_state(ckpt, cfg)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint in {str(folder.path)!r} lacks or has a bad {err}; it cannot be resumed"
        ) from None
    folder.truncate_metrics(state["records"])
    log.info("Resuming %s after global round %d", folder.path, state["global_round"])
    return folder, state, arrays


def _has_validation(cfg: RunConfig) -> bool:
    """Whether the server holds its own validation split (else nothing is selected)."""
    return cfg.data.val_fraction > 0


def _seed_numpy(cfg: RunConfig) -> None:
    """Seed numpy's global generator from ``seed``, or, with ``dp-noise-seed=os``, its whole state from the OS."""
    if cfg.privacy.dp_noise_seed == "os":
        np.random.seed(np.random.SeedSequence().generate_state(624))
    else:
        np.random.seed(cfg.runtime.seed)


def _numpy_state(cfg: RunConfig) -> list | None:
    """The global numpy RNG state as plain values (checkpoints load with ``weights_only``).

    Not with ``dp-noise-seed=os``: the state would let anyone holding a checkpoint (``best.pt`` is made to be
    shared) regenerate the server's later noise; a resumed run draws fresh entropy instead.
    """
    if cfg.privacy.dp_noise_seed == "os":
        return None
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def _restore_numpy_state(ckpt: dict[str, Any], cfg: RunConfig) -> None:
    """Continue numpy's stream: Flower's DP wrappers draw their noise from it.

    Reseeding on resume would add the very noise of the first rounds again, and anyone holding two global
    models could cancel it. A checkpoint without the state cannot be resumed under user-level DP.
    """
    raw = ckpt.get("numpy_random_state")
    if cfg.privacy.dp_noise_seed == "os":
        return  # seeded from fresh OS entropy in run_server: no release repeats earlier noise
    if raw is None:
        if cfg.user_dp:
            raise KeyError("numpy_random_state (user-level DP noise would repeat the first rounds' noise)")
        return
    name, keys, pos, has_gauss, cached = raw
    np.random.set_state((str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))


def _as_random_state(raw: Any) -> tuple:
    version, internal, gauss = raw
    return (int(version), tuple(int(v) for v in internal), gauss)


def _summary(
    cfg: RunConfig, state: dict[str, Any], last: dict[str, Any], status: str, reason: str, privacy: PrivacyLedger
) -> dict[str, Any]:
    has_val = _has_validation(cfg)
    best_val = state["best"].get("val_accuracy") if has_val else None
    summary: dict[str, Any] = {
        "status": status,
        "rounds": int(state["global_round"]),
        "num_clients": cfg.partition.num_clients,
        "final": {"accuracy": last.get("test_accuracy", float("nan")), "loss": last.get("test_loss", float("nan"))},
        "best": {
            "round": int(state["best"]["round"]),
            "accuracy": float(state["best"]["accuracy"]),
            "val_accuracy": None if best_val is None else float(best_val),
            # "last round": the test split is the only held-out data, and it must not choose the model
            "selected_by": SELECTED_BY_VALIDATION if has_val else SELECTED_BY_LAST_ROUND,
        },
        "warnings": list(state.get("warnings", [])),
        "wall_seconds": round(state["wall_seconds"], 3),
        "phases": state["phases"],
        "config": cfg.to_flat(),
        "privacy": privacy.summary(),
    }
    if reason:
        summary["reason"] = reason
    return summary


def _write_outputs(folder: RunFolder, cfg: RunConfig, data: FederatedData, summary: dict[str, Any]) -> None:
    folder.write_json("summary.json", summary)
    if not cfg.output.report:
        return
    images = plot_curves(folder.read_metrics(), folder.path)
    if label_counts_allowed(cfg):  # each client's label counts are private: under DP only when opted in
        images.append(plot_label_distribution(data.label_counts(), data.classes, folder.path))
    if (folder.path / "filters.png").is_file():
        images.append(folder.path / "filters.png")
    write_report(folder.path / "report.html", summary, images)


def _write_privacy(folder: RunFolder, cfg: RunConfig, ledger: PrivacyLedger) -> None:
    """``privacy.json``: every client's DP history, so anyone can recompute each epsilon."""
    if cfg.privacy.dp_level != "none":
        folder.write_json("privacy.json", ledger.document())


def run_server(grid: Grid, context: Context) -> Path:
    """Run the whole plan on ``grid``; return the run folder (also left in ``context.state``)."""
    t_start = time.perf_counter()
    cfg = config_from_run_config(context.run_config)
    changes = dp_default_changes(cfg)
    if changes and not cfg.output.resume_dir:
        log.info("%s", format_dp_default_changes(changes))
    torch.set_num_threads(cfg.runtime.torch_threads)
    random.seed(cfg.runtime.seed)  # Flower's strategies sample clients with `random`
    _seed_numpy(cfg)  # Flower's DP wrappers draw their noise from numpy
    data = federated_data(cfg)  # bad data, a bad federation size or DP plan fail before any folder exists
    _check_nodes(grid, cfg)
    check_privacy_plan(cfg, data)
    initial = build_model(cfg.model, data.input_shape, len(data.classes), seed=cfg.runtime.seed)
    folder, state, arrays = _open_folder(cfg)
    context.state[RUN_DIR_STATE_KEY] = ConfigRecord({"run-dir": str(folder.path.resolve())})
    folder.write_config(cfg)
    if arrays is None:
        arrays = ArrayRecord(initial.state_dict())
    tracker = _Tracker(cfg, folder, data, state)
    weak = warn_weak_user_dp(cfg, sum(p.numel() for p in initial.parameters()))
    if weak:
        tracker.warn(weak)
    user_accountant = tracker.privacy.user_accountant

    def make_strategy(c: RunConfig):
        strategy = build_strategy(c)
        if user_accountant is None:
            return strategy
        return wrap_user_dp(strategy, c, user_accountant, tracker.privacy.state)

    plan = build_plan(cfg, make_strategy)
    # Sent every round: a client may lose its Context.state at any time (resume, a restarted SuperNode). One
    # config goes to all, so each client also sees the others' (public) DP parameters.
    restore = tracker.privacy.restore_config if cfg.sample_dp else None
    wall_before = state["wall_seconds"]
    log.info("fedtrain run %s: %s", folder.path, "; ".join(p.summary() for p in plan))
    try:
        with (
            quiet_flower(cfg.output.progress),
            RoundProgress(sum(p.num_rounds for p in plan), state["global_round"], enabled=cfg.output.progress) as bar,
        ):
            tracker.progress = bar
            status, reason = _run_phases(plan, grid, arrays, tracker, restore)
    except BaseException as err:
        state["wall_seconds"] = wall_before + time.perf_counter() - t_start
        msg = str(err) if isinstance(err, FedtrainError) else f"{type(err).__name__}: {err}"
        _persist_privacy(folder, tracker.privacy.state)
        _write_privacy(folder, cfg, tracker.privacy)
        _write_outputs(folder, cfg, data, _summary(cfg, state, tracker.last, "failed", msg, tracker.privacy))
        raise
    state["wall_seconds"] = wall_before + time.perf_counter() - t_start
    summary = _summary(cfg, state, tracker.last or _last_record(folder), status, reason, tracker.privacy)
    _write_privacy(folder, cfg, tracker.privacy)
    _write_outputs(folder, cfg, data, summary)
    log.info("Run %s %s: final test accuracy %.4f", folder.path.name, status, summary["final"]["accuracy"])
    return folder.path


def _run_phases(
    plan: list[Phase], grid: Grid, arrays: ArrayRecord, tracker: _Tracker, restore: Callable[[], dict] | None
) -> tuple[str, str]:
    """Run the plan from the tracker's saved position; return the run's status and reason."""
    state, data, folder = tracker.state, tracker.data, tracker.folder
    first_global = 1 + sum(p.num_rounds for p in plan[: state["phase_index"]])
    for index in range(state["phase_index"], len(plan)):
        phase = plan[index]
        resume_round = state["phase_round"] + 1 if index == state["phase_index"] else 1
        if resume_round > 1 and state.get("strategy"):
            load_strategy_state(phase.strategy, state["strategy"])  # FedAdam's moments, FedAvgM's momentum
        if resume_round > phase.num_rounds:  # this phase finished just before the run was cut
            arrays = phase.finish(arrays)  # e.g. drop the decoder its checkpoint still carries
            state["phases"].append(
                {"name": phase.label, "rounds": phase.num_rounds, "status": "completed", "reason": ""}
            )
            first_global += phase.num_rounds
            continue
        result: PhaseResult = phase.run(
            grid,
            arrays,
            first_global_round=first_global,
            start_round=resume_round,
            on_round=lambda o, i=index: tracker.on_round(o, i),
            extra_config=restore,
            on_spent=tracker.privacy.update,
        )
        arrays = result.arrays
        if result.status != "completed":  # the round that ended the phase may have spent budget
            _persist_privacy(folder, tracker.privacy.state)
        if result.name == "pretrain-1":
            _draw_filters(arrays, data, folder)
        state["phases"].append({"name": result.name, "rounds": result.rounds, "status": result.status,
                                "reason": result.reason})  # fmt: skip
        state["phase_index"], state["phase_round"] = index + 1, 0
        first_global += phase.num_rounds
        if result.status != "completed":
            return result.status, result.reason
    return "completed", ""


def _persist_privacy(folder: RunFolder, privacy_state: dict[str, Any]) -> None:
    """Put the ledger's latest state into the latest checkpoint, keeping its position in the plan."""
    if not folder.latest_checkpoint.is_file():
        return
    ckpt = folder.load_checkpoint("latest")
    ckpt["state"] = {**ckpt["state"], "privacy": privacy_state}
    ckpt.pop("format", None)
    folder.save_checkpoint(ckpt)


def _draw_filters(arrays: ArrayRecord, data: FederatedData, folder: RunFolder) -> None:
    """The first layer's learned filters as images, when inputs are one-channel images."""
    shape = data.input_shape
    weight = arrays.to_torch_state_dict().get("hidden.0.linear.weight")
    if weight is not None and len(shape) == 3 and shape[0] == 1:
        plot_filters(weight.numpy(), shape[1:], folder.path)


def _last_record(folder: RunFolder) -> dict[str, Any]:
    records = folder.read_metrics()
    return records[-1] if records else {}


def _check_nodes(grid: Grid, cfg: RunConfig) -> None:
    """Fail fast when the federation's size differs from the config's."""
    nodes = len(list(grid.get_node_ids()))
    # Fewer nodes may still be connecting (deployment); more can never match the partitions.
    if nodes > cfg.partition.num_clients:
        raise FedtrainError(
            f"the federation has {nodes} SuperNodes but num-clients={cfg.partition.num_clients}; pass "
            f'--federation-config "num-supernodes={cfg.partition.num_clients}" to flwr run or set num-clients={nodes}'
        )
