"""A Ray-free Flower ``Grid`` that runs the real ClientApp in this process.

Messages are delivered in order: ``push_messages`` runs the ClientApp on a deep copy of each
message (real runtimes serialise messages; SecAgg+ relies on that isolation) with the
destination node's own ``Context``, whose ``state`` persists across rounds as on a SuperNode.
A ClientApp that raises gets an error reply, as on Flower's runtimes, so failure paths are the
same in-process and under ``flwr run``. Runs are deterministic for a given seed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedtrain.logging import get_logger
from fedtrain.runtime.pool import ClientPool, call_client_app

__all__ = ["InProcessGrid"]

log = get_logger()

_FIRST_NODE_ID = 1001


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
        for msg_id, msg, dst in calls:
            content = copy.deepcopy(msg)
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
