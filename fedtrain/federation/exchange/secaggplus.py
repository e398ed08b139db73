"""SecAgg+ as a round exchange: Flower's own protocol, with what Flower hides surfaced.

Flower 1.42 has SecAgg+ only in its legacy path (``SecAggPlusWorkflow`` over a ``LegacyContext``).
This exchange runs one protocol round inside fedtrain's Message-API loop: the run's strategy samples
the nodes (``configure_train``), a small legacy shim hands those nodes' ``FitIns`` to the workflow and
catches the unmasked weighted mean of their **updates**, and the strategy aggregates that mean as if it
were one reply (so FedAdam's or FedAvgM's server step still applies).

Surfaced here, silent in Flower: the protocol stage a round halted in and the nodes lost there (a
halted round is retried without them, skipped or stops the run, by ``secagg-halt-policy``); values the
clients' mod clipped to the clipping range (counted by each client); the shares and threshold used.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.serverapp import Grid

from fedtrain import wire
from fedtrain.config import RunConfig
from fedtrain.federation.exchange.base import EXCHANGES, RoundRequest, TrainReplies
from fedtrain.federation.exchange.message import MessageExchange
from fedtrain.logging import get_logger

__all__ = ["ProtocolAttempt", "SecAggPlusExchange", "auto_clipping_range"]

log = get_logger()
_STAGE_NAMES = {"setup": "setup", "share_keys": "share-keys", "collect_masked_vectors": "collect", "unmask": "unmask"}
_STAGE_ORDER = [*_STAGE_NAMES.values(), ""]
_DP_EVIDENCE = (*wire.DP_EVIDENCE, wire.DP_HISTORY)


@dataclass
class ProtocolAttempt:
    """One run of the SecAgg+ protocol for a round."""

    nodes: list[int]
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)  # node -> its fitres metrics (trained)
    lost: dict[int, str] = field(default_factory=dict)  # node -> the stage it was lost in
    refused: dict[int, dict[str, Any]] = field(default_factory=dict)  # node -> its metrics: no DP evidence
    mean_update: list[np.ndarray] | None = None  # the unmasked weighted mean; None when the protocol halted
    halted_in: str = ""
    shares: int = 0
    threshold: int = 0


class _RecordingGrid(Grid):
    """The run's grid, recording each protocol stage's replies and losses (Flower counts failures twice)."""

    def __init__(self, grid: Grid, attempt: ProtocolAttempt, *, require_dp_evidence: bool = False) -> None:
        self.grid, self.attempt, self.require_dp_evidence = grid, attempt, require_dp_evidence

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        sent = list(messages)
        stage = ""
        if sent and RECORD_KEY_CONFIGS in sent[0].content.config_records:
            config = sent[0].content.config_records[RECORD_KEY_CONFIGS]
            stage = _STAGE_NAMES.get(str(config.get(Key.STAGE, "")), str(config.get(Key.STAGE, "")))
            if stage == "setup":
                self.attempt.shares = int(cast(int, config[Key.SHARE_NUMBER]))
                self.attempt.threshold = int(cast(int, config[Key.THRESHOLD]))
        if stage == "collect" and any(st in ("setup", "share-keys") for st in self.attempt.lost.values()):
            # Flower would go on and have every client train, then halt in unmask for want of the lost nodes'
            # shares: stop before anyone trains (and spends budget) in a round that cannot be unmasked.
            raise _AttemptAbortedError
        replies = list(self.grid.send_and_receive(sent, timeout=timeout))
        answered = {m.metadata.src_node_id for m in replies if not m.has_error()}
        for m in sent:
            node = m.metadata.dst_node_id
            if node not in answered and node not in self.attempt.lost:
                self.attempt.lost[node] = stage
        if stage == "collect":
            kept = []
            for m in replies:
                report = {} if m.has_error() else _report(m.content)
                if report and self.require_dp_evidence and any(k not in report for k in _DP_EVIDENCE):
                    # Left out before the masked vectors are summed: Flower unmasks the round as if this node had
                    # dropped out (its pairwise masks rebuilt from the shares), so the others' updates still count.
                    self.attempt.refused[m.metadata.src_node_id] = report
                    continue
                if report:
                    self.attempt.reports[m.metadata.src_node_id] = report
                kept.append(m)
            replies = kept
        return replies

    # The workflow only sends and receives; the rest is the run's grid.
    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run


def _report(content: RecordDict) -> dict[str, Any]:
    """A client's fitres metrics as fedtrain's report (its DP history parsed back into a dict)."""
    metrics: dict[str, Any] = dict(content.config_records.get("fitres.metrics", ConfigRecord()))
    if wire.DP_HISTORY in metrics:
        metrics[wire.DP_HISTORY] = json.loads(str(metrics[wire.DP_HISTORY]))
    return metrics


class _AttemptAbortedError(Exception):
    """Raised by the recording grid to end an attempt that can no longer be unmasked."""


@dataclass
class _Proxy:
    node_id: int


class _Shim(LegacyStrategy):
    """The legacy strategy the workflow drives: hands out the round's FitIns, keeps the unmasked mean."""

    def __init__(self, nodes: list[int], fitins: FitIns) -> None:
        self.nodes, self.fitins = nodes, fitins
        self.mean: Parameters | None = None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        return [(_Proxy(n), self.fitins) for n in self.nodes]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if results:
            self.mean = results[0][1].parameters  # the workflow put the unmasked mean into every result
        return self.mean, {}

    # Unused by the workflow.
    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return None

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        return []

    def aggregate_evaluate(
        self, server_round: int, results: Any, failures: Any
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


def auto_clipping_range(cfg: RunConfig, lr: float, local_steps: int, phase: str = "finetune") -> float:
    """A bound on any coordinate of a client's update, from the round's learning rate and gradient clipping.

    SGD moves a coordinate by at most ``lr * g`` per step (``g`` the gradient norm bound: ``dp-max-grad-norm``
    under DP-SGD plus room for its noise, ``clip-grad-norm`` if set, else 10), momentum amplifies that by up
    to ``1 / (1 - momentum)``; adaptive optimizers move about ``lr`` per step. Twice that over the local steps.
    Pretraining stages use their own optimizer. Under user-level DP a client clips its whole update to norm ``C``
    first, so no coordinate exceeds ``C``: the range is ``C`` and nothing is ever clipped.
    """
    t, p = cfg.train, cfg.privacy
    if cfg.user_dp:
        return float(p.dp_user_clipping_norm)
    if cfg.sample_dp:
        g = p.dp_max_grad_norm * 2.0
    elif t.clip_grad_norm > 0:
        g = t.clip_grad_norm
    else:
        g = 10.0
    optimizer = cfg.pretrain.pretrain_optimizer if phase == "pretrain" else t.optimizer
    per_step = lr if optimizer in ("adam", "adamw", "adagrad", "rmsprop") else lr * g
    if optimizer in ("momentum", "nesterov") and t.momentum < 1:
        per_step /= 1 - t.momentum
    return float(max(2.0 * per_step * local_steps, 1e-3))


class SecAggPlusExchange(MessageExchange):
    """Train messages through SecAgg+; evaluation stays plain (its replies are metrics, not updates)."""

    def train(self, request: RoundRequest) -> TrainReplies:
        r, s = request, self.cfg.secagg
        messages = list(r.strategy.configure_train(r.server_round, r.arrays, r.config, r.grid))
        nodes = [m.metadata.dst_node_id for m in messages]
        config = dict(messages[0].content[wire.CONFIG]) if messages else dict(r.config)  # what the strategy added
        keys = list(r.arrays.keys())
        weights = [r.arrays[k].numpy() for k in keys]
        lr = config.get(wire.LR, 0.0)
        lr = float(lr) if isinstance(lr, int | float) else 0.0
        phase = str(config.get(wire.PHASE, "finetune"))
        clip = s.secagg_clipping_range or auto_clipping_range(self.cfg, lr, self.steps(phase), phase)
        config.update({wire.SECAGG_KEYS: json.dumps(keys), wire.SECAGG_CLIPPING_RANGE: clip,
                       wire.SECAGG_MAX_WEIGHT: self.max_weight})  # fmt: skip
        attempts: list[ProtocolAttempt] = []
        live = nodes
        while True:
            attempt = self._attempt(r, live, weights, config, clip)
            attempts.append(attempt)
            if attempt.mean_update is not None or s.secagg_halt_policy != "retry" or len(attempts) > 2:
                break
            if not attempt.lost:
                break
            # Losses in a later stage may only follow from the first one (shares that never came): retry without
            # the nodes lost first.
            first = min(attempt.lost.values(), key=_STAGE_ORDER.index)
            early = {"setup", "share-keys"} & set(attempt.lost.values())
            dropped = early or {first}  # before training: every such node; else the first lost
            live = [n for n in live if attempt.lost.get(n) not in dropped]
            if len(live) < max(2, self.cfg.strategy.min_clients):
                break
            log.warning("SecAgg+ round %d halted in %s; retrying without the nodes lost in %s", r.server_round,
                        attempt.halted_in, first)  # fmt: skip
        return self._replies(r, attempts, keys, weights, len(messages), clip)

    def steps(self, phase: str) -> int:
        """Local steps of the largest client in one call of ``phase`` (for the automatic clipping range)."""
        if phase == "pretrain":
            epochs, batch = self.cfg.pretrain.pretrain_epochs, self.cfg.pretrain.pretrain_batch_size
        else:
            epochs, batch = self.cfg.train.local_epochs, self.cfg.train.batch_size
        records = self.largest_client
        return int(epochs * math.ceil(records / max(batch or records, 1)))

    @property
    def largest_client(self) -> float:
        """Training records of the largest client (simulation), else ``secagg-max-weight`` or 1000."""
        return self._largest_partition() or float(self.cfg.secagg.secagg_max_weight or 1000.0)

    def _largest_partition(self) -> float | None:
        """Training records of the largest partition in a simulation; None when nodes hold their own files."""
        if self.cfg.data.data_source != "partition":
            return None
        from fedtrain.data import build_federated_data
        from fedtrain.data.federated import normalize_noise_of

        cfg = self.cfg  # the same (cached) build as the clients': dp-standard needs its release noise
        data = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed, normalize_noise_of(cfg))
        return float(max(len(c.train.y) for c in data.clients))

    @property
    def max_weight(self) -> float:
        """What a client's weight (its record count) is scaled against: set, or the largest partition."""
        if self.cfg.user_dp:
            return 1.0  # equal weights (one per client), as user-level DP's accounting needs
        if self.cfg.secagg.secagg_max_weight > 0:
            return float(self.cfg.secagg.secagg_max_weight)
        return self._largest_partition() or 1000.0

    def _attempt(
        self, r: RoundRequest, nodes: list[int], weights: list[np.ndarray], config: dict[str, Any], clip: float
    ) -> ProtocolAttempt:
        s = self.cfg.secagg
        attempt = ProtocolAttempt(nodes=list(nodes))
        fitins = FitIns(ndarrays_to_parameters(weights), legacy_config(config))
        shim = _Shim(nodes, fitins)
        legacy = LegacyContext(
            Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
            config=ServerConfig(num_rounds=1), strategy=shim,
        )  # fmt: skip
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({"current_round": r.server_round})
        legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters(weights), True
        )
        try:
            workflow = SecAggPlusWorkflow(
                num_shares=shares_for(s.secagg_num_shares, len(nodes)), reconstruction_threshold=_count_or_fraction(
                    s.secagg_reconstruction_threshold), max_weight=self.max_weight, clipping_range=clip,
                quantization_range=s.secagg_quantization_range, modulus_range=s.secagg_modulus_range,
                timeout=s.secagg_timeout or r.timeout,
            )  # fmt: skip
        except ValueError as err:  # e.g. a threshold count not below the shares of this round's cohort
            attempt.halted_in = f"setup ({err}; {len(nodes)} clients this round)"
            return attempt
        state = random.getstate()
        try:
            workflow(_RecordingGrid(r.grid, attempt, require_dp_evidence=self.cfg.sample_dp), legacy)
        except _AttemptAbortedError:
            pass
        except (ArithmeticError, ValueError) as err:
            attempt.halted_in = f"unmask ({type(err).__name__}: {err})"
        finally:
            random.setstate(state)  # the workflow shuffles neighbours with `random`: keep client sampling's stream
        mean = parameters_to_ndarrays(shim.mean) if shim.mean is not None else None
        if mean is not None and not all(np.isfinite(a).all() for a in mean):  # e.g. every weight was 0
            attempt.halted_in = "unmask (no client weight: every client declined)"
            mean = None
        if mean is not None:
            attempt.mean_update = mean
        elif not attempt.halted_in:
            # The first stage with losses: later stages may fail only for want of the lost nodes' shares.
            first = min(attempt.lost.values(), key=_STAGE_ORDER.index) if attempt.lost else ""
            attempt.halted_in = first or "setup (too few nodes)"
        return attempt

    def _replies(
        self, r: RoundRequest, attempts: list[ProtocolAttempt], keys: list[str], weights: list[np.ndarray],
        sent: int, clip: float,
    ) -> TrainReplies:  # fmt: skip
        final = attempts[-1]
        spent: dict[int, dict[str, Any]] = {}
        for attempt in attempts:  # a client that trained in a halted attempt spent budget there too
            spent.update(attempt.reports)
        reports = list(spent.values())
        skipped = final.mean_update is None and self.cfg.secagg.secagg_halt_policy == "skip"
        # A skipped round aggregated nothing: nobody trained for the model (the budget spent is in `spent`).
        trained = [] if skipped else [rep for rep in final.reports.values() if not rep.get(wire.DP_DECLINED)]
        declined = [rep for rep in reports if rep.get(wire.DP_DECLINED)]
        failures = [f"node {n}: lost in SecAgg+ {stage or 'stage'} (attempt {i + 1})"
                    for i, a in enumerate(attempts) for n, stage in a.lost.items()]  # fmt: skip
        refused = [
            f"node {n} (partition {rep.get(wire.PARTITION_ID)}): a SecAgg+ update without DP evidence, left out of "
            "the masked sum"
            for n, rep in final.refused.items()
        ]
        clipped = sum(int(rep.get(wire.SECAGG_CLIPPED, 0)) for rep in final.reports.values())
        values = sum(int(rep.get(wire.SECAGG_VALUES, 0)) for rep in final.reports.values())
        metrics: dict[str, Any] = {
            "secagg_shares": final.shares, "secagg_threshold": final.threshold, "secagg_clipping_range": clip,
            "secagg_clipped": clipped, "secagg_clipped_fraction": clipped / values if values else 0.0,
            "secagg_attempts": len(attempts), "secagg_halted": [a.halted_in for a in attempts if a.mean_update is None],
        }  # fmt: skip

        halted = final.mean_update is None
        stop = ""
        if halted:
            stages = ", then in ".join(a.halted_in for a in attempts)
            reason = f"SecAgg+ round {r.server_round} halted in {stages} ({len(attempts)} attempt(s))"
            log.warning("%s; policy %s", reason, self.cfg.secagg.secagg_halt_policy)
            if self.cfg.secagg.secagg_halt_policy != "skip":  # stop, or retries that halted too
                stop = reason

        warnings: list[str] = []
        if metrics["secagg_clipped_fraction"] > self.cfg.secagg.secagg_clipped_warning:
            warnings.append(  # one text per run and range, so summary.json keeps it once
                f"SecAgg+ clipped more than {self.cfg.secagg.secagg_clipped_warning:.1%} of the update values to "
                f"+-{clip:g} (secagg_clipped in metrics.jsonl); raise secagg-clipping-range (0 = automatic)"
            )

        def aggregate() -> ArrayRecord | None:
            if halted and self.cfg.secagg.secagg_halt_policy == "skip":
                return r.arrays  # the round is skipped: the model stays (metrics say so)
            if final.mean_update is None or not trained:
                return None
            update = final.mean_update
            cohort = list(final.reports.values())
            if self.cfg.user_dp and len(cohort) < sent:
                # Lost clients count as zero updates: the sum over K sampled has sensitivity C / K, the noise scale.
                update = [u * (len(cohort) / sent) for u in update]
                cohort += [{}] * (sent - len(cohort))
            # The unmasked mean comes back as float64: cast to the model's dtypes before it is stored or sent.
            mean = {k: Array((w + u).astype(w.dtype)) for k, w, u in zip(keys, weights, update, strict=True)}
            # One reply per client in the sum, each holding the mean with that client's weight: the strategy's
            # (weighted) average is the mean itself, and Flower's DP wrappers see the cohort they scaled noise for.
            record = ArrayRecord(mean)
            origin = Message(RecordDict(), dst_node_id=0, message_type="train")
            replies = [
                Message(RecordDict({wire.ARRAYS: record, wire.METRICS: MetricRecord({
                    wire.NUM_EXAMPLES: float(rep.get(wire.NUM_EXAMPLES, 0)), wire.USER_DP_WEIGHT: 1.0})}),
                        reply_to=origin)
                for rep in cohort
            ]  # fmt: skip
            arrays, _ = r.strategy.aggregate_train(r.server_round, replies)
            return arrays

        return TrainReplies(sent=sent, trained=trained, declined=declined, refused=refused,
                            failures=failures + refused, aggregate=aggregate, metrics=metrics, stop=stop,
                            warnings=warnings, spent=reports)  # fmt: skip


