"""A warm worker: one long-lived process per node that answers the ClientApp's messages with torch loaded once.

On a SuperNode, Flower 1.42 starts a fresh ClientApp process for every message (``flwr-clientapp``; its warm
executor pools are Kubernetes-only). With the torch client that process imports torch (1.3 to 1.9 s on a 2-core
machine) and, under DP, Opacus with scipy and sympy, on every message: most of what a deployed round costs beyond
Flower's own polling. A warm worker (``fedtrain deploy worker``) imports them once and keeps the parsed node data;
the SuperNode's ``--node-config "warm-worker=SOCKET"`` points the ClientApp at it, and the fresh process then only
relays: the message and the node's Context go to the worker, the reply's content and the new ``Context.state``
come back. The mods (SecAgg+ masking, user-level clipping) still run in the fresh process, around the relay.

Every message carries its own Context, so the worker holds no node state between messages: the accountant in
``Context.state`` is the SuperNode's, as without a worker. The worker is an optimisation, never the authority: when it
cannot be reached, fails, stops mid-message or does not answer within :data:`REPLY_TIMEOUT_S`, the fresh process
handles the message itself (with a warning) and nothing of the worker's attempt is kept.

The socket is a Unix socket in a folder only its user may enter; a connection must first answer an HMAC challenge on
a random key the worker writes next to it (mode 600; ``multiprocessing.connection``'s challenge) before anything is
read from it. Frames are protobuf and JSON bytes, never pickles. Each connection has its own thread, so a caller that
connects and stays silent holds only its thread; messages are answered one at a time.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import stat
import threading
import time
import traceback
from collections.abc import Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener, answer_challenge, deliver_challenge
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
from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]

import fedtrain
from fedtrain.errors import FedtrainError
from fedtrain.logging import get_logger

__all__ = ["REPLY_TIMEOUT_S", "WORKER_KEY", "WarmWorkerError", "key_path", "relay", "serve"]

log = get_logger()

WORKER_KEY = "warm-worker"  # node config: the worker's socket path
_OK, _FAILED = b"K", b"E"
_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux (104 on macOS)
FRAME_TIMEOUT_S = 60.0  # the worker's wait for each frame of a request, once a caller has authenticated
HANDSHAKE_TIMEOUT_S = 30.0  # the ClientApp's wait to connect and for the worker's challenge (a frozen worker)
BUSY_TIMEOUT_S = 60.0  # the worker's wait for an earlier message to finish (a SuperNode sends one at a time)
REPLY_TIMEOUT_S = 3600.0  # the ClientApp's wait for the worker's answer (a DP epoch on a small board takes minutes)


class WarmWorkerError(FedtrainError):
    """A warm worker that cannot start: its socket path or folder is unusable, or another worker serves it."""

    exit_code = 7


class _BadRequestError(Exception):
    """A request the worker cannot read (a caller of another fedtrain version, or not a ClientApp)."""


class _StopSignal(BaseException):  # not an error: the way out of a blocking accept
    """SIGTERM or SIGINT: stop serving."""


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
    problem = _not_private(folder)
    if problem:
        raise WarmWorkerError(f"{problem}: give the warm worker a --socket in a folder of your own (mode 700)")


def _not_private(path: Path, mode_mask: int = 0o077) -> str:
    """Why ``path`` is not this user's alone (another owner, or open to others); empty when it is."""
    info = path.lstat()
    if info.st_uid != os.geteuid():
        return f"{path} belongs to another user (uid {info.st_uid}, this process runs as {os.geteuid()})"
    mode = stat.S_IMODE(info.st_mode)
    if mode & mode_mask:
        return f"{path} is open to other users (mode {mode:o}; chmod {0o777 & ~mode_mask:o} {path})"
    return ""


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


