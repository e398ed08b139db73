"""fedtrain's ClientApp (what ``flwr run`` loads); built in ``fedtrain.federation.apps``."""

import atexit
import gc

from fedtrain.federation.apps import build_client_app

# A deployed ClientApp process handles one message and exits (flwr 1.42). At exit the interpreter's last garbage
# collections walk every object torch's import made: 0.5 to 1 s of CPU per message on 2 cores, taken from the other
# node's process. Frozen objects are skipped; by then the reply and the Context have been pushed, and what
# fedtrain leaves open is closed by ``with`` blocks and reference counting, which freezing does not touch.
atexit.register(gc.freeze)

app = build_client_app()
