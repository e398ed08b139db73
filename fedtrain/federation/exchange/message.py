"""The plain Message-API exchange: Flower's strategy configures, the grid carries, the strategy aggregates."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord

from fedtrain import wire
from fedtrain.federation.exchange.base import EXCHANGES, RoundExchange, RoundRequest, TrainReplies
from fedtrain.federation.reply_metrics import canonical_metrics, reply_metrics
from fedtrain.logging import get_logger
from fedtrain.privacy.composition import select_replies
from fedtrain.privacy.unaccounted import train_loss_shared

__all__ = ["MessageExchange", "client_report", "errors"]

log = get_logger()


def errors(replies: Iterable[Message]) -> list[str]:
    """One line per error reply, naming the node."""
    return [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies if m.has_error()]


def client_report(reply: Message) -> dict[str, Any]:
    """A train reply's metrics, with its DP history (a ConfigRecord) when it sent one."""
    report = reply_metrics(reply)
    history = None if reply.has_error() else reply.content.config_records.get(wire.DP_HISTORY)
    if history is not None:
        report[wire.DP_HISTORY] = dict(history)
    return report


def _missing(messages: list[Message], replies: list[Message]) -> list[str]:
    """One line per sampled node that sent no reply before the round timed out (Flower drops them silently)."""
    answered = {m.metadata.src_node_id for m in replies}
    return [f"node {m.metadata.dst_node_id}: no reply before round-timeout" for m in messages
            if m.metadata.dst_node_id not in answered]  # fmt: skip


class MessageExchange(RoundExchange):
    """Every sampled client gets the global arrays and replies with its new ones, in the clear."""

    def train(self, request: RoundRequest) -> TrainReplies:
        r = request
        messages = list(r.strategy.configure_train(r.server_round, r.arrays, r.config, r.grid))
        replies = list(r.grid.send_and_receive(messages, timeout=r.timeout))
        shared = train_loss_shared(self.cfg)
        canonical_metrics(replies, "train", withheld=() if shared else (wire.TRAIN_LOSS,))
        reports = [client_report(m) for m in replies]
        chosen = select_replies(self.cfg, replies, reports, r.arrays)
        report_of = {id(m): rep for m, rep in zip(replies, reports, strict=True)}
        for reason in chosen.refused:
            log.warning("refused: %s", reason)

        def aggregate() -> ArrayRecord | None:
            arrays, _ = r.strategy.aggregate_train(r.server_round, chosen.aggregate)
            return arrays

        return TrainReplies(
            sent=len(messages),
            trained=[report_of[id(m)] for m in chosen.trained],
            declined=[report_of[id(m)] for m in chosen.declined],
            refused=chosen.refused,
            failures=errors(replies) + chosen.refused + _missing(messages, replies),
            aggregate=aggregate,
        )

    def evaluate(self, request: RoundRequest) -> tuple[MetricRecord | None, int, list[str]]:
        r = request
        messages = r.strategy.configure_evaluate(r.server_round, r.arrays, r.config, r.grid)
        replies = list(r.grid.send_and_receive(messages, timeout=r.timeout))
        canonical_metrics(replies, "evaluate")
        metrics = r.strategy.aggregate_evaluate(r.server_round, replies) if replies else None
        return metrics, sum(not m.has_error() for m in replies), errors(replies)


EXCHANGES.register("message", MessageExchange)
