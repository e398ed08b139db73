"""Contracts for the core's registries: every stage, round exchange and data format, read from the registries.

As in tests/test_registry_contracts.py, a new entry is tested here without an edit to this file (a new data
format needs a writer below, and a test says so).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedtrain.config import load_config
from fedtrain.data import load_digits
from fedtrain.data.loaders import DATA_FORMATS, load_dataset
from fedtrain.errors import ConfigError
from fedtrain.federation.exchange import EXCHANGES
from fedtrain.federation.stages import STAGES
from fedtrain.runtime import run_inprocess

# --- stages ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STAGES.names())
def test_every_stage_runs_in_a_two_round_plan(small_config, name):
    plan = "finetune,export" if name == "export" else name  # export alone would export an untrained model
    cfg = small_config(plan=plan, num_rounds=2, pretrain_rounds=2, hidden_sizes="16,8", export_latency_calls=0)
    run_dir = run_inprocess(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary.get("reason")
    stages = [s for entry in cfg.phases for s in STAGES.get(entry)(cfg)]
    assert [p["name"] for p in summary["phases"]] == [s.label for s in stages]
    assert summary["rounds"] == sum(s.num_rounds for s in stages)


# --- round exchanges ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXCHANGES.names())
def test_every_exchange_carries_a_pretrain_and_finetune_plan(small_config, name):
    cfg = small_config(plan="pretrain,finetune", pretrain_rounds=1, num_rounds=2, round_exchange=name)
    run_dir = run_inprocess(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "completed" and [r["clients_trained"] for r in records] == [3, 3, 3]
    assert records[-1]["test_accuracy"] > 0.3  # it aggregated real updates (chance: 0.1)


# --- data formats -------------------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(">u1").tobytes())


def _npz(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez(root / "d.npz", x=x, y=y)
    return root / "d.npz"


def _csv(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    flat = x.reshape(len(x), -1)
    lines = [",".join([f"f{i}" for i in range(flat.shape[1])] + ["label"])]
    lines += [",".join([*map(str, row.tolist()), str(label)]) for row, label in zip(flat, y, strict=True)]
    (root / "d.csv").write_text("\n".join(lines) + "\n")
    return root / "d.csv"


def _idx(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    folder = root / "idx"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte", x[:, 0].astype(np.uint8), 0x08)
    _write_idx(folder / "train-labels-idx1-ubyte", y.astype(np.uint8), 0x08)
    return folder


def _image_folder(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    folder = root / "images"
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].astype(np.uint8), mode="L").save(folder / str(label) / f"{i}.png")
    return folder


WRITERS: dict[str, Callable[[Path, np.ndarray, np.ndarray], Path]] = {
    "npz": _npz, "csv": _csv, "idx": _idx, "image-folder": _image_folder,
}  # fmt: skip


def test_every_data_format_has_a_writer_here():
    assert set(WRITERS) == set(DATA_FORMATS.names())


@pytest.mark.parametrize("name", DATA_FORMATS.names())
def test_every_data_format_reads_back_what_was_written(tmp_path, name):
    digits = load_digits()
    x, y = np.round(digits.x[:40]).astype(np.float32), digits.y[:40]
    path = WRITERS[name](tmp_path, x, y)
    written = sorted((str(label), tuple(row)) for row, label in zip(x.reshape(len(x), -1).tolist(), y, strict=True))
    for data_format in (name, "auto"):
        ds = load_dataset(path, data_format)  # class names travel; their order may differ (folders sort)
        flat = ds.x.reshape(len(ds.y), -1).tolist()
        read = sorted((ds.classes[label], tuple(row)) for row, label in zip(flat, ds.y, strict=True))
        assert read == written


def test_data_format_choices_come_from_the_registry():
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"dataset": "file", "data-format": "parquet", "data-path": "x"})
    assert all(name in str(err.value) for name in ("auto", *DATA_FORMATS.names()))
