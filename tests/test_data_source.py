"""Data sources: the simulated partition, a node's own file, and the data the server holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fedtrain import wire
from fedtrain.config import load_config
from fedtrain.config.data_source import check_data_source
from fedtrain.data import (
    DataSpec,
    FileSource,
    Normalizer,
    PartitionSource,
    build_federated_data,
    data_source,
    normalizer_from_config,
    normalizer_to_config,
    received_spec,
    server_data,
    spec_to_config,
)
from fedtrain.data.federated import write_node_files
from fedtrain.data.source import spec_from_config
from fedtrain.errors import ConfigError, DataError


def _same(a, b) -> None:
    assert (a is None) == (b is None)
    if a is not None:
        assert a.classes == b.classes
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)


def _same_client(a, b) -> None:
    for part in ("train", "eval", "labeled"):
        _same(getattr(a, part), getattr(b, part))


# (train, eval, labelled) sizes and a digest of their arrays, recorded with the code before data sources existed
BEFORE = [(348, 39, 348, "b46ebb3283db1722"), (468, 52, 468, "e319443cf50d1bb7"), (347, 39, 347, "32db4615a901b8ef")]


def test_partition_source_gives_todays_partition(small_config):
    # Prepare
    cfg = small_config(partitioner="pathological", classes_per_client=4)
    spec = server_data(cfg).spec
    # Execute
    sources = [data_source(cfg, {"partition-id": i, "num-partitions": 3}) for i in range(3)]
    # Assert: the very arrays the clients trained on before data sources existed
    assert all(isinstance(s, PartitionSource) for s in sources)
    for i, source in enumerate(sources):
        data = source.client_data(spec)
        digest = hashlib.sha256()
        for ds in (data.train, data.eval, data.labeled):
            digest.update(ds.x.tobytes())
            digest.update(ds.y.tobytes())
        assert source.partition_id == i
        assert (len(data.train.y), len(data.eval.y), len(data.labeled.y), digest.hexdigest()[:16]) == BEFORE[i]


def test_server_data_in_simulation_is_todays_central_data(small_config):
    cfg = small_config()
    fd = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)
    sd = server_data(cfg)
    _same(sd.test, fd.test)
    _same(sd.val, fd.val)
    assert sd.normalizer is fd.normalizer and sd.classes == fd.classes and sd.input_shape == fd.input_shape
    assert sd.federated is fd


def test_file_source_of_a_split_file_equals_the_partition(small_config, tmp_path):
    # Prepare: the split command's files hold each partition raw
    cfg = small_config(partitioner="dirichlet")
    files = write_node_files(cfg, tmp_path / "nodes", server_test=False, overwrite=False)
    spec = server_data(cfg).spec
    fd = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed)
    for i, path in enumerate(files):
        # Execute
        source = data_source(cfg, {"partition-id": i, "data-path": str(path)})
        # Assert: scaled by the federation's normaliser and split with the node's seed, as in a simulation
        assert isinstance(source, FileSource)
        _same_client(source.client_data(spec), fd.clients[i])


def _write(path: Path, x: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> Path:
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64), classes=np.array(classes))
    return path


def test_each_file_source_reads_only_its_own_file(small_config, tmp_path):
    # Prepare: two nodes, disjoint labels and value ranges
    cfg = small_config(num_clients=2, client_eval_fraction=0.0, fraction_evaluate=0.0, labeled_fraction=1.0)
    classes = tuple(str(c) for c in range(10))
    rng = np.random.default_rng(0)
    a = _write(tmp_path / "a.npz", rng.random((30, 1, 8, 8)), np.array([0, 1, 2] * 10), classes)
    b = _write(tmp_path / "b.npz", 10 + rng.random((20, 1, 8, 8)), np.array([7, 8] * 10), classes)
    spec = DataSpec(classes, (1, 8, 8), Normalizer.fit(np.zeros((1, 1, 8, 8)), "none"))
    # Execute
    da = data_source(cfg, {"partition-id": 0, "data-path": str(a)}).client_data(spec)
    db = data_source(cfg, {"partition-id": 1, "data-path": str(b)}).client_data(spec)
    # Assert
    assert set(da.train.y) == {0, 1, 2} and len(da.train.y) == 30 and da.train.x.max() < 1
    assert set(db.train.y) == {7, 8} and len(db.train.y) == 20 and db.train.x.min() >= 10


def test_file_labels_are_mapped_onto_the_federation_classes_by_name(small_config, tmp_path):
    # Prepare: a CSV holding only classes "3" and "7"
    cfg = small_config(num_clients=2)
    path = tmp_path / "node.csv"
    rows = ["f0,f1,label"] + [f"{i},{i + 1},{3 if i % 2 else 7}" for i in range(20)]
    path.write_text("\n".join(rows) + "\n")
    classes = tuple(str(c) for c in range(10))
    spec = DataSpec(classes, (2,), Normalizer.fit(np.zeros((1, 2)), "none"))
    # Execute
    data = data_source(cfg, {"partition-id": 0, "data-path": str(path)}).client_data(spec)
    # Assert: labels index the federation's 10 classes, not the file's 2
    everything = np.concatenate([data.train.y, data.eval.y])
    assert set(everything) == {3, 7} and data.train.classes == classes


def test_file_source_applies_the_received_normaliser_not_its_own(small_config, tmp_path):
    # Prepare
    cfg = small_config(num_clients=2)
    path = write_node_files(cfg, tmp_path, server_test=False, overwrite=False)[0]
    raw = np.load(path)["x"]
    shift, scale = np.full((1, 8, 8), 3.0, np.float32), np.full((1, 8, 8), 2.0, np.float32)
    received = Normalizer("standard", shift, scale, None)
    classes = tuple(str(c) for c in range(10))
    config = spec_to_config(DataSpec(classes, (1, 8, 8), received))  # through the wire format
    source = data_source(cfg, {"partition-id": 0, "data-path": str(path)})
    # Execute
    data = source.client_data(received_spec(cfg, config))
    # Assert: exactly (x - 3) / 2, which no fit on the node's records would give
    records = np.concatenate([data.train.x, data.eval.x])
    assert records.shape == raw.shape
    np.testing.assert_allclose(np.sort(records.ravel()), np.sort(((raw - 3.0) / 2.0).ravel()))
    assert abs(float(records.mean())) > 0.5  # a refitted z-score would be centred


def test_normalize_local_fits_on_the_nodes_own_records(small_config, tmp_path):
    cfg = small_config(num_clients=2, data_source="node", classes="0,1,2,3,4,5,6,7,8,9", input_shape="1,8,8",
                       normalize="standard", normalize_local=True)  # fmt: skip
    path = write_node_files(cfg, tmp_path, server_test=False, overwrite=False)[0]
    spec = server_data(cfg).spec
    data = data_source(cfg, {"partition-id": 0, "data-path": str(path)}).client_data(spec)
    assert abs(float(data.train.x.mean())) < 0.1  # z-scored on its own training records


def test_missing_corrupt_or_mismatched_node_files_say_what_to_fix(small_config, tmp_path):
    cfg = small_config(num_clients=2)
    spec = server_data(cfg).spec
    with pytest.raises(DataError, match=r"does not exist.*data-path"):
        data_source(cfg, {"partition-id": 0, "data-path": str(tmp_path / "nope.npz")}).client_data(spec)
    corrupt = tmp_path / "bad.npz"
    corrupt.write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        data_source(cfg, {"partition-id": 0, "data-path": str(corrupt)}).client_data(spec)
    flat = _write(tmp_path / "flat.npz", np.zeros((10, 64)), np.arange(10), spec.classes)
    with pytest.raises(DataError, match=r"shape \(64,\) but the federation's model takes \(1, 8, 8\)"):
        data_source(cfg, {"partition-id": 0, "data-path": str(flat)}).client_data(spec)
    other = _write(tmp_path / "other.npz", np.zeros((10, 1, 8, 8)), np.arange(10) % 2, ("cat", "dog"))
    with pytest.raises(DataError, match=r"classes \['cat', 'dog'\] are not among the federation's"):
        data_source(cfg, {"partition-id": 0, "data-path": str(other)}).client_data(spec)
    with pytest.raises(ConfigError, match="data-path but no partition-id"):
        data_source(cfg, {"data-path": str(flat)})


def test_node_mode_needs_a_data_path_on_every_node():
    cfg = load_config(overrides={"data-source": "node", "classes": "a,b", "input-shape": "4", "normalize": "none"})
    with pytest.raises(DataError, match="no data-path in its node config"):
        data_source(cfg, {"partition-id": 0, "num-partitions": 10})


def test_normalizer_round_trips_through_a_config_record():
    from flwr.app import ConfigRecord

    x = np.random.default_rng(1).random((50, 1, 8, 8)).astype(np.float32)
    for method in ("standard", "minmax", "range", "none"):
        norm = Normalizer.fit(x, method, 16.0)
        back = normalizer_from_config(ConfigRecord(normalizer_to_config(norm)))  # Flower accepts the values
        assert back is not None and back.method == norm.method and back.clip == norm.clip
        np.testing.assert_array_equal(back(x), norm(x))
    assert normalizer_from_config({}) is None
    with pytest.raises(DataError, match="malformed"):
        normalizer_from_config({wire.NORM_METHOD: "standard", wire.NORM_SHAPE: [2], wire.NORM_SHIFT: [1.0]})


def test_spec_travels_in_train_config():
    spec = DataSpec(("a", "b"), (3,), Normalizer.fit(np.ones((4, 3), np.float32), "minmax"))
    back = spec_from_config(spec_to_config(spec))
    assert back is not None and back.classes == spec.classes and back.input_shape == spec.input_shape
    assert spec_from_config({wire.PHASE: "finetune"}) is None


def test_node_server_data_reads_only_the_server_file(small_config, tmp_path):
    # Prepare
    cfg = small_config(num_clients=2)
    server_file = write_node_files(cfg, tmp_path, server_test=True, overwrite=False)[-1]
    node = small_config(num_clients=2, data_source="node", server_data_path=str(server_file), normalize="range")
    # Execute
    sd = server_data(node)
    # Assert: test + validation are the server file's 360 records, scaled by 1/16 (the file keeps max_value)
    assert sd.federated is None and sd.classes == tuple(str(c) for c in range(10)) and sd.input_shape == (1, 8, 8)
    assert len(sd.test.y) + len(sd.val.y) == len(np.load(server_file)["y"]) == 360
    assert sd.normalizer.method == "range" and float(sd.normalizer.scale.max()) == 16.0


def test_node_server_data_without_a_file_skips_central_evaluation(caplog):
    import logging

    import fedtrain.data.source as source_mod

    cfg = load_config(overrides={"data-source": "node", "classes": "a,b,c", "input-shape": "1,4,4",
                                 "normalize": "range", "input-max": 255})  # fmt: skip
    source_mod._node_server_data.cache_clear()
    with caplog.at_level(logging.INFO):
        sd = server_data(cfg)
    assert "central evaluation is skipped" in caplog.text
    assert sd.test is None and sd.val is None and sd.classes == ("a", "b", "c") and sd.input_shape == (1, 4, 4)
    assert float(sd.normalizer.scale.max()) == 255.0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"server-data-path": "x.npz"}, "applies to data-source=node only"),
        ({"data-source": "node", "normalize": "none"}, "set classes="),
        ({"data-source": "node", "classes": "a,b", "normalize": "none"}, "set input-shape"),
        ({"data-source": "node", "classes": "a,b", "input-shape": "4", "normalize": "range"}, "needs input-max"),
        ({"data-source": "node", "classes": "a,b", "input-shape": "4"}, "server fits it on server-data-path"),
        ({"data-source": "node", "classes": "a", "input-shape": "4", "normalize": "none"}, "at least 2 distinct"),
        ({"data-source": "node", "classes": "a,b", "input-shape": "4,x", "normalize": "none"}, "positive integers"),
        (
            {"data-source": "node", "server-data-path": "s.npz", "normalize-local": True, "dp-level": "sample"},
            "normalize-local=true is refused under dp-level='sample'",
        ),
    ],
)
def test_check_data_source_names_the_keys_to_fix(overrides, match):
    from fedtrain.config import RunConfig
    from fedtrain.config.schema import DataConfig, PrivacyConfig

    # Built directly: the check runs inside the loader, which may refuse these for other reasons first
    data = {k.replace("-", "_"): v for k, v in overrides.items() if k != "dp-level"}
    privacy = PrivacyConfig(dp_level=overrides["dp-level"]) if "dp-level" in overrides else PrivacyConfig()
    cfg = RunConfig(data=DataConfig(**data), privacy=privacy)
    problems = check_data_source(cfg)
    assert any(match in p for p in problems), problems


def test_check_data_source_accepts_the_defaults_and_a_complete_node_setup():
    from fedtrain.config import RunConfig
    from fedtrain.config.schema import DataConfig

    assert check_data_source(RunConfig()) == []
    node = DataConfig(data_source="node", classes="a,b", input_shape="1,8,8", normalize="range", input_max=16.0)
    assert check_data_source(RunConfig(data=node)) == []


def test_a_node_image_folder_may_hold_a_single_class(small_config, tmp_path):
    from PIL import Image

    # Prepare: this device has only pictures of sevens
    cfg = small_config(num_clients=2)
    (tmp_path / "imgs" / "7").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / "imgs" / "7" / f"{i}.png")
    spec = DataSpec(tuple(str(c) for c in range(10)), (1, 8, 8), Normalizer.fit(np.zeros((1, 1, 8, 8)), "none"))
    # Execute
    data = data_source(cfg, {"partition-id": 1, "data-path": str(tmp_path / "imgs")}).client_data(spec)
    # Assert
    assert set(data.train.y) == {7} and len(data.train.y) + len(data.eval.y) == 5


def test_under_dp_standard_on_the_servers_own_file_is_no_private_statistic():
    # With data-source=node the server fits standard on server-data-path (normalize-local is refused under DP):
    # no client record is read, so it needs no opt-in and is not listed outside the budget. Pooled over the
    # simulated clients' partitions it still is.
    from fedtrain.config import load_config
    from fedtrain.errors import ConfigError
    from fedtrain.privacy.unaccounted import unaccounted_statistics

    node = load_config(overrides={"data-source": "node", "server-data-path": "server.npz", "normalize": "standard",
                                  "dp-level": "sample", "dp-target-epsilon": 3.0})  # fmt: skip
    assert node.data.normalize == "standard"
    assert not [s for s in unaccounted_statistics(node) if "normalize" in s]
    with pytest.raises(ConfigError, match="pooled training data of all clients"):
        load_config(overrides={"normalize": "standard", "dp-level": "sample"})
