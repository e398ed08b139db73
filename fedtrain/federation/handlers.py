"""Which handlers answer a node's messages: the torch client, or the ONNX client on a node without torch."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message

__all__ = ["Handler", "message_handler", "runtime_handlers"]

Handler = Callable[[Message, Context], Message]

_RUNTIME_KEY = "client-runtime"  # fedtrain.federation.onnx_client.RUNTIME_KEY (which imports onnxruntime)


def runtime_handlers(context: Context) -> tuple[Handler, Handler]:
    """This node's (train, evaluate) handlers, imported at its first message: torch + Opacus, or ONNX Runtime.

    Chosen by the node config's ``client-runtime`` (else the run's); importing the torch handlers at load time would
    keep a torch-free SuperNode from loading the ClientApp at all. A plain ``torch`` is read off the configs as they
    are: the ONNX client's module (onnxruntime, the edge trainer) is imported only where it may run or must refuse.
    """
    from fedtrain.config.schema import RuntimeConfig

    raw = context.node_config.get(_RUNTIME_KEY, context.run_config.get(_RUNTIME_KEY, RuntimeConfig.client_runtime))
    if str(raw).strip() == "torch":
        from fedtrain.federation import client as torch_client

        return torch_client.handle_train, torch_client.handle_evaluate
    from fedtrain.federation.onnx_client import device_config, runtime_of

    if runtime_of(device_config(context.run_config), context.node_config) == "onnx":
        from fedtrain.federation import onnx_client

        return onnx_client.handle_train, onnx_client.handle_evaluate
    from fedtrain.federation import client

    return client.handle_train, client.handle_evaluate


def message_handler(kind: str, context: Context) -> Handler:
    """The handler of a ``train`` or ``evaluate`` message on this node."""
    train, evaluate = runtime_handlers(context)
    if kind == "train":
        return train
    if kind == "evaluate":
        return evaluate
    raise ValueError(f"no handler for a {kind!r} message (train or evaluate)")
