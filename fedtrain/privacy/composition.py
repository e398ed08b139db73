"""Which train replies of a round enter the aggregate, as the two DP levels require.

One place decides this, so that sample-level DP (each client's budget guard) and user-level DP
(noise scaled for the sampled cohort) compose soundly:

- Under sample-level DP, a reply without DP evidence (the fields of ``wire.DP_EVIDENCE`` and the
  ``dp-history`` record) is refused: it is never counted as private, nor aggregated.
- A client that declined the round (its budget) sent the global model back unchanged. Under
  user-level DP it stays in the aggregate as a zero update with its equal weight, so the average
  is over exactly the cohort the noise was scaled for and Flower's accountant describes the
  release made. Without user-level DP it is simply left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedtrain.config import RunConfig
from fedtrain.privacy.wire import DP_DECLINED, DP_EVIDENCE, DP_HISTORY

__all__ = ["RoundSelection", "select_replies"]


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


def _nudge(reply: Message) -> None:
    """Move one weight of an unchanged model by 1e-6.

    Flower 1.42's clipping divides by the update's norm and raises ZeroDivisionError on an exact
    zero update; a fixed, data-independent offset keeps the norm positive and changes nothing else.
    """
    for name, record in list(reply.content.array_records.items()):
        arrays = record.to_numpy_ndarrays()
        first = next((a for a in arrays if a.size), None)
        if first is None:
            return
        first.flat[0] += np.asarray(1e-6, dtype=first.dtype)
        reply.content[name] = ArrayRecord(dict(zip(record.keys(), (Array(a) for a in arrays), strict=True)))
        return


def select_replies(cfg: RunConfig, replies: list[Message], metrics: list[Mapping[str, Any]]) -> RoundSelection:
    """Split a round's train replies; ``metrics`` holds each reply's metrics (``{}`` for error replies)."""
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
                _nudge(reply)
                selection.aggregate.append(reply)  # a zero update: the cohort stays the one the noise is for
            continue
        selection.trained.append(reply)
        selection.aggregate.append(reply)
    return selection
