"""Read metrics from any Flower ClientApp, not only fedtrain's.

Flower's examples name their metrics ``train_loss``, ``eval_loss``, ``eval_acc`` or
``accuracy``; fedtrain's use ``train-loss``, ``eval-loss``, ``eval-accuracy``. Replies are
rewritten to fedtrain's names before aggregation (Flower's strategies need the same keys in
every reply), and a reply that has none of the accepted names is reported once, by name.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Message, MetricRecord

from fedtrain import wire
from fedtrain.federation.records import records_of
from fedtrain.logging import get_logger

__all__ = ["ALIASES", "canonical_metrics", "reply_metrics"]

log = get_logger()

ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        wire.TRAIN_LOSS: ("train_loss", "loss", "train-loss"),
        wire.NUM_EXAMPLES: ("num_examples", "num-examples"),
    },
    "evaluate": {
        wire.EVAL_LOSS: ("eval_loss", "loss", "eval-loss", "val_loss"),
        wire.EVAL_ACCURACY: ("eval_acc", "eval_accuracy", "accuracy", "acc", "eval-accuracy", "eval-acc"),
        wire.NUM_EXAMPLES: ("num_examples", "num-examples"),
    },
}
_warned: set[tuple[str, str]] = set()


def reply_metrics(reply: Message) -> dict[str, Any]:
    """The reply's metrics as a dict (the first MetricRecord; ``{}`` for none)."""
    records = list(records_of(reply.content, MetricRecord).values()) if not reply.has_error() else []
    return dict(records[0]) if records else {}


def canonical_metrics(replies: list[Message], kind: str, *, withheld: tuple[str, ...] = ()) -> None:
    """Rename accepted aliases to fedtrain's metric names in place, in every reply of ``kind``.

    ``withheld`` names metrics that clients keep to themselves in this run (no warning when absent).
    """
    for reply in replies:
        if reply.has_error():
            continue
        for name, record in records_of(reply.content, MetricRecord).items():
            values = dict(record)
            renamed = False
            for canonical, aliases in ALIASES[kind].items():
                if canonical in values:
                    continue
                found = next((a for a in aliases if a in values), None)
                if found is not None:
                    values[canonical] = values.pop(found)
                    renamed = True
                elif canonical not in (wire.NUM_EXAMPLES, *withheld) and (kind, canonical) not in _warned:
                    _warned.add((kind, canonical))
                    log.warning(
                        "%s replies from node %d have no %r metric (accepted names: %s; got %s): it is not reported",
                        kind, reply.metadata.src_node_id, canonical, ", ".join(aliases), ", ".join(sorted(values)),
                    )  # fmt: skip
            if renamed:  # fedtrain's own replies need none; rebuilding a record re-checks every value
                reply.content[name] = MetricRecord(values)
