"""`fedtrain split`: one data file per device, and federations that read them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from flwr.common.config import parse_config_args

import fedtrain.data.source as source_mod
from fedtrain.cli import main
from fedtrain.config import load_config, parse_overrides
from fedtrain.data import FileSource, data_source, load_dataset, raw_splits, server_data
from fedtrain.data.federated import write_node_files
from fedtrain.results import RunFolder
from fedtrain.runtime import run_inprocess


def _rows(x: np.ndarray, y: np.ndarray) -> Counter:
    return Counter(xi.tobytes() + bytes([yi]) for xi, yi in zip(x, y, strict=True))


def test_split_files_are_disjoint_and_their_union_is_the_training_split(small_config, tmp_path):
    # Prepare
    cfg = small_config(num_clients=4, partitioner="dirichlet")
    raw = raw_splits(cfg.data, cfg.partition, cfg.runtime.seed)
    # Execute
    files = write_node_files(cfg, tmp_path, server_test=True, overwrite=False)
    # Assert
    assert [p.name for p in files] == [
        "client-0.npz",
        "client-1.npz",
        "client-2.npz",
        "client-3.npz",
        "server-test.npz",
    ]
    parts = [np.load(p) for p in files[:4]]
    assert sum(len(p["y"]) for p in parts) == len(raw.train.y)  # no record in two files ...
    union = sum((_rows(p["x"], p["y"]) for p in parts), Counter())
    assert union == _rows(raw.train.x, raw.train.y)  # ... and none left out
    for p, idx in zip(parts, raw.parts, strict=True):
        assert list(p["classes"]) == [str(c) for c in range(10)] and float(p["max_value"]) == 16.0
        np.testing.assert_array_equal(p["y"], raw.train.y[idx])
    assert max(float(p["x"].max()) for p in parts) == 16.0  # raw pixel values: scaling is the federation's
    server = np.load(files[-1])
    assert len(server["y"]) == len(raw.test.y) == 360


def test_split_command_prints_the_node_configs_to_use(small_config, tmp_path, capsys):
    # Execute
    code = main(["split", str(tmp_path / "out"), "--run-config", "num-clients=2 partitioner=iid", "--server-test"])
    # Assert: each printed --node-config, parsed as Flower parses it, makes that node read its own file
    assert code == 0
    out = capsys.readouterr().out
    node_configs = [
        line.split('--node-config "')[1].rstrip('"') for line in out.splitlines() if "--node-config" in line
    ]
    assert len(node_configs) == 2
    cfg = small_config(num_clients=2, partitioner="iid")
    for pid, text in enumerate(node_configs):
        node = parse_config_args([text])
        source = data_source(cfg, node)
        assert isinstance(source, FileSource) and source.partition_id == pid
        assert source.path == (tmp_path / "out" / f"client-{pid}.npz").resolve()
    assert "data-source=node" in out and "server-data-path=" in out


def test_split_refuses_to_overwrite_without_force(tmp_path, capsys):
    args = ["split", str(tmp_path), "--run-config", "num-clients=2"]
    assert main(args) == 0
    assert main(args) == 3  # DataError
    assert "already exist; pass --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


def test_split_reads_a_data_path(tmp_path, capsys):
    # Prepare: a CSV data set of two named classes
    rng = np.random.default_rng(0)
    rows = ["a,b,label"] + [f"{rng.random():.4f},{rng.random():.4f},{'cat' if i % 2 else 'dog'}" for i in range(80)]
    csv = tmp_path / "pets.csv"
    csv.write_text("\n".join(rows) + "\n")
    # Execute
    code = main(
        ["split", str(tmp_path / "out"), "--data-path", str(csv), "--run-config", "num-clients=2 normalize=none"]
    )
    # Assert
    assert code == 0
    files = sorted((tmp_path / "out").glob("client-*.npz"))
    loaded = [load_dataset(p, min_classes=1) for p in files]
    assert len(files) == 2 and all(ds.classes == ("cat", "dog") and ds.input_shape == (2,) for ds in loaded)
    assert sum(len(ds.y) for ds in loaded) == 80 - 16 - 7  # minus the test split (20 %) and validation (10 %, up)
    assert "classes='cat,dog' input-shape='2'" in capsys.readouterr().out


@pytest.fixture
def reads(monkeypatch) -> list[tuple[int, Path]]:
    """Every (partition id, file) a FileSource reads in this test."""
    seen: list[tuple[int, Path]] = []
    real = FileSource.raw

    def spy(self, spec):
        seen.append((self.partition_id, self.path))
        return real(self, spec)

    source_mod._node_records.cache_clear()
    monkeypatch.setattr(FileSource, "raw", spy)
    return seen


def test_two_nodes_on_their_own_files_run_as_the_simulation_does(small_config, tmp_path, reads):
    # Prepare: the split command's files for 2 clients
    cfg = small_config(num_clients=2, partitioner="iid", num_rounds=2)
    files = write_node_files(cfg, tmp_path / "nodes", server_test=False, overwrite=False)
    node_configs = [{"data-path": str(p)} for p in files]
    # Execute
    simulated = RunFolder(run_inprocess(cfg)).read_metrics()
    assert reads == []  # the simulation reads no node file
    on_files = RunFolder(run_inprocess(cfg, node_configs=node_configs)).read_metrics()
    # Assert: each node read only its own file, and the federation learned exactly as on the partitions
    assert len(simulated) == len(on_files) == 2
    assert {pid: {p.name for q, p in reads if q == pid} for pid, _ in reads} == {
        0: {"client-0.npz"},
        1: {"client-1.npz"},
    }
    assert [r["test_accuracy"] for r in on_files] == [r["test_accuracy"] for r in simulated]
    assert [r["train_loss"] for r in on_files] == [r["train_loss"] for r in simulated]
    assert on_files[-1]["test_accuracy"] > 0.8


def test_node_mode_federation_needs_no_client_data_at_the_server(small_config, tmp_path, reads, monkeypatch):
    # Prepare: node files and a server test file; nobody may rebuild the federation's data from the seed
    split_cfg = small_config(num_clients=2, partitioner="iid")
    files = write_node_files(split_cfg, tmp_path / "nodes", server_test=True, overwrite=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the federation's data was rebuilt from the seed in data-source=node")

    monkeypatch.setattr(source_mod, "build_federated_data", refuse)
    monkeypatch.setattr("fedtrain.data.federated.raw_splits", refuse)
    cfg = small_config(num_clients=2, num_rounds=2, data_source="node", server_data_path=str(files[-1]),
                       normalize="range", dataset="file", data_path=str(tmp_path / "absent"))  # fmt: skip
    # Execute
    run_dir = run_inprocess(cfg, node_configs=[{"data-path": str(p)} for p in files[:2]])
    # Assert
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary.get("reason")
    assert {(pid, p.name) for pid, p in reads} == {(0, "client-0.npz"), (1, "client-1.npz")}
    assert summary["final"]["accuracy"] > 0.6  # on the server's own file; measured 0.76 (chance: 0.1)


def test_fedtrain_run_takes_the_node_configs_split_prints(tmp_path, capsys, reads):
    # Prepare
    config = "num-clients=2 partitioner=iid num-rounds=1 min-clients=2 progress=false report=false"
    assert main(["split", str(tmp_path / "nodes"), "--run-config", config]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "--node-config" in line]
    node_args = [arg for line in lines for arg in ("--node-config", line.split('--node-config "')[1].rstrip('"'))]
    # Execute
    code = main(["run", "--out", str(tmp_path / "runs"), "--run-config", config, *node_args])
    # Assert
    assert code == 0
    assert {(pid, p.name) for pid, p in reads} == {(0, "client-0.npz"), (1, "client-1.npz")}
    assert main(["run", "--run-config", config, "--node-config", "data-path='x.npz'"]) == 2  # one per client
    assert "1 --node-config options for num-clients=2" in capsys.readouterr().err


def _printed(out: str) -> tuple[list[str], str]:
    """The node configs and the server's run config that ``fedtrain split`` printed."""
    lines = out.splitlines()
    nodes = [line.split('--node-config "')[1].rstrip('"') for line in lines if "--node-config" in line]
    (server,) = [line.split('--run-config "')[1].rstrip('"') for line in lines if line.startswith("run config:")]
    return nodes, server


