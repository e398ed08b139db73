"""fedtrain's Flower apps, built here so that every grid runs the very same ServerApp and ClientApp.

``server/server_app.py`` and ``clients/client_app.py`` (what ``flwr run`` loads) are one line each
over these builders; the in-process runtime uses the builders directly, so the library never
imports the app folders.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedtrain.federation.handlers import message_handler
from fedtrain.federation.secagg_client import secagg_mod
from fedtrain.federation.warm_worker import WORKER_KEY, relay
from fedtrain.privacy.client_mods import user_dp_clipping_mod

__all__ = ["build_client_app", "build_server_app"]


def _handle(kind: str, msg: Message, context: Context) -> Message:
    """``kind``'s reply: from the node's warm worker where its node config names one and it answers, else here."""
    socket = str(context.node_config.get(WORKER_KEY, "")).strip()
    if socket:
        reply = relay(socket, kind, msg, context)
        if reply is not None:
            return reply
    return message_handler(kind, context)(msg, context)


def build_client_app() -> ClientApp:
    """The ClientApp: local pretraining and fine-tuning (with DP when asked), and local evaluation."""
    app = ClientApp()

    # Each acts only when asked. Under SecAgg+ the user-level clipping is done before masking by the handler's
    # legacy-layout reply (fedtrain.federation.secagg_client.as_fitres), not by the clipping mod.
    @app.train(mods=[secagg_mod, user_dp_clipping_mod])
    def train(msg: Message, context: Context) -> Message:
        """Train the global model on this node's local data."""
        return _handle("train", msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Evaluate the global model on this node's local evaluation share."""
        return _handle("evaluate", msg, context)

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
