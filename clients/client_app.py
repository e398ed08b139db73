"""fedtrain's ClientApp (what ``flwr run`` loads); built in ``fedtrain.federation.apps``."""

from fedtrain.federation.apps import build_client_app

app = build_client_app()