def _write_key(path: Path, key: bytes) -> None:
    """Write ``key`` (mode 600) by replacing the file at once: a caller never reads a half-written or stale key."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)  # left by a killed worker of the same pid: O_EXCL then gives mode 600 for sure
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    os.replace(tmp, path)


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


def _frame(conn: Connection) -> bytes:
    if not conn.poll(FRAME_TIMEOUT_S):
        raise _BadRequestError(f"no frame within {FRAME_TIMEOUT_S:.0f} s")
    return conn.recv_bytes()


def _read_request(conn: Connection) -> tuple[str, Message, Context]:
    try:
        header = json.loads(_frame(conn))
        kind, version = header["kind"], header["fedtrain"]
        msg = message_from_proto(ProtoMessage.FromString(_frame(conn)))
        context = context_from_proto(ProtoContext.FromString(_frame(conn)))
    except (ValueError, TypeError, KeyError, DecodeError) as err:
        raise _BadRequestError(f"{type(err).__name__}: {err}") from None
    if kind not in ("train", "evaluate"):
        raise _BadRequestError(f"a {kind!r} message (train or evaluate)")
    if version != fedtrain.__version__:
        raise _BadRequestError(
            f"a ClientApp of fedtrain {version}, this worker runs {fedtrain.__version__}: restart it"
        )
    return str(kind), msg, context


def _send_failure(conn: Connection, kind: str, message: str) -> None:
    """The answer without a reply: why, read back by :func:`_failure` (the ClientApp then handles the message)."""
    conn.send_bytes(_FAILED + json.dumps({"type": kind, "message": message}).encode())


def _answer(conn: Connection, handling: threading.Lock) -> None:
    """Read one request (header, message, context), run its handler, write the reply (or why there is none)."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedtrain.federation.handlers import message_handler

    try:
        kind, msg, context = _read_request(conn)
    except _BadRequestError as err:
        log.warning("warm worker: a request it cannot read (%s)", err)
        _send_failure(conn, "BadRequest", str(err))
        return
    if not handling.acquire(timeout=BUSY_TIMEOUT_S):  # one message at a time, as a SuperNode runs its ClientApps
        log.warning("warm worker: still busy with an earlier message after %.0f s; the ClientApp handles this one",
                    BUSY_TIMEOUT_S)  # fmt: skip
        _send_failure(conn, "Busy", "an earlier message is running")
        return
    try:
        if conn.poll(0):  # the caller sends nothing more: readable means it hung up (gave up waiting, or was killed)
            log.warning("warm worker: the ClientApp of a %s message went away before it started", kind)
            return
        start = time.perf_counter()
        # What a SuperNode sets when a ClientApp task starts; only the reply's content goes back, so the ids are
        # placeholders (0: no Flower task runs here).
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = context.run_id, context.node_id, 0
        try:
            handler = message_handler(kind, context)
            reply = handler(msg, context)
            if reply.has_error():
                raise RuntimeError(f"the handler replied with an error: {reply.error.reason}")
        except Exception as err:
            log.error("warm worker: a %s message of node %d raised %s", kind, context.node_id,
                      traceback.format_exc().rstrip())  # fmt: skip
            _send_failure(conn, type(err).__name__, str(err))
            return
        content = recorddict_to_proto(reply.content).SerializeToString()
        state = recorddict_to_proto(context.state).SerializeToString()
        seconds = time.perf_counter() - start
        runtime = "onnx" if "onnx" in handler.__module__ else "torch"
    finally:
        handling.release()
    conn.send_bytes(_OK)
    conn.send_bytes(content)
    conn.send_bytes(state)
    log.info("warm worker: answered a %s message of node %d (%s client) in %.2f s", kind, context.node_id, runtime,
             seconds)  # fmt: skip


def _why(err: BaseException) -> str:
    return str(err) or type(err).__name__


def serve(socket: str | os.PathLike[str], max_messages: int | None = None) -> int:
    """Serve train and evaluate messages on ``socket`` until SIGTERM/SIGINT (or ``max_messages``); returns the count.

    The connection key is written next to the socket (mode 600) once the socket is bound, so "the key exists" means
    "the worker serves"; both are removed on exit. A stop signal ends it normally (exit status 0 in the CLI).

    Raises
    ------
    WarmWorkerError
        When the path is too long for a Unix socket, its folder is another user's or open to others, something other
        than a socket sits at the path, or a worker already serves it.
    """
    path = Path(socket).expanduser().absolute()
    _private_folder(path.parent)
    with _address(path) as address:
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise WarmWorkerError(f"{path} exists and is not a socket: give the warm worker another --socket")
            if _serving(path):
                raise WarmWorkerError(f"a warm worker already serves {path}: stop it first, or give another --socket")
            path.unlink(missing_ok=True)  # left behind by a worker that was killed
        runtime = _preload()
        key = os.urandom(32)
        try:
            listener = Listener(address, family="AF_UNIX")
        except OSError as err:  # another worker bound it while this one was importing torch
            raise WarmWorkerError(f"cannot serve {path}: {_why(err)} (is another warm worker starting?)") from None
        try:
            _write_key(key_path(path), key)
            return _serve_on(listener, path, key, runtime, max_messages)
        finally:
            listener.close()  # removes the socket file (through the same address)
            key_path(path).unlink(missing_ok=True)


