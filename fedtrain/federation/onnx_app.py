"""The ClientApp of a node without torch: fedtrain's ClientApp, with the ONNX handlers.

The same mods as :func:`fedtrain.federation.apps.build_client_app` (SecAgg+, user-level clipping), the same reply
layout; it imports no torch, so a process of a torch-free venv can load it (``tests/test_edge_train_notorch.py``).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedtrain.federation.onnx_client import handle_evaluate, handle_train
from fedtrain.federation.secagg_client import secagg_mod
from fedtrain.privacy.client_mods import user_dp_clipping_mod

__all__ = ["build_onnx_client_app"]


def build_onnx_client_app() -> ClientApp:
    """The ClientApp that trains and evaluates with ONNX Runtime (``client-runtime=onnx``)."""
    app = ClientApp()

    @app.train(mods=[secagg_mod, user_dp_clipping_mod])
    def train(msg: Message, context: Context) -> Message:
        """Train the global model on this node's local data, with the run's gradient graphs."""
        return handle_train(msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Evaluate the global model on this node's local evaluation share."""
        return handle_evaluate(msg, context)

    return app
