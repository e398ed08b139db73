"""Client faults in a round's train replies: what is wrong with a reply, in one line, by kind.

A reply that raised, timed out, or sent an update the server cannot aggregate safely (not finite, other
array names, shapes or dtypes than the global model) is left out of the aggregate. Each fault is one
:class:`Fault`; the metrics line counts them by kind (``failures_by_kind``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message

from fedtrain import wire
from fedtrain.federation.exchange.held_arrays import read_only_values
from fedtrain.federation.records import records_of

__all__ = ["FAULT_KINDS", "Fault", "count_kinds", "non_finite_arrays", "one_line", "screen_update"]

# error: the ClientApp raised; timeout: no reply before round-timeout; non_finite: NaN/inf loss or weights;
# shape: array names or shapes differ from the global model's; dtype: dtypes differ; refused: no DP evidence.
FAULT_KINDS = ("error", "timeout", "non_finite", "shape", "dtype", "refused")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b.*")


def one_line(text: str) -> str:
    """The line of an error text that matters: ANSI escapes stripped, a traceback reduced to its exception.

    Flower's runtimes pass a ClientApp's or ServerApp's whole traceback (coloured under Ray); a summary's
    reason and a failure line keep only the last ``SomeError: message`` line, or the first line otherwise.
    """
    lines = [ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    if not any(ln.startswith("Traceback") for ln in lines):
        return "; ".join(lines)  # a message on several lines (e.g. a list of problems): all of it, on one
    exceptions = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    return exceptions[-1] if exceptions else lines[-1]


@dataclass(frozen=True)
class Fault:
    """One client's fault in one round."""

    kind: str  # one of FAULT_KINDS
    node: int
    detail: str
    partition: int | None = None

    def line(self) -> str:
        who = f"node {self.node}" + (f" (partition {self.partition})" if self.partition is not None else "")
        return f"{who}: {self.detail}"


def count_kinds(faults: Iterable[Fault]) -> dict[str, int]:
    """``{"error": 1, "non_finite": 2}``: faults by kind, in FAULT_KINDS order."""
    counts = Counter(f.kind for f in faults)
    return {k: counts[k] for k in FAULT_KINDS if counts[k]}


def non_finite_arrays(arrays: ArrayRecord) -> dict[str, int]:
    """Names of the float arrays holding NaN or inf, with how many such values each holds."""
    bad: dict[str, int] = {}
    for name, array in arrays.items():
        values = read_only_values(array)
        if np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.complexfloating):
            count = int(values.size - np.count_nonzero(np.isfinite(values)))
            if count:
                bad[name] = count
    return bad


def _partition(metrics: Mapping[str, Any]) -> int | None:
    value = metrics.get(wire.PARTITION_ID)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _kind(dtype: str) -> str:
    try:
        return np.dtype(dtype).kind
    except TypeError:
        return dtype


def _update(reply: Message) -> ArrayRecord | None:
    records = records_of(reply.content, ArrayRecord)
    return records.get(wire.ARRAYS) or next(iter(records.values()), None)


def screen_update(reply: Message, metrics: Mapping[str, Any], global_arrays: ArrayRecord) -> Fault | None:
    """The fault of a train reply that did not raise, or None when its update may be aggregated."""
    node, pid = reply.metadata.src_node_id, _partition(metrics)
    loss = metrics.get(wire.TRAIN_LOSS)
    if isinstance(loss, int | float) and not math.isfinite(float(loss)):
        return Fault("non_finite", node, f"training loss is {float(loss)}", pid)
    update = _update(reply)
    if update is None:
        return Fault("shape", node, "the reply holds no arrays", pid)
    names, wanted = set(update.keys()), set(global_arrays.keys())
    if names != wanted:
        missing, extra = sorted(wanted - names), sorted(names - wanted)
        parts = [
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(extra[:3])}" if extra else "",
        ]
        detail = "; ".join(p for p in parts if p)
        return Fault("shape", node, f"arrays differ from the global model's ({detail})", pid)
    for name in global_arrays.keys():
        got, want = update[name], global_arrays[name]
        if tuple(got.shape) != tuple(want.shape):
            return Fault("shape", node, f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}", pid)
        # Float widths may differ (FedAdam's global arrays are float64); another kind (int, bool) would aggregate
        # into silently wrong weights.
        if _kind(got.dtype) != _kind(want.dtype):
            return Fault("dtype", node, f"{name} has dtype {got.dtype}, expected {want.dtype}", pid)
    bad = non_finite_arrays(update)
    if bad:
        name, count = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more arrays)" if len(bad) > 1 else ""
        return Fault("non_finite", node, f"{count} NaN/inf values in {name}{more}", pid)
    return None