@pytest.mark.parametrize(
    ("split_config", "server_test", "method"),
    [
        ("normalize=range", False, "range"),
        ("dp-level=sample", False, "range"),  # range is the DP default
        ("dp-level=sample", True, "range"),
        ("", False, "range"),  # standard cannot be fitted without data at the server
        ("normalize=none", False, "none"),
        ("normalize=minmax", True, "minmax"),  # fitted on the server's file
    ],
)
def test_split_prints_a_server_run_config_the_loader_accepts(tmp_path, capsys, split_config, server_test, method):
    # Prepare
    split = f"num-clients=2 partitioner=iid {split_config}"
    # Execute
    args = ["split", str(tmp_path / "nodes"), "--run-config", split, *(["--server-test"] if server_test else [])]
    assert main(args) == 0
    _, printed = _printed(capsys.readouterr().out)
    # Assert: the printed run config loads with the split's keys and on its own, and scales as the split's data
    cfg = load_config(overrides={**parse_overrides(split), **parse_overrides(printed)})
    alone = load_config(overrides=parse_overrides(printed))
    assert alone.data.data_source == cfg.data.data_source == "node"
    assert alone.data.normalize == cfg.data.normalize == method
    source_mod._node_server_data.cache_clear()
    norm = server_data(cfg).normalizer
    assert norm.method == method
    if method == "range":
        assert float(norm.scale.max()) == float(norm.scale.min()) == 16.0  # the digits' nominal maximum


