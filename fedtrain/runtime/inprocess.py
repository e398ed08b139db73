"""Run the real ServerApp and ClientApp of this repository on an :class:`InProcessGrid`."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from fedtrain.config import RunConfig
from fedtrain.runtime.grid import InProcessGrid

__all__ = ["run_inprocess"]


def run_inprocess(cfg: RunConfig, *, grid: InProcessGrid | None = None) -> Path:
    """Run ``cfg`` in this process (no Ray); return the run folder.

    Pass ``grid`` to inspect it afterwards (e.g. its ``client_seconds``).
    """
    from clients.client_app import app as client_app
    from fedtrain.federation.server import RUN_DIR_STATE_KEY
    from server.server_app import app as server_app

    run_config = cfg.to_flat()
    grid = grid or InProcessGrid(client_app, cfg.partition.num_clients, run_config)
    context = Context(run_id=1, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config=run_config)
    server_app(grid, context)
    return Path(str(context.state[RUN_DIR_STATE_KEY]["run-dir"]))
