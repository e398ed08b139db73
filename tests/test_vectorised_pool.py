"""The sequential path's process pool (``inprocess-workers``): the same run, two clients at a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Context, Message

from fedtrain.federation.apps import build_client_app
from fedtrain.results import RunFolder
from fedtrain.runtime import InProcessGrid, run_inprocess

DP = {"dp_level": "sample", "dp_noise_multiplier": 1.0, "dp_target_epsilon": 50.0}


def _outcome(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    arrays = RunFolder(run_dir).load_checkpoint("latest")["arrays"]
    return [r["test_accuracy"] for r in RunFolder(run_dir).read_metrics()], summary, arrays


def test_two_workers_give_the_same_dp_run(small_config, monkeypatch):
    from fedtrain.runtime.pool import ClientPool

    one = _outcome(run_inprocess(small_config(num_rounds=2, **DP)))
    calls: list[int] = []
    run = ClientPool.run
    monkeypatch.setattr(ClientPool, "run", lambda self, pairs: calls.append(len(pairs)) or run(self, pairs))
    two = _outcome(run_inprocess(small_config(num_rounds=2, inprocess_workers=2, **DP)))
    assert sum(calls) >= 2 * 3  # every train message of both rounds went through the worker processes
    assert one[0] == two[0] and one[1]["privacy"] == two[1]["privacy"]  # Context.state came back from the workers
    for k in one[2]:
        np.testing.assert_array_equal(np.asarray(one[2][k]), np.asarray(two[2][k]))


def test_a_client_that_raises_in_a_worker_is_an_error_reply(small_config):
    app = build_client_app()

    def broken(msg: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 1:
            raise RuntimeError("disk on fire")
        return app(msg, context)

    cfg = small_config(num_rounds=1)
    grid = InProcessGrid(broken, 3, cfg.to_flat(), workers=2)
    try:
        run_dir = run_inprocess(cfg, grid=grid)
    finally:
        grid.close()
    record = RunFolder(run_dir).read_metrics()[-1]
    assert record["clients_trained"] == 2
    assert record["failures_by_kind"]["error"] == 1, record  # the train reply (its evaluate reply fails too)


@pytest.mark.parametrize("workers", [2])
def test_the_pool_is_closed_after_a_run(small_config, workers):
    cfg = small_config(num_rounds=1, inprocess_workers=workers)
    grid = InProcessGrid(build_client_app(), 3, cfg.to_flat(), workers=workers)
    run_inprocess(cfg, grid=grid)
    assert grid._pool is not None  # a grid passed in is the caller's to close
    grid.close()
    assert grid._pool is None
