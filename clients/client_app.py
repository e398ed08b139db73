"""fedtrain's ClientApp: local training and evaluation (see ``fedtrain.federation.client``)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedtrain.federation.client import handle_evaluate, handle_train
from fedtrain.privacy.client_mods import user_dp_clipping_mod

app = ClientApp()


@app.train(mods=[user_dp_clipping_mod])  # client-side clipping for user-level DP, when asked
def train(msg: Message, context: Context) -> Message:
    """Train the global model on this node's partition."""
    return handle_train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this node's local evaluation share."""
    return handle_evaluate(msg, context)
