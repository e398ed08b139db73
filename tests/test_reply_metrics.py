"""Metric names of other ClientApps are renamed to fedtrain's; fedtrain's own replies pass untouched."""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import MetricRecord, RecordDict

from fedtrain import wire
from fedtrain.federation.reply_metrics import canonical_metrics


@dataclass
class _Reply:
    """What canonical_metrics reads of a reply (a real Message needs a SuperNode's task identity)."""

    content: RecordDict
    metadata: object = field(default_factory=lambda: type("Metadata", (), {"src_node_id": 7})())

    def has_error(self) -> bool:
        return False


def _reply(metrics: dict[str, float]) -> _Reply:
    return _Reply(RecordDict({"metrics": MetricRecord(metrics)}))


def test_aliases_are_renamed():
    reply = _reply({"train_loss": 0.5, "num_examples": 10})
    canonical_metrics([reply], "train")  # type: ignore[list-item]
    assert dict(reply.content.metric_records["metrics"]) == {wire.TRAIN_LOSS: 0.5, wire.NUM_EXAMPLES: 10}


def test_a_reply_with_fedtrain_names_keeps_its_record():
    reply = _reply({wire.TRAIN_LOSS: 0.5, wire.NUM_EXAMPLES: 10})
    record = reply.content.metric_records["metrics"]
    canonical_metrics([reply], "train")  # type: ignore[list-item]
    assert reply.content.metric_records["metrics"] is record
