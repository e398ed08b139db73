"""fedtrain's ServerApp (what ``flwr run`` loads); built in ``fedtrain.federation.apps``."""

from fedtrain.federation.apps import build_server_app

app = build_server_app()
