"""The in-process path's shortcuts give what the long way gives: message copies, round checkpoints, central scores."""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtrain.data import ArrayDataset
from fedtrain.federation.tracking.evaluation import score_split
from fedtrain.results import RunFolder, load_checkpoint_file
from fedtrain.results import run_folder as run_folder_module
from fedtrain.runtime import run_inprocess
from fedtrain.runtime.grid import InProcessGrid, delivered_copy
from fedtrain.train import evaluate


def _content() -> RecordDict:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = {**net.state_dict(), "step": torch.tensor(3.0)}  # a 0-d array too
    return RecordDict(
        {
            "arrays": ArrayRecord(state),
            "config": ConfigRecord({"lr": 0.1, "rows": ["a", "b"], "blob": b"xy"}),
            "metrics": MetricRecord({"n": 3, "hist": [1.0, 2.0]}),
        }
    )


def _sent() -> Message:
    InProcessGrid(ClientApp(), 1, {})  # sets the sender identity a Message built outside Flower needs
    return Message(_content(), 1001, "train", group_id="7")


def test_a_delivered_copy_equals_a_deep_copy():
    msg = _sent()
    deep, delivered = copy.deepcopy(msg), delivered_copy(msg)
    assert delivered.metadata.__dict__ == deep.metadata.__dict__
    assert delivered.content.object_id == deep.content.object_id == msg.content.object_id
    assert list(delivered.content.keys()) == list(msg.content.keys())
    for key, array in msg.content["arrays"].items():
        got = delivered.content["arrays"][key].numpy()
        assert got.dtype == array.numpy().dtype and got.shape == array.numpy().shape
        np.testing.assert_array_equal(got, array.numpy())
    assert dict(delivered.content["config"]) == dict(msg.content["config"])
    assert dict(delivered.content["metrics"]) == dict(msg.content["metrics"])


def test_a_delivered_copy_shares_nothing_a_client_can_change():
    msg = _sent()
    parsed: dict = {}
    first, second = delivered_copy(msg, parsed), delivered_copy(msg, parsed)
    weight = first.content["arrays"]["0.weight"].numpy()
    weight += 100.0  # a client changing what it received, every way it can
    first.content["arrays"]["0.bias"] = Array(np.zeros(3, dtype=np.float32))
    first.content["config"]["rows"].append("c")
    first.content["metrics"]["hist"].append(3.0)
    first.content["config"]["lr"] = 9.0
    first.metadata.__dict__["_group_id"] = "other"
    for other in (msg, second):
        np.testing.assert_array_equal(
            other.content["arrays"]["0.weight"].numpy(), _sent().content["arrays"]["0.weight"].numpy()
        )
        assert other.content["arrays"]["0.bias"].shape == (3,) and other.content["arrays"]["0.bias"].numpy().any()
        assert other.content["config"]["rows"] == ["a", "b"] and other.content["config"]["lr"] == 0.1
        assert other.content["metrics"]["hist"] == [1.0, 2.0]
        assert other.metadata.group_id == "7"
    assert first.content["arrays"]["0.weight"].numpy().max() < 100  # numpy() hands out a copy every time


def test_a_push_parses_each_sent_array_once(monkeypatch):
    seen: list[dict[str, np.ndarray]] = []

    def client(msg: Message, context: Context) -> Message:
        seen.append({k: v.numpy() for k, v in msg.content["arrays"].items()})
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    grid = InProcessGrid(client, 3, {})
    content = _content()
    parses = []
    plain_numpy = Array.numpy
    monkeypatch.setattr(Array, "numpy", lambda self: parses.append(1) or plain_numpy(self))
    messages = [grid.create_message(content, "train", node, "1") for node in grid.get_node_ids()]
    replies = list(grid.send_and_receive(messages))
    assert len(replies) == 3 and not any(r.has_error() for r in replies)
    # One parse per array for the three clients; a 0-d array (the step) is copied plain and parsed by each.
    assert len(parses) == len(content["arrays"]) - 1 + 3
    for values in seen[1:]:
        assert values.keys() == seen[0].keys()
        for k in values:
            np.testing.assert_array_equal(values[k], seen[0][k])


def test_a_round_checkpoint_is_fsynced_and_renamed_without_a_folder_sync(tmp_path, monkeypatch):
    folder = RunFolder.create(tmp_path)
    syncs, dir_syncs = [], []
    real_fsync = os.fsync
    monkeypatch.setattr(run_folder_module.os, "fsync", lambda fd: syncs.append(fd) or real_fsync(fd))
    monkeypatch.setattr(run_folder_module, "_fsync_dir", lambda path: dir_syncs.append(path))
    payload = {"arrays": {"w": torch.arange(4.0)}, "state": {"global_round": 1}}
    folder.save_checkpoint(payload, best=True, sync_dir=False)
    assert len(syncs) == 2 and not dir_syncs  # latest and best, each before its rename
    latest, best = load_checkpoint_file(folder.latest_checkpoint), load_checkpoint_file(folder.best_checkpoint)
    assert torch.equal(latest["arrays"]["w"], best["arrays"]["w"]) and latest["state"] == best["state"]
    assert sorted(p.name for p in folder.latest_checkpoint.parent.iterdir()) == ["best.pt", "latest.pt"]  # no tmp
    folder.save_checkpoint({**payload, "state": {"global_round": 2}})
    assert len(syncs) == 3 and len(dir_syncs) == 1  # the default (the run's last save) makes the rename durable
    assert load_checkpoint_file(folder.latest_checkpoint)["state"] == {"global_round": 2}
    assert load_checkpoint_file(folder.best_checkpoint)["state"] == {"global_round": 1}


