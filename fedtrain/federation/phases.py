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

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Strategy

from fedtrain import wire
from fedtrain.aggregation.state import strategy_state
from fedtrain.config import RunConfig
from fedtrain.federation.reply_metrics import canonical_metrics, reply_metrics
from fedtrain.logging import get_logger
from fedtrain.models import build_model
from fedtrain.pretrain import AUX_PREFIX, LayerObjective
from fedtrain.privacy.composition import RoundSelection, select_replies
from fedtrain.privacy.unaccounted import train_loss_shared
from fedtrain.train import learning_rate
from fedtrain.wire import ADAPTIVE_FLAG

__all__ = ["PHASES", "FinetunePhase", "Phase", "PhaseResult", "PretrainLayerPhase", "RoundOutcome", "build_plan"]

log = get_logger()


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
    declined: int = 0  # clients that refused the round (privacy budget)
    supervised: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # phase-specific central metrics
    strategy_state: dict[str, Any] = field(default_factory=dict)  # server optimizer moments, for the checkpoint


@dataclass
class PhaseResult:
    """How a phase ended; ``arrays`` are handed to the next phase."""

    name: str
    arrays: ArrayRecord
    rounds: int
    status: str  # "completed" | "stopped" | "failed"
    reason: str = ""


# Called after every round; returns a reason to stop the phase early, or None to go on.
RoundCallback = Callable[[RoundOutcome], str | None]


def _errors(replies: Iterable[Message]) -> list[str]:
    return [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies if m.has_error()]


def _client_report(reply: Message) -> dict[str, Any]:
    """A train reply's metrics, with its DP history (a ConfigRecord) when it sent one."""
    report = reply_metrics(reply)
    history = None if reply.has_error() else reply.content.config_records.get(wire.DP_HISTORY)
    if history is not None:
        report[wire.DP_HISTORY] = dict(history)
    return report


def _train_loss(reports: list[dict[str, Any]]) -> float | None:
    """Mean training loss of the clients that trained, weighted by their examples."""
    pairs = [(float(met[wire.TRAIN_LOSS]), float(met.get(wire.NUM_EXAMPLES, 1)))
             for met in reports if wire.TRAIN_LOSS in met]  # fmt: skip
    total = sum(w for _, w in pairs)
    return sum(loss * w for loss, w in pairs) / total if total > 0 else None