def legacy_config(config: dict[str, Any]) -> dict[str, Scalar]:
    """A train config as legacy FitIns config: scalars as they are, lists (e.g. the data spec) as one JSON entry."""
    scalars = {k: v for k, v in config.items() if isinstance(v, bool | bytes | float | int | str)}
    lists = {k: v for k, v in config.items() if isinstance(v, list)}
    return {**scalars, wire.SECAGG_LISTS: json.dumps(lists)}


def shares_for(setting: float, sampled: int) -> int | float:
    """``secagg-num-shares`` for a round of ``sampled`` clients; 0 picks logarithmically many neighbours.

    Each client's cost (key agreements, Shamir shares, pairwise masks) grows with its shares, and SecAgg+
    (Bell et al. 2020) needs only O(log K) neighbours: every client up to 7, else ``2 * ceil(log2 K) + 1``.
    """
    if setting > 0:
        return _count_or_fraction(setting)
    if sampled <= 7:
        return 1.0  # all of them (a fraction: Flower takes small cohorts whole)
    return min(sampled, 2 * math.ceil(math.log2(sampled)) + 1)


def _count_or_fraction(value: float) -> int | float:
    """Flower reads an int as a count and a float as a fraction of the sampled nodes."""
    return int(value) if value > 1 else float(value)


EXCHANGES.register("secaggplus", SecAggPlusExchange)
