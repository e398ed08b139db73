"""Run fedtrain's ServerApp and ClientApp on an :class:`InProcessGrid`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from fedtrain.config import RunConfig
from fedtrain.federation.apps import build_client_app, build_server_app
from fedtrain.federation.server import RUN_DIR_STATE_KEY
from fedtrain.runtime.grid import InProcessGrid

__all__ = ["run_inprocess"]


def run_inprocess(
    cfg: RunConfig, *, grid: InProcessGrid | None = None, node_configs: list[dict[str, Any]] | None = None
) -> Path:
    """Run ``cfg`` in this process (no Ray); return the run folder.

    Pass ``grid`` to inspect it afterwards (e.g. its ``client_seconds``); ``node_configs`` gives each
    node its own config entries (e.g. ``data-path``), as ``--node-config`` does for a SuperNode.
    """
    run_config = cfg.to_flat()
    own = grid is None
    if grid is None:
        grid = InProcessGrid(
            build_client_app(), cfg.partition.num_clients, run_config, node_configs=node_configs, vectorisable=True,
            workers=cfg.runtime.inprocess_workers,
        )  # fmt: skip
    context = Context(run_id=1, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config=run_config)
    try:
        build_server_app()(grid, context)
    finally:
        if own:
            grid.close()
    return Path(str(context.state[RUN_DIR_STATE_KEY]["run-dir"]))
