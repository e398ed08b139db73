"""Which train replies of a round enter the aggregate, as the two DP levels require.

One place decides this, so that sample-level DP (each client's budget guard) and user-level DP
(noise scaled for the sampled cohort) compose soundly:

- Under sample-level DP, a reply without DP evidence (the fields of ``fedtrain.wire.DP_EVIDENCE`` and the
  ``dp-history`` record) is refused: it is never counted as private, nor aggregated.
- A client that declined the round (its budget) sent the global model back unchanged. Under
  user-level DP it stays in the aggregate as a zero update with its equal weight, so the average
  is over exactly the cohort the noise was scaled for and Flower's accountant describes the
  release made. Without user-level DP it is simply left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from fedtrain.config import RunConfig
from fedtrain.wire import DP_DECLINED, DP_EVIDENCE, DP_HISTORY, USER_DP_WEIGHT

__all__ = ["RoundSelection", "is_declined", "select_replies", "zero_update"]


@dataclass
class RoundSelection:
    """The replies to aggregate and what happened to the others."""

    aggregate: list[Message]  # handed to the strategy (error replies included: Flower's wrappers count them)
    trained: list[Message]  # replies that trained this round and carry a usable update
    declined: list[Message] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # one reason per refused reply, counted as failures


def _missing_evidence(metrics: Mapping[str, Any], reply: Message) -> list[str]:
    missing = [k for k in DP_EVIDENCE if k not in metrics]
    if DP_HISTORY not in reply.content.config_records:
        missing.append(DP_HISTORY)
    return missing


def zero_update(reply: Message, global_arrays: ArrayRecord) -> None:
    """Make a declined reply carry the global model itself, moved by one small fixed step.

    The server does not take the client's word that its model is unchanged. The step keeps the update's
    norm positive: Flower 1.42's clipping divides by it (ZeroDivisionError on an exact zero update). It
    is data-independent, so it reveals nothing, and large enough to survive float32 rounding.
    """
    nudged = {k: np.array(v, copy=True) for k, v in zip(global_arrays.keys(), global_arrays.to_numpy_ndarrays(),
                                                        strict=True)}  # fmt: skip
    target = next((a for a in nudged.values() if a.size and np.issubdtype(a.dtype, np.floating)), None)
    if target is not None:
        value = target.flat[0]
        target.flat[0] = value + max(np.asarray(1e-6, target.dtype), 8 * np.spacing(value))
    for name in list(reply.content.array_records):
        reply.content[name] = ArrayRecord({k: Array(a) for k, a in nudged.items()})


def is_declined(reply: Message) -> bool:
    """Whether a train reply says its client declined the round (budget)."""
    return not reply.has_error() and any(r.get(DP_DECLINED) for r in reply.content.metric_records.values())


def _equal_weight(reply: Message) -> None:
    """User-level sensitivity assumes equal weights: set them here rather than trust each client's."""
    for name, record in list(reply.content.metric_records.items()):
        reply.content[name] = MetricRecord({**dict(record), USER_DP_WEIGHT: 1.0})


def select_replies(
    cfg: RunConfig, replies: Sequence[Message], metrics: Sequence[Mapping[str, Any]], global_arrays: ArrayRecord
) -> RoundSelection:
    """Split a round's train replies; ``metrics`` holds each reply's metrics (``{}`` for error replies).

    Replies are edited in place where the server must not trust them: under user-level DP every
    aggregated reply gets weight 1, and a declined one the global model (``global_arrays``).
    """
    selection = RoundSelection(aggregate=[], trained=[])
    for reply, met in zip(replies, metrics, strict=True):
        if reply.has_error():
            selection.aggregate.append(reply)
            continue
        if cfg.sample_dp:
            missing = _missing_evidence(met, reply)
            if missing:
                selection.refused.append(
                    f"node {reply.metadata.src_node_id}: reply has no DP evidence (missing {', '.join(missing)}); "
                    f"under dp-level={cfg.privacy.dp_level!r} every client must run fedtrain's DP-SGD ClientApp, "
                    "so this update was not aggregated"
                )
                continue
        if met.get(DP_DECLINED):
            selection.declined.append(reply)
            if cfg.user_dp:
                zero_update(reply, global_arrays)
                _equal_weight(reply)
                selection.aggregate.append(reply)  # a zero update: the cohort stays the one the noise is for
            continue
        if cfg.user_dp:
            _equal_weight(reply)
        selection.trained.append(reply)
        selection.aggregate.append(reply)
    return selection
