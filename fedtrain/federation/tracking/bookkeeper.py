"""After each round: central evaluation, selection, the metrics line, the log, the checkpoint, progress."""

from __future__ import annotations

from typing import Any

from fedtrain.config import RunConfig
from fedtrain.federation.exchange.faults import non_finite_arrays
from fedtrain.federation.progress import RoundProgress
from fedtrain.federation.rounds import RoundOutcome
from fedtrain.federation.run_state import RunState
from fedtrain.federation.tracking.alerts import LossMonitor, RunWarnings
from fedtrain.federation.tracking.checkpoints import Checkpointer
from fedtrain.federation.tracking.evaluation import CentralEvaluator, CentralScores
from fedtrain.federation.tracking.selection import ModelSelector
from fedtrain.logging import get_logger
from fedtrain.privacy.ledger import PrivacyLedger
from fedtrain.results import RunFolder

__all__ = ["RoundBookkeeper", "round_record"]

log = get_logger()


def round_record(outcome: RoundOutcome, scores: CentralScores) -> dict[str, Any]:
    """The metrics.jsonl line of a round (privacy fields are added by the ledger)."""
    test, val = scores.test, scores.val
    return {
        "phase": outcome.phase,
        "round": outcome.phase_round,
        "global_round": outcome.global_round,
        "lr": outcome.lr,
        "train_loss": outcome.train_loss,
        "test_loss": test.loss if test else None,
        "test_accuracy": test.accuracy if test else None,
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


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class RoundBookkeeper:
    """Runs every part that must see a finished round, in the order that keeps a crash harmless.

    The metrics line is written before the checkpoint, and the checkpoint holds the number of lines,
    so a resumed run truncates what the lost round may have written. Both are written by the
    :class:`Checkpointer`, in the background while the next round trains.
    """

    def __init__(
        self,
        cfg: RunConfig,
        folder: RunFolder,
        state: RunState,
        evaluator: CentralEvaluator,
        checkpointer: Checkpointer,
        privacy: PrivacyLedger,
        warnings: RunWarnings,
    ) -> None:
        self.cfg, self.folder, self.state = cfg, folder, state
        self.evaluator, self.checkpointer, self.privacy, self.warnings = evaluator, checkpointer, privacy, warnings
        self.selector = ModelSelector(cfg, state, has_val=evaluator.has_val)
        self.loss_monitor = LossMonitor(state, warnings, has_val=evaluator.has_val)
        self.progress: RoundProgress | None = None
        self.last: dict[str, Any] = {}  # the latest metrics line
        if not evaluator.has_val and cfg.strategy.early_stopping_patience:
            warnings.warn("early stopping is off: it needs a validation split (val-fraction > 0)")

    def on_round(self, outcome: RoundOutcome, stage_index: int) -> str | None:
        """Book a finished round; return a reason to stop the stage early (supervised stages only)."""
        scores = self.evaluator.score(outcome.arrays)
        record = round_record(outcome, scores)
        self.privacy.sync_user_releases()  # the stage gave the ledger this round's histories before aggregating
        record.update(self.privacy.record(outcome.declined))
        self.last = record
        s = self.state
        test_acc = scores.test.accuracy if scores.test else None
        val_acc = scores.val.accuracy if scores.val else None
        if outcome.supervised and not non_finite_arrays(outcome.arrays):  # a NaN model is never the best
            self.selector.observe(outcome.global_round, outcome.phase, test_acc, val_acc)
        s.stage_index, s.stage_round, s.global_round = stage_index, outcome.phase_round, outcome.global_round
        s.records += 1
        s.strategy = outcome.strategy_state
        self._log(outcome, record, scores)
        self.loss_monitor.observe(outcome, record)  # before the checkpoint, so a resumed run keeps the episode
        stop = self.selector.stop_reason() if outcome.supervised else None
        # The stage's last round is written before the stage returns: what comes next (export, the summary)
        # reads the folder. Other rounds are written while the next one trains.
        last = stop is not None or outcome.phase_round >= outcome.phase_rounds
        self.checkpointer.save_round(record, outcome.arrays, best=s.best.round == outcome.global_round, wait=last)
        if self.progress:
            self.progress.advance(test_acc, val_acc, record.get("epsilon_max"))
        return stop

    def record_halted(self, phase: str, phase_round: int, global_round: int, figures: dict[str, Any],
                      failures: int, reason: str) -> None:  # fmt: skip
        """A metrics line for a round that ended the run before aggregation (e.g. a halted SecAgg+ round).

        The run state is not advanced: a resume runs the round again, and truncates this line.
        """
        record = {"phase": phase, "round": phase_round, "global_round": global_round, "failures": failures,
                  "halted": reason, **figures}  # fmt: skip
        self.checkpointer.flush()  # after the rounds before it
        self.folder.append_metrics(record)

    def _log(self, outcome: RoundOutcome, record: dict[str, Any], scores: CentralScores) -> None:
        if not outcome.supervised:
            detail = f"layer {record.get('layer')} reconstruction error {_fmt(record.get('recon_error'))}"
        elif scores.test is None:
            detail = "no central evaluation (the server holds no test data)"
        else:
            val_text = _fmt(scores.val.accuracy) if scores.val else "- (no validation split)"
            detail = f"test acc {scores.test.accuracy:.4f} loss {scores.test.loss:.4f} | val acc {val_text}"
        log.info(
            "[%s %d/%d] train loss %s | %s | %d clients | %.2fs", outcome.phase, outcome.phase_round,
            outcome.phase_rounds, _fmt(outcome.train_loss), detail, outcome.clients_trained, outcome.seconds,
        )  # fmt: skip
        if self.cfg.privacy.dp_level != "none":
            log.info("Privacy spent: %s", self.privacy.log_line())