def test_a_failed_write_leaves_the_old_checkpoints_and_no_temporary_file(tmp_path, monkeypatch):
    folder = RunFolder.create(tmp_path)
    folder.save_checkpoint({"state": {"global_round": 1}}, best=True)
    calls = []

    def failing(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # best.pt's data: latest.pt must not have moved either
            raise OSError("disk full")

    monkeypatch.setattr(run_folder_module.os, "fsync", failing)
    with pytest.raises(OSError, match="disk full"):
        folder.save_checkpoint({"state": {"global_round": 2}}, best=True, sync_dir=False)
    monkeypatch.undo()
    assert load_checkpoint_file(folder.latest_checkpoint)["state"] == {"global_round": 1}
    assert load_checkpoint_file(folder.best_checkpoint)["state"] == {"global_round": 1}
    assert sorted(p.name for p in folder.latest_checkpoint.parent.iterdir()) == ["best.pt", "latest.pt"]


@pytest.mark.parametrize("n, shape", [(7, (5,)), (1024, (5,)), (2500, (1, 4, 4))])
def test_central_scores_equal_fedtrain_evaluate_bit_for_bit(n, shape):
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, 3, n), ("a", "b", "c"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(shape)), 3))
    assert score_split(model, data) == evaluate(model, data)


def test_round_files_are_written_behind_the_next_round_and_complete_when_the_run_returns(small_config, monkeypatch):
    writers = []
    plain = RunFolder.write_checkpoint

    def recording(self, blob, **kwargs):  # type: ignore[no-untyped-def]
        writers.append(threading.current_thread().name)
        plain(self, blob, **kwargs)

    monkeypatch.setattr(RunFolder, "write_checkpoint", recording)
    run_dir = run_inprocess(small_config(num_rounds=3))
    # Rounds 1 and 2 on the writer thread, the stage's last round at once (export and the summary read it); then
    # the run's last write (persist_privacy).
    assert [name.startswith("fedtrain-run-folder") for name in writers[:3]] == [True, True, False]
    folder = RunFolder(run_dir)
    ckpt = folder.load_checkpoint("latest")
    assert len(folder.read_metrics()) == ckpt["state"]["records"] == 3
    assert not [t for t in threading.enumerate() if t.name.startswith("fedtrain-run-folder")]


def test_a_round_file_that_cannot_be_written_fails_the_run(small_config, monkeypatch):
    plain = RunFolder.write_checkpoint
    calls = []

    def failing(self, blob, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise OSError("no space left on device")
        plain(self, blob, **kwargs)

    monkeypatch.setattr(RunFolder, "write_checkpoint", failing)
    cfg = small_config(num_rounds=4)
    with pytest.raises(OSError, match="no space left"):
        run_inprocess(cfg)
    (run_dir,) = Path(cfg.output.out_dir).iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "no space left" in summary["reason"]
    folder = RunFolder(run_dir)  # the folder holds round 1, and resumes from it
    assert folder.load_checkpoint("latest")["state"]["records"] == 1


def _train_replies(small_config, calls: list[tuple[int, int]]) -> list[dict[str, np.ndarray]]:
    """The reply arrays of train calls ``(node, freeze-depth)`` made one after another in this process."""
    from clients.client_app import app
    from fedtrain.data import build_federated_data
    from fedtrain.models import build_model

    cfg = small_config(hidden_sizes="16,8", num_clients=3)
    grid = InProcessGrid(app, 3, cfg.to_flat())  # sets the sender identity messages need
    data = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)
    start = build_model(cfg.model, data.input_shape, len(data.classes), seed=5).state_dict()
    replies, kept = [], []
    for i, (node, depth) in enumerate(calls):
        config = ConfigRecord({"lr": 0.1, "global-round": 1 + i, "freeze-depth": depth})
        msg = Message(RecordDict({"arrays": ArrayRecord(start), "config": config}), node, "train")
        msg.metadata.__dict__["_message_id"] = f"m{i}"
        record = app(msg, grid.contexts[node]).content["arrays"]
        replies.append(record)
        kept.append({k: record[k].numpy().copy() for k in record})  # as it was right after the call
    for record, first in zip(replies, kept, strict=True):  # later calls changed no earlier reply
        for k in first:
            np.testing.assert_array_equal(record[k].numpy(), first[k])
    return kept


def test_a_reused_model_trains_as_a_fresh_one(small_config, monkeypatch):
    from fedtrain.federation import client

    calls = [(1001, 1), (1002, 0), (1001, 0)]  # the first call freezes a layer the next ones train
    client._IDLE.clear()
    reused = _train_replies(small_config, calls)
    assert len(client._IDLE) == 1  # one model served all three calls

    monkeypatch.setattr(client, "_IDLE", _NeverIdle())
    fresh = _train_replies(small_config, calls)
    for a, b in zip(reused, fresh, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(reused[0]["hidden.1.linear.weight"], reused[2]["hidden.1.linear.weight"])


class _NeverIdle(dict):
    """An idle pool that keeps nothing: every call builds its model."""

    def __setitem__(self, key, value) -> None:
        pass