def test_split_run_config_without_a_server_file_runs_with_the_printed_node_configs(tmp_path, capsys, reads):
    # Prepare: split under normalize=range, no server file: the server reads no data at all
    assert main(["split", str(tmp_path / "nodes"), "--run-config", "num-clients=2 normalize=range"]) == 0
    nodes, printed = _printed(capsys.readouterr().out)
    small = {"num-rounds": 1, "min-clients": 2, "hidden-sizes": "32", "progress": False, "report": False}
    cfg = load_config(overrides={**parse_overrides(printed), **small, "out-dir": str(tmp_path / "runs")})
    source_mod._node_server_data.cache_clear()
    # Execute
    run_dir = run_inprocess(cfg, node_configs=[parse_config_args([text]) for text in nodes])
    # Assert
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary.get("reason")
    assert {(pid, p.name) for pid, p in reads} == {(0, "client-0.npz"), (1, "client-1.npz")}


NODE_MODE = (
    "data-source=node num-clients=2 classes='0,1,2,3,4,5,6,7,8,9' input-shape='1,8,8' normalize=range input-max=16 "
    "num-rounds=1 min-clients=2 progress=false report=false"
)


@pytest.mark.parametrize(
    ("run_config", "node_configs", "message"),
    [
        (NODE_MODE, [], 'pass one --node-config "data-path=FILE" per client (2'),
        (NODE_MODE, ["data-path='a.npz'", "partition-id=1"], "--node-config #2 has no data-path"),
        ("num-clients=2", ["partition-id=0", "partition-id=0"], "#2 and #1 both train partition-id=0"),
        ("num-clients=2", ["data-path='a.npz'", "partition-id=0"], "#2 and #1 both train partition-id=0"),
        ("num-clients=2", ["partition-id=1", "partition-id=2"], "partition-id=2 is outside 0..1"),
        ("num-clients=2", ["partition-id=-1", "partition-id=1"], "partition-id=-1 is outside 0..1"),
        ("num-clients=2", ["partition-id=0.5", "partition-id=1"], "must be an integer in 0..1"),
        ("num-clients=2", ["partition-id=0 num-partitions=3", "partition-id=1"], "num-partitions=3 but num-clients=2"),
    ],
)
def test_run_refuses_node_configs_that_cannot_work_before_any_run_folder(
    tmp_path, capsys, run_config, node_configs, message
):
    # Execute
    node_args = [arg for text in node_configs for arg in ("--node-config", text)]
    code = main(["run", "--out", str(tmp_path / "runs"), "--run-config", run_config, *node_args])
    # Assert
    assert code == 2  # ConfigError
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
