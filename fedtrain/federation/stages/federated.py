"""Federated stages: a loop of rounds with a Flower strategy, carried by the run's round exchange."""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Strategy

from fedtrain import wire
from fedtrain.aggregation.averaging import STATE_KEY as AVERAGING_KEY
from fedtrain.aggregation.averaging import IterateAverager, make_averager
from fedtrain.aggregation.state import load_strategy_state, strategy_state
from fedtrain.federation.exchange import RoundRequest, TrainReplies
from fedtrain.federation.exchange.faults import non_finite_arrays
from fedtrain.federation.rounds import RoundOutcome
from fedtrain.federation.run_context import RunContext
from fedtrain.federation.stages.base import Stage, StageResult
from fedtrain.privacy.unaccounted import train_loss_shared

__all__ = ["FederatedStage"]


def _train_loss(reports: list[dict[str, Any]]) -> float | None:
    """Mean training loss of the clients that trained, weighted by their examples."""
    pairs = [(float(met[wire.TRAIN_LOSS]), float(met.get(wire.NUM_EXAMPLES, 1)))
             for met in reports if wire.TRAIN_LOSS in met]  # fmt: skip
    total = sum(w for _, w in pairs)
    return sum(loss * w for loss, w in pairs) / total if total > 0 else None


def _partitions(replies: TrainReplies) -> list[int]:
    """Partition ids (a deployment's device indices) whose updates this round aggregated: who took part."""
    return sorted(int(r[wire.PARTITION_ID]) for r in replies.trained if wire.PARTITION_ID in r)


def _get(record: MetricRecord | ConfigRecord | None, key: str) -> float | None:
    value = record.get(key) if record is not None else None
    return float(value) if isinstance(value, int | float) else None