class Phase(ABC):
    """One phase of the plan: a federated loop of rounds with a Flower strategy.

    Subclasses say how rounds are configured; hooks let a phase add arrays it needs for its own
    rounds (``prepare``/``finish``) and keep arrays frozen bit for bit (``frozen_keys``).
    """

    name: str = ""
    supervised: bool = True  # central accuracy, best checkpoint, early stopping and client evaluation

    def __init__(self, cfg: RunConfig, strategy: Strategy) -> None:
        self.cfg = cfg
        self.strategy = strategy

    @property
    def label(self) -> str:
        """Name in logs and metrics."""
        return self.name

    @property
    @abstractmethod
    def num_rounds(self) -> int:
        """Rounds this phase runs at most."""

    @abstractmethod
    def train_config(self, phase_round: int, global_round: int) -> ConfigRecord:
        """The ConfigRecord sent with every train message of a round."""

    def evaluate_config(self, phase_round: int, global_round: int) -> ConfigRecord:
        return ConfigRecord({wire.PHASE: self.name, wire.GLOBAL_ROUND: global_round})

    def prepare(self, arrays: ArrayRecord) -> ArrayRecord:
        """Arrays at the start of the phase (e.g. add a decoder); must keep arrays it already has."""
        return arrays

    def finish(self, arrays: ArrayRecord) -> ArrayRecord:
        """Arrays handed to the next phase (e.g. drop the decoder)."""
        return arrays

    def frozen_keys(self, phase_round: int, arrays: ArrayRecord) -> set[str]:
        """Array names that must not change this round; restored exactly after aggregation."""
        return set()

    def central_metrics(self, arrays: ArrayRecord) -> dict[str, Any]:
        """Phase-specific metrics of the new global arrays, computed at the server."""
        return {}

    def summary(self) -> str:
        return f"{self.label}: {self.num_rounds} rounds with {type(self.strategy).__name__}"

    def run(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        *,
        first_global_round: int,
        start_round: int = 1,
        on_round: RoundCallback | None = None,
        extra_config: Callable[[], dict[str, Any]] | None = None,
        on_spent: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> PhaseResult:
        """Run rounds ``start_round..num_rounds``; ``on_round`` may stop the phase early.

        ``extra_config`` adds entries to every train config (e.g. privacy state to restore). ``on_spent``
        gets the reports of the clients that spent privacy budget in a round, as soon as they arrive and
        before aggregation, so that no ending of the round (stop, failure, exception) loses them.
        Which replies are aggregated is :func:`fedtrain.privacy.composition.select_replies`'s call; when
        fewer than ``min-clients`` trained because the others declined (privacy budget), the phase stops.
        """
        arrays = self.prepare(arrays)
        done = start_round - 1
        for phase_round in range(start_round, self.num_rounds + 1):
            global_round = first_global_round + phase_round - 1
            step = self._round(grid, arrays, phase_round, global_round, extra_config, on_spent)
            if isinstance(step, PhaseResult):
                step.rounds, step.arrays = done, self.finish(arrays)
                return step
            arrays, done = step.arrays, phase_round
            stop = on_round(step) if on_round else None
            if stop:
                return PhaseResult(self.label, self.finish(arrays), done, "stopped", stop)
        return PhaseResult(self.label, self.finish(arrays), done, "completed")

    def _too_few(self, chosen: RoundSelection, sent: int) -> PhaseResult | None:
        """End the phase when too few clients trained: their budget is spent, or none did DP."""
        usable, min_clients = len(chosen.trained), self.cfg.strategy.min_clients
        if chosen.refused and not usable and not chosen.declined:
            reason = (f"no client ran DP: all {len(chosen.refused)} replies lacked DP evidence under "
                      f"dp-level={self.cfg.privacy.dp_level!r} ({chosen.refused[0]})")  # fmt: skip
            return PhaseResult(self.label, ArrayRecord(), 0, "failed", reason)
        if chosen.declined and usable < min_clients:
            reason = (
                f"privacy budget: {len(chosen.declined)} of {sent} clients would pass "
                f"dp-target-epsilon={self.cfg.privacy.dp_target_epsilon}, leaving {usable} "
                f"(< min-clients={min_clients})"
            )
            return PhaseResult(self.label, ArrayRecord(), 0, "stopped", reason)
        return None

    def _round(
        self, grid: Grid, arrays: ArrayRecord, phase_round: int, global_round: int, extra_config, on_spent
    ) -> RoundOutcome | PhaseResult:
        """One round: train, aggregate, evaluate on clients. A PhaseResult means the phase ends here."""
        t0 = time.perf_counter()
        timeout = self.cfg.runtime.round_timeout
        train_cfg = self.train_config(phase_round, global_round)
        if self.cfg.user_dp and self.cfg.privacy.dp_user_clipping == "adaptive-client":
            train_cfg[ADAPTIVE_FLAG] = 1  # every phase: Flower's adaptive wrapper needs each reply's norm bit
        if extra_config:
            train_cfg.update(extra_config())
        try:
            messages = self.strategy.configure_train(global_round, arrays, train_cfg, grid)
        except PrivacyBudgetExhausted as err:
            return PhaseResult(self.label, arrays, 0, "stopped", f"user-level privacy budget: {err}")
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        canonical_metrics(replies, "train", withheld=() if train_loss_shared(self.cfg) else (wire.TRAIN_LOSS,))
        reports = [_client_report(m) for m in replies]
        chosen = select_replies(self.cfg, replies, reports, arrays)
        report_of = {id(m): r for m, r in zip(replies, reports, strict=True)}
        trained = [report_of[id(m)] for m in chosen.trained]
        spent = trained + [report_of[id(m)] for m in chosen.declined]
        if on_spent is not None:
            on_spent(spent)
        failures = _errors(replies) + chosen.refused
        for reason in chosen.refused:
            log.warning("refused: %s", reason)
        stop = self._too_few(chosen, len(replies))
        if stop is not None:
            return stop
        new_arrays, _ = self.strategy.aggregate_train(global_round, chosen.aggregate)
        if new_arrays is None:
            reason = f"round {phase_round}: no usable client update" + (f" ({failures[0]})" if failures else "")
            return PhaseResult(self.label, arrays, 0, "failed", reason)
        for key in self.frozen_keys(phase_round, arrays):
            new_arrays[key] = arrays[key]  # exact: averaging equal floats may round, DP noise would move them
        eval_replies: list[Message] = []
        eval_metrics = None
        if self.supervised:
            eval_cfg = self.evaluate_config(phase_round, global_round)
            eval_replies = list(
                grid.send_and_receive(
                    self.strategy.configure_evaluate(global_round, new_arrays, eval_cfg, grid), timeout=timeout
                )
            )
            canonical_metrics(eval_replies, "evaluate")
            failures += _errors(eval_replies)
            eval_metrics = self.strategy.aggregate_evaluate(global_round, eval_replies) if eval_replies else None
        return RoundOutcome(
            phase=self.label,
            phase_round=phase_round,
            phase_rounds=self.num_rounds,
            global_round=global_round,
            arrays=new_arrays,
            lr=float(train_cfg.get(wire.LR, 0.0)),
            train_loss=_train_loss(trained) if train_loss_shared(self.cfg) else None,
            client_eval_loss=_get(eval_metrics, wire.EVAL_LOSS),
            client_eval_accuracy=_get(eval_metrics, wire.EVAL_ACCURACY),
            clients_trained=len(chosen.trained),
            clients_evaluated=sum(not m.has_error() for m in eval_replies),
            failures=failures,
            seconds=time.perf_counter() - t0,
            declined=len(chosen.declined),
            supervised=self.supervised,
            extra=self.central_metrics(new_arrays),
            strategy_state=strategy_state(self.strategy),
        )


def _get(record: Any, key: str) -> float | None:
    return float(record[key]) if record is not None and key in record else None


def _hidden_keys(arrays: ArrayRecord, layers: range) -> set[str]:
    prefixes = tuple(f"hidden.{i}." for i in layers)
    return {k for k in arrays if k.startswith(prefixes)}


class PretrainLayerPhase(Phase):
    """Greedy layer-wise pretraining of hidden layer ``layer`` (Bengio et al. 2007, Hinton et al. 2006).

    Clients train the layer as an autoencoder, denoising autoencoder or RBM on the features of
    the frozen layers below, computed on their own data (labels unused). The decoder (or RBM
    visible bias) travels with the model under ``pretrain_aux.`` and is dropped at the end; every
    other layer is restored exactly after each aggregation.
    """

    name = "pretrain"
    supervised = False

    def __init__(self, cfg: RunConfig, strategy: Strategy, layer: int) -> None:
        super().__init__(cfg, strategy)
        self.layer = layer

    @property
    def label(self) -> str:
        return f"pretrain-{self.layer + 1}"

    @property
    def num_rounds(self) -> int:
        return self.cfg.pretrain.pretrain_rounds

    def train_config(self, phase_round: int, global_round: int) -> ConfigRecord:
        return ConfigRecord({
            wire.PHASE: self.name, wire.LAYER: self.layer, wire.GLOBAL_ROUND: global_round,
            wire.LR: self.cfg.pretrain.pretrain_learning_rate,
        })  # fmt: skip

    def prepare(self, arrays: ArrayRecord) -> ArrayRecord:
        if any(k.startswith(AUX_PREFIX) for k in arrays):  # resumed in the middle of this phase
            return arrays
        model = _model_from(self.cfg, arrays)
        with torch.random.fork_rng():
            torch.manual_seed(self.cfg.runtime.seed + 7919 * (self.layer + 1))
            objective = LayerObjective(model, self.layer, self.cfg)
        return ArrayRecord({**arrays.to_torch_state_dict(), **objective.aux_state()})

    def finish(self, arrays: ArrayRecord) -> ArrayRecord:
        return ArrayRecord({k: v for k, v in arrays.to_torch_state_dict().items() if not k.startswith(AUX_PREFIX)})

    def central_metrics(self, arrays: ArrayRecord) -> dict[str, Any]:
        """Layer and mean reconstruction error of the central test split (summed over features)."""
        from fedtrain.federation.context import federated_data

        objective = LayerObjective(_model_from(self.cfg, arrays), self.layer, self.cfg)
        objective.load_aux_state(arrays.to_torch_state_dict())
        x = torch.from_numpy(federated_data(self.cfg).test.x)
        return {"layer": self.layer + 1, "recon_error": float(objective.reconstruction_error(x).mean())}

    def frozen_keys(self, phase_round: int, arrays: ArrayRecord) -> set[str]:
        trainable = _hidden_keys(arrays, range(self.layer, self.layer + 1))
        return {k for k in arrays if k not in trainable and not k.startswith(AUX_PREFIX)}


class FinetunePhase(Phase):
    """Supervised training of the whole network, from pretrained or fresh weights.

    With ``freeze-rounds`` N, the hidden layers stay frozen for the first N rounds (a linear probe
    on the pretrained features), then everything trains.
    """

    name = "finetune"

    @property
    def num_rounds(self) -> int:
        return self.cfg.strategy.num_rounds

    def _freeze_depth(self, phase_round: int) -> int:
        return self.cfg.num_hidden_layers if phase_round <= self.cfg.pretrain.freeze_rounds else 0

    def train_config(self, phase_round: int, global_round: int) -> ConfigRecord:
        lr = learning_rate(self.cfg.train, phase_round, self.num_rounds)
        config = ConfigRecord({wire.PHASE: self.name, wire.LR: lr, wire.GLOBAL_ROUND: global_round})
        if self._freeze_depth(phase_round):
            config[wire.FREEZE_DEPTH] = self._freeze_depth(phase_round)
        return config

    def frozen_keys(self, phase_round: int, arrays: ArrayRecord) -> set[str]:
        return _hidden_keys(arrays, range(self._freeze_depth(phase_round)))


def _model_from(cfg: RunConfig, arrays: ArrayRecord):
    from fedtrain.federation.context import federated_data

    data = federated_data(cfg)
    model = build_model(cfg.model, data.input_shape, len(data.classes))
    model.load_state_dict({k: v for k, v in arrays.to_torch_state_dict().items() if not k.startswith(AUX_PREFIX)})
    return model


PHASES: dict[str, type[Phase]] = {"pretrain": PretrainLayerPhase, "finetune": FinetunePhase}


def build_plan(cfg: RunConfig, make_strategy: Callable[[RunConfig], Strategy]) -> list[Phase]:
    """The phases named in ``plan``, each with its own strategy; ``pretrain`` expands to one per hidden layer."""
    plan: list[Phase] = []
    for name in cfg.phases:
        if name == "pretrain":
            plan += [PretrainLayerPhase(cfg, make_strategy(cfg), k) for k in range(cfg.num_hidden_layers)]
        else:
            plan.append(PHASES[name](cfg, make_strategy(cfg)))
    return plan
