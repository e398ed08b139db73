"""fedtrain's Flower apps, built here so that every grid runs the very same ServerApp and ClientApp.

``server/server_app.py`` and ``clients/client_app.py`` (what ``flwr run`` loads) are one line each
over these builders; the in-process runtime uses the builders directly, so the library never
imports the app folders.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedtrain.federation.secagg_client import secagg_mod
from fedtrain.privacy.client_mods import user_dp_clipping_mod

__all__ = ["build_client_app", "build_server_app"]


Handler = Callable[[Message, Context], Message]


_RUNTIME_KEY = "client-runtime"  # fedtrain.federation.onnx_client.RUNTIME_KEY (which imports onnxruntime)


def _handlers(context: Context) -> tuple[Handler, Handler]:
    """This node's handlers, imported at its first message: torch + Opacus, or ONNX Runtime on a node without torch.

    Chosen by the node config's ``client-runtime`` (else the run's); importing the torch handlers at load time would
    keep a torch-free SuperNode from loading this ClientApp at all. A plain ``torch`` is read off the configs as they
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


def build_client_app() -> ClientApp:
    """The ClientApp: local pretraining and fine-tuning (with DP when asked), and local evaluation."""
    app = ClientApp()

    # Each acts only when asked. Under SecAgg+ the user-level clipping is done before masking by the handler's
    # legacy-layout reply (fedtrain.federation.secagg_client.as_fitres), not by the clipping mod.
    @app.train(mods=[secagg_mod, user_dp_clipping_mod])
    def train(msg: Message, context: Context) -> Message:
        """Train the global model on this node's local data."""
        return _handlers(context)[0](msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Evaluate the global model on this node's local evaluation share."""
        return _handlers(context)[1](msg, context)

    return app


def build_server_app() -> ServerApp:
    """The ServerApp: runs every stage of the configured plan and writes the run folder."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        """Run the plan on ``grid``."""
        from fedtrain.federation.server import run_server  # not on the clients, which start once per message

        run_server(grid, context)

    return app
