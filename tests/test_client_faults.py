"""Client faults survived, in-process: a client that raises, hangs, or sends NaN, misshapen or oversized updates.

Each fault is a wrapped ClientApp that misbehaves on one partition's train replies. The in-process grid
calls ClientApps synchronously, so a hang is simulated by :class:`TimeoutGrid`: a hanging client adds the
seconds it would hang to the grid's clock instead of sleeping, and the grid drops each reply that took longer
than the round's timeout (real seconds plus simulated ones), as Flower's grid does: the server sees no reply.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message

from fedtrain.federation import build_client_app
from fedtrain.results import RunFolder
from fedtrain.runtime import InProcessGrid, run_inprocess

BAD = 0  # the partition that misbehaves
Edit = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, np.ndarray]]


class TimeoutGrid(InProcessGrid):
    """Drops each reply that took longer than ``timeout``: a node that did not answer in time."""

    hung = 0.0  # simulated seconds the ClientApp call in progress hangs (set by the ClientApp)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            t0, TimeoutGrid.hung = time.perf_counter(), 0.0
            ids = list(self.push_messages([msg]))
            late = timeout is not None and time.perf_counter() - t0 + TimeoutGrid.hung > timeout
            got = list(self.pull_messages(ids))
            replies += [] if late else got
        return replies


def _faulty(edit: Edit | None = None, *, raises: bool = False, hang: float = 0.0):
    """The real ClientApp, except that partition BAD's train replies go wrong."""
    app = build_client_app()

    def client(msg: Message, context: Context) -> Message:
        bad = int(context.node_config["partition-id"]) == BAD and msg.metadata.message_type == "train"
        if bad and raises:
            raise RuntimeError("client crashed")
        if bad and hang:
            TimeoutGrid.hung = hang  # instead of sleeping: the grid's clock moves on
        reply = app(msg, context)
        if bad and edit is not None:
            received = dict(zip(msg.content["arrays"].keys(), msg.content["arrays"].to_numpy_ndarrays(), strict=True))
            sent = dict(zip(reply.content["arrays"].keys(), reply.content["arrays"].to_numpy_ndarrays(), strict=True))
            reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in edit(received, sent).items()})
        return reply

    return client


def _nan(received: dict, sent: dict) -> dict:
    first = next(iter(sent))
    return {**sent, first: np.full_like(sent[first], np.nan)}


def _inf(received: dict, sent: dict) -> dict:
    last = list(sent)[-1]
    return {**sent, last: np.full_like(sent[last], np.inf)}


def _shape(received: dict, sent: dict) -> dict:
    first = next(iter(sent))
    return {**sent, first: sent[first][:-1]}


def _missing(received: dict, sent: dict) -> dict:
    return dict(list(sent.items())[1:])


def _dtype(received: dict, sent: dict) -> dict:
    return {k: v.astype(np.int64) for k, v in sent.items()}  # would aggregate into truncated weights


def oversized(received: dict, sent: dict) -> dict:
    """An update 1000x larger than an honest one: global + 1000 * (local - global)."""
    return {k: received[k] + 1000.0 * (sent[k] - received[k]) for k in sent}


def _run(cfg, client, grid_cls=InProcessGrid) -> tuple[dict, list[dict], Path]:
    run_dir = run_inprocess(cfg, grid=grid_cls(client, cfg.partition.num_clients, cfg.to_flat()))
    return json.loads((run_dir / "summary.json").read_text()), RunFolder(run_dir).read_metrics(), run_dir


def _finite(run_dir: Path, which: str = "latest") -> bool:
    arrays = RunFolder(run_dir).load_checkpoint(which)["arrays"]
    return all(bool(torch.isfinite(v).all()) for v in arrays.values())


