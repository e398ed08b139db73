"""Records of a Flower ``RecordDict`` by type, read without Flower's per-call views.

``RecordDict.config_records`` (and ``array_records``, ``metric_records``) builds a new synced dict on
every access and writes every record of that type back into the RecordDict through two validating
setters. A round of the vectorised exchange read those views tens of thousands of times (a third of
a 1000-client round outside training); these helpers read the RecordDict itself.
"""

from __future__ import annotations

from typing import TypeVar

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

__all__ = ["record_of", "records_of"]

R = TypeVar("R", ArrayRecord, ConfigRecord, MetricRecord)


def record_of(content: RecordDict, key: str, kind: type[R]) -> R | None:
    """``content[key]`` when it is a ``kind`` record, else None (``content.<kind>_records.get(key)``)."""
    record = content.get(key)
    return record if isinstance(record, kind) else None


def records_of(content: RecordDict, kind: type[R]) -> dict[str, R]:
    """Every ``kind`` record of ``content``, in its order (a plain dict: changing it changes nothing)."""
    return {k: r for k, r in content.items() if isinstance(r, kind)}