def _serve_on(listener: Listener, path: Path, key: bytes, runtime: str, max_messages: int | None) -> int:
    handling, counting = threading.Lock(), threading.Lock()
    served = [0]

    def one(conn: Connection) -> None:
        with conn:
            try:
                deliver_challenge(conn, key)
                answer_challenge(conn, key)
            except (AuthenticationError, OSError, EOFError) as err:  # a caller without the key, or one that hung up
                log.warning("warm worker: refused a connection on %s: %s", path, _why(err))
                return
            try:
                _answer(conn, handling)
            except (OSError, EOFError) as err:  # the ClientApp process went away mid-message
                log.warning("warm worker: lost a ClientApp process mid-message: %s", _why(err))
        with counting:
            served[0] += 1

    def stop(signum: int, _frame: Any) -> None:
        raise _StopSignal(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    log.info("warm worker (%s client, pid %d) ready on %s", runtime, os.getpid(), path)
    try:
        while max_messages is None or served[0] < max_messages:
            conn = listener.accept()
            thread = threading.Thread(target=one, args=(conn,), daemon=True, name="warm-worker-connection")
            thread.start()
            if max_messages is not None:  # a bounded run (tests): one connection at a time, so the count is seen
                thread.join()
    except _StopSignal as sig:
        log.info("warm worker on %s stopped by signal %s after %d messages", path, sig, served[0])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return served[0]


def _connect(address: str, key: bytes) -> Connection:
    """An authenticated connection to the worker at ``address``, or an error within :data:`HANDSHAKE_TIMEOUT_S`.

    The peer must run as this user (``SO_PEERCRED``, Linux): a process of another user that took the path gets
    neither the model nor the Context.
    """
    import socket as sockets
    import struct

    sock = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        sock.connect(address)
        if hasattr(sockets, "SO_PEERCRED"):
            _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(sockets.SOL_SOCKET, sockets.SO_PEERCRED, 12))
            if uid != os.geteuid():
                raise PermissionError(f"the socket's process runs as uid {uid}, not as this user ({os.geteuid()})")
        sock.setblocking(True)
    except BaseException:
        sock.close()
        raise
    conn = Connection(sock.detach())
    try:
        if not conn.poll(HANDSHAKE_TIMEOUT_S):  # the worker sends its challenge first; a frozen one sends nothing
            raise TimeoutError(f"no challenge from the worker within {HANDSHAKE_TIMEOUT_S:.0f} s")
        answer_challenge(conn, key)
        deliver_challenge(conn, key)
    except BaseException:
        conn.close()
        raise
    return conn


def _trusted_key(path: Path) -> bytes:
    """The worker's key, if its folder and the key file are this user's alone (else the socket may be anyone's)."""
    problem = _not_private(path.parent) or _not_private(key_path(path), 0o177)
    if problem:
        raise PermissionError(problem)
    if not stat.S_ISREG(key_path(path).lstat().st_mode):
        raise PermissionError(f"{key_path(path)} is not a regular file")
    return key_path(path).read_bytes()


def relay(socket: str | os.PathLike[str], kind: str, msg: Message, context: Context) -> Message | None:
    """``kind``'s reply to ``msg`` from the warm worker at ``socket``; ``None`` when the worker gave none.

    On a reply ``context.state`` is replaced by the worker's. On ``None`` (no worker, one that is not this user's, a
    failure there, a stop mid-message, no answer within :data:`REPLY_TIMEOUT_S`) nothing was changed, a warning says
    why, and the caller handles the message itself.
    """
    path = Path(socket).expanduser().absolute()
    try:
        key = _trusted_key(path)
        with _address(path) as address:
            conn = _connect(address, key)
    except (AuthenticationError, OSError, EOFError, WarmWorkerError) as err:  # no worker (yet), or not ours
        log.warning("no warm worker on %s (%s): this message is handled in the ClientApp's own process; start one "
                    "with `fedtrain deploy worker`", path, _why(err))  # fmt: skip
        return None
    with conn:
        try:
            conn.send_bytes(json.dumps({"kind": kind, "fedtrain": fedtrain.__version__}).encode())
            conn.send_bytes(message_to_proto(msg).SerializeToString())
            conn.send_bytes(context_to_proto(context).SerializeToString())
            if not conn.poll(REPLY_TIMEOUT_S):
                raise TimeoutError(f"no answer within {REPLY_TIMEOUT_S:.0f} s")
            status = conn.recv_bytes()
            if status != _OK:
                why = status[len(_FAILED) :].decode(errors="replace") if status.startswith(_FAILED) else repr(status)
                log.warning("the warm worker on %s could not answer (%s): handling the message in the ClientApp's "
                            "own process", path, _failure(why))  # fmt: skip
                return None
            content = recorddict_from_proto(ProtoRecordDict.FromString(conn.recv_bytes()))
            state = recorddict_from_proto(ProtoRecordDict.FromString(conn.recv_bytes()))
        except Exception as err:  # stopped mid-message, or an answer it cannot read: nothing of it is kept
            log.warning("the warm worker on %s gave no reply (%s): handling the message in the ClientApp's own "
                        "process", path, _why(err))  # fmt: skip
            return None
    context.state = state
    return Message(content, reply_to=msg)


def _failure(text: str) -> str:
    """``TYPE: message`` from a failure frame's JSON; the text as it is when it is not that."""
    try:
        error = json.loads(text)
        return f"{error['type']}: {error['message']}"
    except (ValueError, TypeError, KeyError):
        return text
