"""The no-op ServerApp: ``num-rounds`` rounds of one train message per node, each round timed on the server."""

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    rounds, nodes = int(cfg["num-rounds"]), int(cfg["num-nodes"])
    while len(node_ids := list(grid.get_node_ids())) < nodes:  # as fedtrain's strategy waits for min-clients
        time.sleep(1.0)
    arrays = ArrayRecord({"w": Array(np.zeros(int(cfg["num-params"]), dtype=np.float32))})
    seconds = []
    for server_round in range(1, rounds + 1):
        t0 = time.perf_counter()
        messages = [
            Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})}),
                    dst_node_id=node, message_type=MessageType.TRAIN)
            for node in node_ids
        ]  # fmt: skip
        replies = list(grid.send_and_receive(messages, timeout=600))
        assert all(r.has_content() for r in replies), [r.error for r in replies if not r.has_content()]
        seconds.append(time.perf_counter() - t0)
        print(f"noop round {server_round}: {seconds[-1]:.2f} s")
    if cfg["out-file"]:
        Path(str(cfg["out-file"])).write_text(json.dumps({"seconds": seconds}))
