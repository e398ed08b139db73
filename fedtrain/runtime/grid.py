"""A Ray-free Flower ``Grid`` that runs the real ClientApp in this process.

Messages are delivered in order: ``push_messages`` runs the ClientApp on its own copy of each
message (real runtimes serialise messages; SecAgg+ relies on that isolation) with the
destination node's own ``Context``, whose ``state`` persists across rounds as on a SuperNode.
The copy is what deserialising would give, made without the serialisation: fresh records, and
arrays whose ``numpy()`` hands out a copy of the sent array, parsed once per push rather than
once per client (a round sends every client the same global arrays).
A ClientApp that raises gets an error reply, as on Flower's runtimes, so failure paths are the
same in-process and under ``flwr run``. Runs are deterministic for a given seed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, SType
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedtrain.federation.exchange.held_arrays import HeldArray
from fedtrain.logging import get_logger
from fedtrain.runtime.pool import ClientPool, call_client_app

__all__ = ["InProcessGrid", "delivered_copy"]

log = get_logger()

_FIRST_NODE_ID = 1001

_Parsed = dict[int, tuple[Array, np.ndarray]]  # id(sent Array) -> (that Array, its parsed values)


def delivered_copy(msg: Message, parsed: _Parsed | None = None) -> Message:
    """``msg`` as a receiving node would see it: nothing in it is shared with ``msg`` or another copy.

    Records are rebuilt, lists in config and metric records copied, and each numpy :class:`Array`
    becomes a :class:`HeldArray` carrying the same (immutable) bytes whose ``numpy()`` returns a fresh
    copy of the values, parsed once for all copies that share ``parsed``. Anything else is deep-copied.
    """
    if not msg.has_content():
        return copy.deepcopy(msg)
    parsed = {} if parsed is None else parsed
    content = RecordDict()
    for key, record in msg.content.items():
        content[key] = _record_copy(record, parsed)
    # Flower's own way to rebuild a message with given metadata (as its deserialisation does); the metadata's
    # fields are immutable values, so a shallow copy is a full one.
    delivered: Message = Message(content=content, metadata=copy.copy(msg.metadata))  # type: ignore[call-overload]
    return delivered


def _record_copy(record: Any, parsed: _Parsed) -> Any:
    if type(record) is ArrayRecord:
        arrays = {k: _array_copy(a, parsed) for k, a in record.items()}
        return _filled(ArrayRecord(), arrays)
    if type(record) in (ConfigRecord, MetricRecord):  # values: scalars, str, bytes (immutable) or lists of them
        values = {k: list(v) if isinstance(v, list) else v for k, v in record.items()}
        return _filled(type(record)(), values)
    return copy.deepcopy(record)


def _filled(record: Any, values: dict[str, Any]) -> Any:
    """``record`` (empty) holding ``values``, taken from a record of the same type, so already valid."""
    store = record.__dict__.get("_data")
    if isinstance(store, dict) and not store:  # Flower 1.42's TypedDict store: skip re-checking every entry
        store.update(values)
    else:
        for k, v in values.items():
            record[k] = v
    return record


def _array_copy(array: Array, parsed: _Parsed) -> Array:
    if type(array) is not Array or array.stype != SType.NUMPY or not array.shape:  # 0-d: plain, as in held_record
        return copy.deepcopy(array)
    entry = parsed.get(id(array))
    if entry is None or entry[0] is not array:
        entry = parsed[id(array)] = (array, array.numpy())
    values = entry[1]
    if not values.flags.c_contiguous:  # a Fortran-order array: HeldArray holds C-contiguous ones
        return copy.deepcopy(array)
    held = HeldArray.__new__(HeldArray)  # as HeldArray.of builds one, with the sent bytes as its data
    held.__dict__.update(dtype=array.dtype, shape=tuple(array.shape), stype=array.stype, _held=values,
                         _data=array.data)  # fmt: skip
    return held  # its numpy() answers values.copy(): the shared parse itself is never handed out


class InProcessGrid(Grid):
    """``num_nodes`` simulated SuperNodes with partition ids ``0..num_nodes-1``.

    ``node_configs`` adds entries to each node's config (``--node-config`` of a SuperNode), e.g. a
    ``data-path`` per node. ``vectorisable`` says that ``client_app`` is fedtrain's own ClientApp, so
    ``round-exchange=vectorised`` may train a round's clients in one batched call instead of calling it
    (a wrapped or custom ClientApp always runs as itself). ``workers > 1`` runs a batch of messages on
    that many forked processes (:class:`~fedtrain.runtime.pool.ClientPool`), replies in message order.
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict[str, Any],
        run_id: int = 1,
        node_configs: list[dict[str, Any]] | None = None,
        *,
        vectorisable: bool = False,
        workers: int = 1,
    ) -> None:
        if node_configs is not None and len(node_configs) != num_nodes:
            raise ValueError(f"{len(node_configs)} node configs for {num_nodes} nodes")
        self._app = client_app
        self.vectorisable = vectorisable
        self.workers = workers
        self._pool: ClientPool | None = None
        self._run = Run.create_empty(run_id)
        self._run.override_config = dict(run_config)
        self.contexts: dict[int, Context] = {
            _FIRST_NODE_ID + i: Context(
                run_id=run_id,
                node_id=_FIRST_NODE_ID + i,
                node_config={"partition-id": i, "num-partitions": num_nodes, **(node_configs or [{}] * num_nodes)[i]},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        self.client_seconds = 0.0  # time spent inside ClientApp calls (benchmarks compare against it)
        # A Message built outside a Flower runtime reads its sender from TaskIdentity, which Flower's own
        # runtimes set through these (public) class-level setters when a task starts.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids, calls = [], []
        for msg in messages:
            msg_id = uuid4().hex
            # Metadata has no setter for the id: Flower's LinkState assigns it the same way (linkstate/utils.py).
            msg.metadata.__dict__["_message_id"] = msg_id
            dst = msg.metadata.dst_node_id
            if dst not in self.contexts:
                raise ValueError(f"message for unknown node {dst}")
            calls.append((msg_id, msg, dst))
            ids.append(msg_id)
        if self.workers > 1 and len(calls) > 1:
            self._push_to_pool(calls)
            return ids
        parsed: _Parsed = {}  # one parse of each array sent in this push, for every copy
        for msg_id, msg, dst in calls:
            content = delivered_copy(msg, parsed)
            t0 = time.perf_counter()
            reply = call_client_app(self._app, content, self.contexts[dst])
            self.client_seconds += time.perf_counter() - t0
            self._keep(msg_id, reply)
        return ids

    def _push_to_pool(self, calls: list[tuple[str, Message, int]]) -> None:
        if self._pool is None:
            self._pool = ClientPool(self._app, self.workers)
        done = self._pool.run([(msg, self.contexts[dst]) for _, msg, dst in calls])
        for (msg_id, _, dst), (reply, state, seconds) in zip(calls, done, strict=True):
            self.contexts[dst].state = state  # what the node's ClientApp left there, as in this process
            self.client_seconds += seconds
            self._keep(msg_id, reply)

    def _keep(self, msg_id: str, reply: Message) -> None:
        reply.metadata.__dict__["_message_id"] = uuid4().hex
        self._replies[msg_id] = reply

    def close(self) -> None:
        """Stop the worker processes, if any were started."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
