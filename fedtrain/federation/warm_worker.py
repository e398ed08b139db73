"""A warm worker: one long-lived process per node that answers the ClientApp's messages with torch loaded once.

On a SuperNode, Flower 1.42 starts a fresh ClientApp process for every message (``flwr-clientapp``; its warm
executor pools are Kubernetes-only). With the torch client that process imports torch (1.3 to 1.9 s on a 2-core
machine) and, under DP, Opacus with scipy and sympy, on every message: most of what a deployed round costs beyond
Flower's own polling. A warm worker (``fedtrain deploy worker``) imports them once and keeps the parsed node data;
the SuperNode's ``--node-config "warm-worker=SOCKET"`` points the ClientApp at it, and the fresh process then only
relays: the message and the node's Context go to the worker, the reply's content and the new ``Context.state``
come back. The mods (SecAgg+ masking, user-level clipping) still run in the fresh process, around the relay.

Every message carries its own Context, so the worker holds no node state between messages: the accountant in
``Context.state`` is the SuperNode's, as without a worker, and a message the worker could not answer is handled in
the fresh process (with a warning) without anything committed twice.

The socket is a Unix socket in a folder only its user may enter; a connection must first answer an HMAC challenge on
a random key the worker writes next to it (mode 600; ``multiprocessing.connection``'s authkey). Frames are protobuf
and JSON bytes, never pickles.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import stat
import time
import traceback
from collections.abc import Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext  # type: ignore[attr-defined, unused-ignore]
from flwr.proto.message_pb2 import Message as ProtoMessage  # type: ignore[attr-defined, unused-ignore]
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # type: ignore[attr-defined, unused-ignore]

from fedtrain.errors import FedtrainError
from fedtrain.logging import get_logger

__all__ = ["WORKER_KEY", "WarmWorkerError", "WarmWorkerFailedError", "key_path", "relay", "serve"]

log = get_logger()

WORKER_KEY = "warm-worker"  # node config: the worker's socket path
_OK, _FAILED = b"K", b"E"
_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux (104 on macOS)


class WarmWorkerError(FedtrainError):
    """A warm worker that cannot start: its socket path or folder is unusable, or another worker serves it."""

    exit_code = 7


class WarmWorkerFailedError(RuntimeError):
    """The handler raised in the warm worker; the message names the original error (the worker logs its traceback)."""


def key_path(socket: Path) -> Path:
    """The file holding the worker's connection key, next to its socket."""
    return socket.with_name(socket.name + ".key")