class FederatedStage(Stage):
    """A federated loop of rounds; subclasses say how rounds are configured.

    Hooks let a stage add arrays it needs for its own rounds (``prepare``/``finish``) and keep arrays
    frozen bit for bit (``frozen_keys``). The round exchange (``ctx.exchange``) carries each round.
    """

    supervised: bool = True  # central accuracy, best checkpoint, early stopping and client evaluation
    _averager: IterateAverager | None = None  # server-averaging of this stage's iterates (set by execute)

    @property
    @abstractmethod
    def num_rounds(self) -> int:
        """Rounds this stage runs at most."""

    @abstractmethod
    def train_config(self, phase_round: int, global_round: int) -> ConfigRecord:
        """The ConfigRecord sent with every train message of a round."""

    def evaluate_config(self, phase_round: int, global_round: int) -> ConfigRecord:
        return ConfigRecord({wire.PHASE: self.name, wire.GLOBAL_ROUND: global_round})

    def prepare(self, ctx: RunContext, arrays: ArrayRecord) -> ArrayRecord:
        """Arrays at the start of the stage (e.g. add a decoder); must keep arrays it already has."""
        return arrays

    def finish(self, arrays: ArrayRecord) -> ArrayRecord:
        """Arrays handed to the next stage (e.g. drop the decoder)."""
        return arrays

    def frozen_keys(self, phase_round: int, arrays: ArrayRecord) -> set[str]:
        """Array names that must not change this round; restored exactly after aggregation."""
        return set()

    def central_metrics(self, ctx: RunContext, arrays: ArrayRecord) -> dict[str, Any]:
        """Stage-specific metrics of the new global arrays, computed at the server."""
        return {}

    def summary(self) -> str:
        return f"{self.label}: {self.num_rounds} rounds with {self.cfg.strategy.strategy}"

    def execute(self, ctx: RunContext, done_rounds: int) -> StageResult:
        """Run rounds ``done_rounds + 1 .. num_rounds``; the bookkeeper may stop the stage early."""
        strategy = ctx.make_strategy()
        # Server-side iterate averaging (supervised stages): rounds train from the iterate, the average is kept.
        self._averager = make_averager(self.cfg) if self.supervised else None
        saved = dict(ctx.state.strategy) if done_rounds else {}
        averaging = saved.pop(AVERAGING_KEY, None)
        if saved:
            load_strategy_state(strategy, saved)  # FedAdam's moments, FedAvgM's momentum
        if done_rounds >= self.num_rounds:  # finished just before the run was cut
            return StageResult(self.label, self.finish(ctx.arrays), self.num_rounds, "completed")
        arrays = self.prepare(ctx, ctx.arrays)
        kept = arrays  # what the stage hands on: the average when averaging, else the last iterate
        if self._averager is not None and averaging is not None:
            self._averager.load_state_dict(averaging)
            arrays = self._averager.iterate_record(arrays)  # the checkpoint holds the average; train from the iterate
        done = done_rounds
        for phase_round in range(done_rounds + 1, self.num_rounds + 1):
            global_round = ctx.round_offset + phase_round
            step = self._round(ctx, strategy, arrays, phase_round, global_round)
            if isinstance(step, StageResult):
                step.rounds, step.arrays = done, self.finish(kept)
                return step
            kept, done = step.arrays, phase_round
            arrays = self._averager.iterate_record(step.arrays) if self._averager is not None else step.arrays
            stop = ctx.bookkeeper.on_round(step, ctx.stage_index)
            if stop:  # early stopping ends this stage only; the plan goes on
                return StageResult(self.label, self.finish(kept), done, "stopped", stop, ends_run=False)
        return StageResult(self.label, self.finish(kept), done, "completed")

    def checkpoints_ending(self, result: StageResult) -> bool:
        return result.status != "completed"

    def _too_few(self, replies: TrainReplies) -> StageResult | None:
        """End the stage when too few clients trained: their budget is spent, or none did DP."""
        usable, min_clients = len(replies.trained), self.cfg.strategy.min_clients
        if replies.refused and not usable and not replies.declined:
            reason = (f"no client ran DP: all {len(replies.refused)} replies lacked DP evidence under "
                      f"dp-level={self.cfg.privacy.dp_level!r} ({replies.refused[0]})")  # fmt: skip
            return StageResult(self.label, ArrayRecord(), 0, "failed", reason)
        if replies.declined and usable < min_clients:
            reason = (
                f"privacy budget: {len(replies.declined)} of {replies.sent} clients would pass "
                f"dp-target-epsilon={self.cfg.privacy.dp_target_epsilon}, leaving {usable} "
                f"(< min-clients={min_clients})"
            )
            return StageResult(self.label, ArrayRecord(), 0, "stopped", reason)
        return None

    def _too_many_faults(self, replies: TrainReplies, phase_round: int) -> StageResult | None:
        """Fail the stage when client faults leave fewer usable updates than ``min-clients``."""
        usable, min_clients = len(replies.trained), min(self.cfg.strategy.min_clients, replies.sent)
        if "failures_by_kind" not in replies.metrics or usable >= max(min_clients, 1) or replies.declined:
            return None  # only exchanges that screen faults (SecAgg+ has its own policy)
        more = f" (+{len(replies.failures) - 1} more, see the log)" if len(replies.failures) > 1 else ""
        lost = f"{len(replies.failures)} of {replies.sent} clients failed, leaving {usable} usable updates"
        reason = (
            f"round {phase_round}: {lost} (< min-clients={self.cfg.strategy.min_clients}): {replies.failures[0]}{more}"
        )
        return StageResult(self.label, ArrayRecord(), 0, "failed", reason)

    def _round(
        self, ctx: RunContext, strategy: Strategy, arrays: ArrayRecord, phase_round: int, global_round: int
    ) -> RoundOutcome | StageResult:
        """One round: train, aggregate, evaluate on clients. A StageResult means the stage ends here."""
        t0 = time.perf_counter()
        train_cfg = self.train_config(phase_round, global_round)
        if self.cfg.user_dp and self.cfg.privacy.dp_user_clipping == "adaptive-client":
            train_cfg[wire.ADAPTIVE_FLAG] = 1  # every stage: Flower's adaptive wrapper needs each reply's norm bit
        train_cfg.update(ctx.data_config)
        train_cfg.update(ctx.extra_train_config())
        request = RoundRequest(strategy, ctx.grid, global_round, arrays, train_cfg, self.cfg.runtime.round_timeout)
        try:
            replies = ctx.exchange.train(request)
        except PrivacyBudgetExhausted as err:
            return StageResult(self.label, arrays, 0, "stopped", f"user-level privacy budget: {err}")
        ctx.privacy.update(replies.spenders)  # before aggregation: no ending loses the spend
        for warning in replies.warnings:
            ctx.warn(warning)
        stop = self._too_few(replies)
        if stop is not None:
            return stop
        if replies.stop:
            ctx.bookkeeper.record_halted(self.label, phase_round, global_round, replies.metrics,
                                         len(replies.failures), replies.stop)  # fmt: skip
            return StageResult(self.label, arrays, 0, "stopped", replies.stop)
        stop = self._too_many_faults(replies, phase_round)
        if stop is not None:
            return stop
        new_arrays = replies.aggregate()
        failures = list(replies.failures)
        if new_arrays is None:
            reason = f"round {phase_round}: no usable client update" + (f" ({failures[0]})" if failures else "")
            return StageResult(self.label, arrays, 0, "failed", reason)
        bad = non_finite_arrays(new_arrays)
        if bad:  # each update was finite, their aggregate overflowed: the global model must never hold NaN/inf
            reason = (f"round {phase_round}: the aggregated model is not finite ({sum(bad.values())} NaN/inf values "
                      f"in {', '.join(sorted(bad)[:3])}) from the updates of partitions {_partitions(replies)}; "
                      "lower learning-rate or set clip-grad-norm")  # fmt: skip
            return StageResult(self.label, arrays, 0, "failed", reason)
        for key in self.frozen_keys(phase_round, arrays):
            new_arrays[key] = arrays[key]  # exact: averaging equal floats may round, DP noise would move them
        saved_state = strategy_state(strategy)
        if self._averager is not None:
            new_arrays = self._averager.update(new_arrays, phase_round)  # evaluated, selected, checkpointed, exported
            saved_state[AVERAGING_KEY] = self._averager.state_dict()
        kinds: dict[str, int] = dict(replies.metrics.get("failures_by_kind", {}))
        eval_metrics, evaluated = None, 0
        if self.supervised:
            eval_cfg = self.evaluate_config(phase_round, global_round)
            eval_cfg.update(ctx.data_config)
            eval_request = RoundRequest(strategy, ctx.grid, global_round, new_arrays, eval_cfg, request.timeout)
            eval_metrics, evaluated, eval_failures = ctx.exchange.evaluate(eval_request)
            failures += eval_failures
            if eval_failures:
                kinds["evaluate"] = kinds.get("evaluate", 0) + len(eval_failures)
        shared = train_loss_shared(self.cfg)
        return RoundOutcome(
            phase=self.label,
            phase_round=phase_round,
            phase_rounds=self.num_rounds,
            global_round=global_round,
            arrays=new_arrays,
            lr=_get(train_cfg, wire.LR) or 0.0,
            train_loss=_train_loss(replies.trained) if shared else None,
            client_eval_loss=_get(eval_metrics, wire.EVAL_LOSS),
            client_eval_accuracy=_get(eval_metrics, wire.EVAL_ACCURACY),
            clients_trained=len(replies.trained),
            clients_evaluated=evaluated,
            failures=failures,
            seconds=time.perf_counter() - t0,
            declined=len(replies.declined),
            supervised=self.supervised,
            extra={
                **replies.metrics,
                "failures_by_kind": kinds,
                **self.central_metrics(ctx, new_arrays),
                "trained_partitions": _partitions(replies),
            },
            strategy_state=saved_state,
        )
