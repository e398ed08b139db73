"""ClientApp calls in worker processes: the in-process grid's ``inprocess-workers`` option.

Workers are forked from the server's process, so they inherit the ClientApp and the data caches; each
call ships a message and its node's ``Context`` there and comes back with the reply and the node's new
``Context.state`` (pickling isolates them as a real runtime's serialisation does). Replies keep the
messages' order, so a run is the same with any number of workers.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedtrain.logging import get_logger

__all__ = ["ClientPool", "call_client_app"]

log = get_logger()
_APP: ClientApp | None = None  # the worker's ClientApp, inherited through fork


def call_client_app(app: ClientApp, msg: Message, context: Context) -> Message:
    """``app(msg, context)``; an exception becomes an error reply, as on Flower's runtimes."""
    try:
        return app(msg, context)
    except Exception as err:  # the server sees an error reply, not a crash
        log.error("ClientApp on node %d raised %s: %s", msg.metadata.dst_node_id, type(err).__name__, err)
        reason = f"{type(err)}:<'{err}'>"
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def _init(threads: int) -> None:
    torch.set_num_threads(threads)


def _work(msg: Message, context: Context) -> tuple[Message, RecordDict, float]:
    assert _APP is not None
    t0 = time.perf_counter()
    reply = call_client_app(_APP, msg, context)
    return reply, context.state, time.perf_counter() - t0


class ClientPool:
    """``workers`` forked processes that run ``app`` on (message, context) pairs."""

    def __init__(self, app: ClientApp, workers: int, torch_threads: int = 1) -> None:
        global _APP
        _APP = app  # before the first fork: the executor starts its workers on the first submit
        context = multiprocessing.get_context("fork")
        self._pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init, initargs=(torch_threads,))

    def run(self, calls: Sequence[tuple[Message, Context]]) -> list[tuple[Message, RecordDict, float]]:
        """Every call's (reply, new Context.state, seconds), in the order of ``calls``."""
        futures = [self._pool.submit(_work, msg, context) for msg, context in calls]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