@contextlib.contextmanager
def _address(socket: Path) -> Iterator[str]:
    """An address of ``socket`` within AF_UNIX's length limit: the path itself, or the same file through its folder.

    Where the path is longer (deep folders, test folders), the address is ``/proc/self/fd/N/NAME`` over an open
    descriptor of the folder (Linux).
    """
    if len(os.fsencode(socket)) <= _MAX_SOCKET_PATH:
        yield str(socket)
        return
    short = f"/proc/self/fd/{10**6}/{socket.name}"  # the longest such address (descriptor numbers stay below this)
    if len(os.fsencode(short)) > _MAX_SOCKET_PATH or not os.path.isdir("/proc/self/fd"):
        raise WarmWorkerError(
            f"the warm worker's socket path {socket} is longer than {_MAX_SOCKET_PATH} bytes (a Unix socket limit): "
            "give a shorter --socket"
        )
    folder = os.open(socket.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{socket.name}"
    finally:
        os.close(folder)


def _private_folder(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode & 0o077:
        raise WarmWorkerError(
            f"{folder} is open to other users (mode {mode:o}); the warm worker's socket needs a folder only its user "
            f"may enter: chmod 700 {folder}, or give a --socket in another folder"
        )


def _serving(socket: Path) -> bool:
    """Whether a process accepts connections on ``socket`` (a worker that is up), not just a file left behind."""
    import socket as sockets

    probe = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    try:
        with _address(socket) as address:
            probe.connect(address)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _write_key(path: Path) -> bytes:
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    os.chmod(path, 0o600)  # an older file of another mode keeps its mode through O_TRUNC
    return key


def _preload() -> str:
    """Import the node's client runtime once (what a fresh ClientApp process pays per message); names the runtime."""
    try:
        importlib.import_module("fedtrain.federation.client")  # torch and the training toolkit
    except ImportError:  # a device without torch: the ONNX client
        importlib.import_module("fedtrain.federation.onnx_client")
        return "onnx"
    with contextlib.suppress(ImportError):
        importlib.import_module("fedtrain.privacy.opacus_api")  # Opacus, scipy and sympy: the DP client
    return "torch"


def _answer(conn: Connection) -> None:
    """Read one request (header, message, context), run its handler, write the reply (or the error)."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedtrain.federation.handlers import handler_for

    start = time.perf_counter()
    header = json.loads(conn.recv_bytes())
    msg = message_from_proto(ProtoMessage.FromString(conn.recv_bytes()))
    context = context_from_proto(ProtoContext.FromString(conn.recv_bytes()))
    # What the SuperNode's ClientApp process sets when its task starts (a Message built here reads its sender there).
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = context.run_id, context.node_id, context.node_id
    try:
        reply = handler_for(str(header["kind"]), context)(msg, context)
        if reply.has_error():
            raise WarmWorkerFailedError(f"the handler replied with an error: {reply.error.reason}")
    except Exception as err:
        log.error("warm worker: a %s message of node %d raised %s", header.get("kind"), context.node_id,
                  traceback.format_exc().rstrip())  # fmt: skip
        conn.send_bytes(_FAILED + json.dumps({"type": type(err).__name__, "message": str(err)}).encode())
        return
    conn.send_bytes(_OK)
    conn.send_bytes(recorddict_to_proto(reply.content).SerializeToString())
    conn.send_bytes(recorddict_to_proto(context.state).SerializeToString())
    log.info("warm worker: answered a %s message of node %d in %.2f s", header["kind"], context.node_id,
             time.perf_counter() - start)  # fmt: skip


def serve(socket: str | os.PathLike[str], max_messages: int | None = None) -> int:
    """Serve train and evaluate messages on ``socket`` until SIGTERM/SIGINT (or ``max_messages``); returns the count.

    Writes the connection key next to the socket (mode 600), removes both on exit.

    Raises
    ------
    WarmWorkerError
        When the path is too long for a Unix socket, its folder is open to other users, or a worker already serves it.
    """
    path = Path(socket).expanduser().absolute()
    _private_folder(path.parent)
    with _address(path) as address:
        if path.exists() or path.is_symlink():
            if _serving(path):
                raise WarmWorkerError(f"a warm worker already serves {path}: stop it first, or give another --socket")
            path.unlink()  # left behind by a worker that was killed
        runtime = _preload()
        key = _write_key(key_path(path))
        listener = Listener(address, family="AF_UNIX", authkey=key)
        try:
            return _serve_on(listener, path, runtime, max_messages)
        finally:
            listener.close()  # removes the socket file (through the same address)
            key_path(path).unlink(missing_ok=True)


def _serve_on(listener: Listener, path: Path, runtime: str, max_messages: int | None) -> int:
    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    served = 0
    log.info("warm worker (%s client, pid %d) ready on %s", runtime, os.getpid(), path)
    try:
        while max_messages is None or served < max_messages:
            try:
                conn = listener.accept()
            except (AuthenticationError, OSError, EOFError) as err:  # a caller without the key, or one that hung up
                log.warning("warm worker: refused a connection on %s: %s", path, err or type(err).__name__)
                continue
            with conn:
                try:
                    _answer(conn)
                except (OSError, EOFError) as err:  # the ClientApp process went away mid-message
                    log.warning("warm worker: lost a ClientApp process mid-message: %s", err or type(err).__name__)
            served += 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return served


def relay(socket: str | os.PathLike[str], kind: str, msg: Message, context: Context) -> Message | None:
    """``kind``'s reply to ``msg`` from the warm worker at ``socket``; ``None`` when no worker could answer.

    On success ``context.state`` is replaced by the worker's. On ``None`` nothing was changed, and the caller handles
    the message itself.

    Raises
    ------
    WarmWorkerFailedError
        When the handler raised in the worker (the same error would have been raised here).
    """
    path = Path(socket).expanduser().absolute()
    try:
        key = key_path(path).read_bytes()
        with _address(path) as address:
            conn = Client(address, family="AF_UNIX", authkey=key)
    except (AuthenticationError, OSError, EOFError) as err:  # no worker (yet), or the key of an earlier one
        log.warning("no warm worker on %s (%s): this message is handled in the ClientApp's own process; start one "
                    "with `fedtrain deploy worker`", path, err or type(err).__name__)  # fmt: skip
        return None
    with conn:
        try:
            conn.send_bytes(json.dumps({"kind": kind}).encode())
            conn.send_bytes(message_to_proto(msg).SerializeToString())
            conn.send_bytes(context_to_proto(context).SerializeToString())
            status = conn.recv_bytes()
            if status.startswith(_FAILED):
                error = json.loads(status[len(_FAILED) :])
                raise WarmWorkerFailedError(f"{error['type']}: {error['message']} (in the warm worker at {path})")
            content = recorddict_from_proto(ProtoRecordDict.FromString(conn.recv_bytes()))
            state = recorddict_from_proto(ProtoRecordDict.FromString(conn.recv_bytes()))
        except (OSError, EOFError) as err:  # the worker stopped mid-message: nothing of its work was kept
            log.warning("the warm worker on %s stopped mid-message (%s): handling it in the ClientApp's own process",
                        path, err or type(err).__name__)  # fmt: skip
            return None
    context.state = state
    return Message(content, reply_to=msg)
