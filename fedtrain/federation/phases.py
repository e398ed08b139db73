"""Phases of a run: a federated loop of rounds that hands global weights on to the next phase.

A :class:`Phase` says how to configure its rounds; the concrete :meth:`Phase.run` drives the
round loop over any Flower ``Grid`` (in-process, Simulation Engine, Deployment Engine) with a
Flower strategy doing sampling and aggregation. New phases (layer-wise ``pretrain``,
``export``) register in :data:`PHASES` and run through the same loop.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Strategy

from fedtrain.config import RunConfig
from fedtrain.federation import keys
from fedtrain.privacy.client_mods import ADAPTIVE_FLAG
from fedtrain.train import learning_rate

__all__ = ["PHASES", "FinetunePhase", "Phase", "PhaseResult", "RoundOutcome", "build_plan"]


@dataclass
class RoundOutcome:
    """What one federated round produced."""

    phase: str
    phase_round: int
    phase_rounds: int
    global_round: int
    arrays: ArrayRecord
    lr: float
    train_loss: float | None
    client_eval_loss: float | None
    client_eval_accuracy: float | None
    clients_trained: int
    clients_evaluated: int
    failures: list[str]
    seconds: float
    client_metrics: list[dict[str, Any]] = field(default_factory=list)  # one per train reply
    declined: int = 0  # clients that refused the round (privacy budget)


@dataclass
class PhaseResult:
    """How a phase ended; ``arrays`` are handed to the next phase."""

    name: str
    arrays: ArrayRecord
    rounds: int
    status: str  # "completed" | "stopped" | "failed"
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# Called after every round; returns a reason to stop the phase early, or None to go on.
RoundCallback = Callable[[RoundOutcome], str | None]


def _errors(replies: Iterable[Message]) -> list[str]:
    return [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies if m.has_error()]


def _metrics(reply: Message) -> dict[str, Any]:
    record = reply.content.get(keys.METRICS)
    return dict(record) if record is not None else {}


class Phase(ABC):
    """One phase of the plan."""

    name: str = ""

    def __init__(self, cfg: RunConfig, strategy: Strategy) -> None:
        self.cfg = cfg
        self.strategy = strategy

    @property
    @abstractmethod
    def num_rounds(self) -> int:
        """Rounds this phase runs at most."""

    @abstractmethod
    def train_config(self, phase_round: int, global_round: int) -> ConfigRecord:
        """The ConfigRecord sent with every train message of a round."""

    def evaluate_config(self, phase_round: int, global_round: int) -> ConfigRecord:
        return ConfigRecord({keys.PHASE: self.name, keys.GLOBAL_ROUND: global_round})

    def summary(self) -> str:
        return f"{self.name}: {self.num_rounds} rounds with {type(self.strategy).__name__}"

    def run(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        *,
        first_global_round: int,
        start_round: int = 1,
        on_round: RoundCallback | None = None,
        extra_config: Callable[[], dict[str, Any]] | None = None,
    ) -> PhaseResult:
        """Run rounds ``start_round..num_rounds``; ``on_round`` may stop the phase early.

        ``extra_config`` adds entries to every train config (e.g. privacy state to restore).
        Replies whose client declined the round (privacy budget) are left out of aggregation;
        when fewer than ``min-clients`` remain, the phase stops.
        """
        timeout = self.cfg.runtime.round_timeout
        done = start_round - 1
        for phase_round in range(start_round, self.num_rounds + 1):
            t0 = time.perf_counter()
            global_round = first_global_round + phase_round - 1
            train_cfg = self.train_config(phase_round, global_round)
            if extra_config:
                train_cfg.update(extra_config())
            try:
                messages = self.strategy.configure_train(global_round, arrays, train_cfg, grid)
            except PrivacyBudgetExhausted as err:
                return PhaseResult(self.name, arrays, done, "stopped", f"user-level privacy budget: {err}")
            replies = list(grid.send_and_receive(messages, timeout=timeout))
            failures = _errors(replies)
            answered = [m for m in replies if not m.has_error()]
            client_metrics = [_metrics(m) for m in answered]
            declined = [m for m, met in zip(answered, client_metrics, strict=True) if met.get(keys.DP_DECLINED)]
            if declined:
                replies = [m for m in replies if all(m is not d for d in declined)]
                usable = len(answered) - len(declined)
                if usable < self.cfg.strategy.min_clients:
                    reason = (
                        f"privacy budget: {len(declined)} of {len(answered)} clients would pass "
                        f"dp-target-epsilon={self.cfg.privacy.dp_target_epsilon}, leaving {usable} "
                        f"(< min-clients={self.cfg.strategy.min_clients})"
                    )
                    return PhaseResult(self.name, arrays, done, "stopped", reason)
            new_arrays, train_metrics = self.strategy.aggregate_train(global_round, replies)
            if new_arrays is None:
                reason = f"round {phase_round}: no usable client update" + (f" ({failures[0]})" if failures else "")
                return PhaseResult(self.name, arrays, done, "failed", reason)
            arrays = new_arrays
            eval_replies = list(
                grid.send_and_receive(
                    self.strategy.configure_evaluate(
                        global_round, arrays, self.evaluate_config(phase_round, global_round), grid
                    ),
                    timeout=timeout,
                )
            )
            failures += _errors(eval_replies)
            eval_metrics = self.strategy.aggregate_evaluate(global_round, eval_replies) if eval_replies else None
            done = phase_round
            outcome = RoundOutcome(
                phase=self.name,
                phase_round=phase_round,
                phase_rounds=self.num_rounds,
                global_round=global_round,
                arrays=arrays,
                lr=float(train_cfg.get(keys.LR, 0.0)),
                train_loss=_get(train_metrics, keys.TRAIN_LOSS),
                client_eval_loss=_get(eval_metrics, keys.EVAL_LOSS),
                client_eval_accuracy=_get(eval_metrics, keys.EVAL_ACCURACY),
                clients_trained=sum(not m.has_error() for m in replies),
                clients_evaluated=sum(not m.has_error() for m in eval_replies),
                failures=failures,
                seconds=time.perf_counter() - t0,
                client_metrics=client_metrics,
                declined=len(declined),
            )
            stop = on_round(outcome) if on_round else None
            if stop:
                return PhaseResult(self.name, arrays, done, "stopped", stop)
        return PhaseResult(self.name, arrays, done, "completed")


def _get(record: Any, key: str) -> float | None:
    return float(record[key]) if record is not None and key in record else None


class FinetunePhase(Phase):
    """Supervised training of the whole network, from pretrained or fresh weights."""

    name = "finetune"

    @property
    def num_rounds(self) -> int:
        return self.cfg.strategy.num_rounds

    def train_config(self, phase_round: int, global_round: int) -> ConfigRecord:
        lr = learning_rate(self.cfg.train, phase_round, self.num_rounds)
        config = ConfigRecord({keys.PHASE: self.name, keys.LR: lr, keys.GLOBAL_ROUND: global_round})
        if self.cfg.user_dp and self.cfg.privacy.dp_user_clipping == "adaptive-client":
            config[ADAPTIVE_FLAG] = 1
        return config


PHASES: dict[str, type[Phase]] = {"finetune": FinetunePhase}


def build_plan(cfg: RunConfig, make_strategy: Callable[[RunConfig], Strategy]) -> list[Phase]:
    """The phases named in ``plan``, each with its own strategy instance."""
    names = [p.strip() for p in cfg.strategy.plan.split(",") if p.strip()]
    return [PHASES[name](cfg, make_strategy(cfg)) for name in names]