CASES = [
    pytest.param({"raises": True}, "error", "client crashed", id="raises"),
    pytest.param({"hang": 3600.0}, "timeout", "no reply before round-timeout", id="hangs"),
    pytest.param({"edit": _nan}, "non_finite", "NaN/inf values", id="nan-weights"),
    pytest.param({"edit": _inf}, "non_finite", "NaN/inf values", id="inf-weights"),
    pytest.param({"edit": _shape}, "shape", "has shape", id="wrong-shape"),
    pytest.param({"edit": _missing}, "shape", "missing", id="missing-array"),
    pytest.param({"edit": _dtype}, "dtype", "dtype int64", id="wrong-dtype"),
]


@pytest.mark.parametrize(("fault", "kind", "detail"), CASES)
def test_the_round_goes_on_without_the_faulty_client(small_config, fedtrain_log, fault, kind, detail):
    cfg = small_config(num_rounds=2, min_clients=2, round_timeout=120.0, fraction_evaluate=0.0)
    summary, records, run_dir = _run(cfg, _faulty(**fault), TimeoutGrid)
    assert summary["status"] == "completed", summary.get("reason")
    assert [r["failures"] for r in records] == [1, 1]
    assert [r["failures_by_kind"] for r in records] == [{kind: 1}, {kind: 1}]
    assert [r["clients_trained"] for r in records] == [2, 2]
    assert all(BAD not in r["trained_partitions"] for r in records)
    events = [line for line in fedtrain_log if "left out of the aggregate" in line]
    assert len(events) == 2 and all(detail in e for e in events), events  # once per round
    assert _finite(run_dir) and _finite(run_dir, "best")
    assert records[-1]["test_accuracy"] > 0.5


@pytest.mark.parametrize(("fault", "kind", "detail"), CASES[:1] + CASES[2:3] + CASES[4:5])
def test_too_few_clients_left_fails_the_round_with_the_reason(small_config, fault, kind, detail):
    cfg = small_config(num_rounds=2, min_clients=3)
    summary, records, run_dir = _run(cfg, _faulty(**fault))
    assert summary["status"] == "failed"
    assert summary["reason"].startswith("round 1: 1 of 3 clients failed, leaving 2 usable updates (< min-clients=3)")
    assert detail in summary["reason"] and "node 1001" in summary["reason"]
    assert records == [] and not (run_dir / "checkpoints" / "best.pt").exists()


def _distance_to_clean(strategy: str, tmp_runs: Callable[..., object]) -> tuple[float, float, float]:
    """With one oversized update of five: (distance of the final global weights to the clean run's, clean test
    accuracy, attacked test accuracy)."""
    opts = {"strategy": strategy, "num_clients": 5, "min_clients": 5, "num_rounds": 2, "fraction_evaluate": 0.0}
    clean = run_inprocess(tmp_runs(**opts, run_name=f"{strategy}-clean"))
    cfg = tmp_runs(**opts, run_name=f"{strategy}-attacked")
    attacked = run_inprocess(cfg, grid=InProcessGrid(_faulty(oversized), 5, cfg.to_flat()))
    a = RunFolder(clean).load_checkpoint("latest")["arrays"]
    b = RunFolder(attacked).load_checkpoint("latest")["arrays"]
    distance = math.sqrt(sum(float(((a[k] - b[k]) ** 2).sum()) for k in a))
    accuracy = [RunFolder(run).read_metrics()[-1]["test_accuracy"] for run in (clean, attacked)]
    return distance, accuracy[0], accuracy[1]


def test_robust_strategies_resist_an_oversized_update_where_fedavg_does_not(small_config):
    figures = {s: _distance_to_clean(s, small_config) for s in ("fedavg", "krum", "fedmedian", "fedtrimmedavg")}
    print({s: tuple(round(v, 4) for v in f) for s, f in figures.items()})
    fedavg_distance, fedavg_clean, fedavg_attacked = figures["fedavg"]
    assert fedavg_attacked < 0.2 < fedavg_clean - 0.4  # FedAvg is ruined: chance level on 10 classes
    for name in ("krum", "fedmedian", "fedtrimmedavg"):
        distance, clean, attacked = figures[name]
        assert distance < fedavg_distance / 1000, (name, figures)  # weights stay next to the clean run's
        assert attacked > clean - 0.1, (name, figures)
