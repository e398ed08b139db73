"""fedtrain's ServerApp: runs the plan of phases (see ``fedtrain.federation.server``)."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedtrain.federation.server import run_server

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run every phase of the configured plan and write the run folder."""
    run_server(grid, context)
