"""The plain Message-API exchange: Flower's strategy configures, the grid carries, the strategy aggregates."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedtrain import wire
from fedtrain.federation.exchange.base import EXCHANGES, RoundExchange, RoundRequest, TrainReplies
from fedtrain.federation.exchange.faults import Fault, count_kinds, one_line, screen_update
from fedtrain.federation.records import record_of
from fedtrain.federation.reply_metrics import canonical_metrics, reply_metrics
from fedtrain.logging import get_logger
from fedtrain.privacy.composition import select_replies
from fedtrain.privacy.unaccounted import train_loss_shared

__all__ = ["MessageExchange", "client_report", "errors"]

log = get_logger()


def errors(replies: Iterable[Message]) -> list[str]:
    """One line per error reply, naming the node (a runtime's traceback cut to its exception line)."""
    return [f"node {m.metadata.src_node_id}: {one_line(m.error.reason or '')}" for m in replies if m.has_error()]


def _faults(messages: list[Message], replies: list[Message]) -> list[Fault]:
    """Error replies and sampled nodes without a reply, as faults."""
    faults = [Fault("error", m.metadata.src_node_id, one_line(m.error.reason or "")) for m in replies if m.has_error()]
    answered = {m.metadata.src_node_id for m in replies}
    faults += [Fault("timeout", m.metadata.dst_node_id, "no reply before round-timeout") for m in messages
               if m.metadata.dst_node_id not in answered]  # fmt: skip
    return faults


def client_report(reply: Message, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """A train reply's metrics (``metrics``: already read), with its DP history (a ConfigRecord) when it sent one."""
    report = dict(metrics) if metrics is not None else reply_metrics(reply)
    history = None if reply.has_error() else record_of(reply.content, wire.DP_HISTORY, ConfigRecord)
    if history is not None:
        report[wire.DP_HISTORY] = dict(history)
    return report


class MessageExchange(RoundExchange):
    """Every sampled client gets the global arrays and replies with its new ones, in the clear."""

    def train(self, request: RoundRequest) -> TrainReplies:
        r = request
        messages = list(r.strategy.configure_train(r.server_round, r.arrays, r.config, r.grid))
        received = list(r.grid.send_and_receive(messages, timeout=r.timeout))
        shared = train_loss_shared(self.cfg)
        canonical_metrics(received, "train", withheld=() if shared else (wire.TRAIN_LOSS,))
        faults = _faults(messages, received)
        replies, reports = [], []
        for m in received:  # an update the server cannot aggregate safely is left out, as if the client failed
            metrics = reply_metrics(m)  # read once, for the screen and the report
            fault = None if m.has_error() else screen_update(m, metrics, r.arrays)
            if fault is None:
                replies.append(m)
                reports.append(client_report(m, metrics))
            else:
                faults.append(fault)
        chosen = select_replies(self.cfg, replies, reports, r.arrays)
        report_of = {id(m): rep for m, rep in zip(replies, reports, strict=True)}
        for reason in chosen.refused:
            log.warning("refused: %s", reason)
        faults += [Fault("refused", 0, reason) for reason in chosen.refused]
        for fault in faults:
            if fault.kind != "refused":  # logged above
                log.warning("round %d: %s (%s); left out of the aggregate", r.server_round, fault.line(), fault.kind)

        def aggregate() -> ArrayRecord | None:
            arrays, _ = r.strategy.aggregate_train(r.server_round, chosen.aggregate)
            return arrays

        return TrainReplies(
            sent=len(messages),
            trained=[report_of[id(m)] for m in chosen.trained],
            declined=[report_of[id(m)] for m in chosen.declined],
            refused=chosen.refused,
            failures=[f.detail if f.kind == "refused" else f.line() for f in faults],
            aggregate=aggregate,
            metrics={"failures_by_kind": count_kinds(faults)} if faults else {},
        )

    def evaluate(self, request: RoundRequest) -> tuple[MetricRecord | None, int, list[str]]:
        r = request
        messages = r.strategy.configure_evaluate(r.server_round, r.arrays, r.config, r.grid)
        replies = list(r.grid.send_and_receive(messages, timeout=r.timeout))
        canonical_metrics(replies, "evaluate")
        metrics = r.strategy.aggregate_evaluate(r.server_round, replies) if replies else None
        return metrics, sum(not m.has_error() for m in replies), errors(replies)


EXCHANGES.register("message", MessageExchange)
