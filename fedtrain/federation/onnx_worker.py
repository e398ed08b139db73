"""Serve the ONNX ClientApp over a pipe: a Flower Message in, its reply out (protobuf, length-prefixed).

``python -m fedtrain.federation.onnx_worker`` reads one JSON frame (``node_id``, ``node_config``, ``run_config``)
that makes the node's :class:`~flwr.app.Context` (kept for the worker's life, so ``Context.state`` holds the
accountant across rounds as a SuperNode keeps it), then serves train and evaluate messages until stdin closes.
It lets a process of a venv without torch be a federation's client where no SuperNode runs (the slow test of
``tests/test_edge_train_venv.py``); a deployed device uses a SuperNode instead.
"""

from __future__ import annotations

import json
import struct
import sys
import traceback
from typing import BinaryIO

from flwr.app import Context, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # type: ignore[attr-defined, unused-ignore]
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["read_frame", "serve", "write_frame"]

OK, FAILED = b"K", b"E"


def read_frame(stream: BinaryIO) -> bytes | None:
    """One frame (4-byte big-endian length, then the bytes); ``None`` at the end of the stream."""
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack(">I", head)
    return stream.read(size)


def write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer every message on ``stdin``; a handler's error goes back as an ``E`` frame with its traceback."""
    from fedtrain.federation.onnx_app import build_onnx_client_app

    init = read_frame(stdin)
    if init is None:
        return
    spec = json.loads(init)
    node_id = int(spec["node_id"])
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, node_id, node_id  # a SuperNode sets these
    context = Context(run_id=1, node_id=node_id, node_config=spec["node_config"], state=RecordDict(),
                      run_config=spec["run_config"])  # fmt: skip
    app = build_onnx_client_app()  # with its mods, as a SuperNode would run it
    while (frame := read_frame(stdin)) is not None:
        msg = message_from_proto(ProtoMessage.FromString(frame))
        try:
            reply = app(msg, context)
        except Exception:  # the caller raises it, with the device's traceback
            write_frame(stdout, FAILED + traceback.format_exc().encode())
            continue
        write_frame(stdout, OK + message_to_proto(reply).SerializeToString())


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
