"""A deployed ClientApp starts a fresh process per message: what it imports and parses then must stay small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedtrain.data.cache import cached, checksum
from fedtrain.data.loaders import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_the_client_app_imports_neither_the_server_side_nor_dp_libraries():
    code = (
        "import sys, json, clients.client_app; "
        "print(json.dumps(sorted(m for m in ('onnx', 'onnxruntime', 'opacus', 'sklearn', 'matplotlib', "
        "'fedtrain.export', 'fedtrain.federation.server') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# What no message of a torch node imports: the ONNX client and the server side, and torch._dynamo, which torch.optim's
# own optimizers import on first use (fedtrain.train.optimizers runs their update rules without it; 0.6-1.1 s).
_NEVER_PER_MESSAGE = ("torch._dynamo", "onnx", "onnxruntime", "sklearn", "matplotlib", "fedtrain.export",
                      "fedtrain.federation.server", "fedtrain.federation.onnx_client", "fedtrain.edge")  # fmt: skip


@pytest.mark.parametrize("name", ["plain", "dp"])
def test_a_train_message_in_a_fresh_process_imports_no_dynamo_onnx_or_server_side(name, train_messages):
    code = (
        "import sys, json, pickle, clients.client_app as ca\n"
        f"msg, ctx = pickle.loads(open({str(train_messages[name])!r}, 'rb').read())\n"
        "reply = ca.app(msg, ctx)\n"
        "assert not reply.has_error(), reply.error\n"
        f"print(json.dumps(sorted(m for m in {(*_NEVER_PER_MESSAGE, 'opacus')!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == ([] if name == "plain" else ["opacus"])  # Opacus only where DP-SGD runs


def test_the_client_app_process_freezes_its_heap_before_the_interpreter_collects_it_at_exit():
    # atexit runs last-registered first: this probe, registered before the import, runs after the ClientApp's hook.
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count()))\n"
        "import clients.client_app\n"
        "print('frozen before exit:', gc.get_freeze_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    lines = dict(line.split(": ") for line in out.strip().splitlines() if line.startswith("frozen"))
    assert int(lines["frozen before exit"]) == 0 and int(lines["frozen at exit"]) > 10_000


def _csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lines = ["a,b,label"] + [f"{rng.normal():.4f},{rng.normal():.4f},{i % 2}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")


def test_a_parsed_file_is_cached_by_checksum_and_read_again_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "node.csv"
    _csv(data, 20)
    calls = []

    def load():
        calls.append(1)
        return load_dataset(data, "csv", "label", min_classes=1)

    first = cached(data, "csv\0label", load)
    second = cached(data, "csv\0label", load)
    assert len(calls) == 1 and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    np.testing.assert_array_equal(first.x, second.x)
    assert first.classes == second.classes and list(first.y) == list(second.y)
    before = checksum(data)
    _csv(data, 30, seed=1)  # a rewritten file is read again
    assert checksum(data) != before
    third = cached(data, "csv\0label", load)
    assert len(calls) == 2 and len(third.y) == 30
    cached(data, "csv\0other-options", load)  # other reading options are another entry
    assert len(calls) == 3


def test_a_damaged_cache_entry_is_read_again_and_the_cache_can_be_off(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "node.csv"
    _csv(data, 10)
    cached(data, "o", lambda: load_dataset(data, "csv", "label", min_classes=1))
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(b"garbage")
    again = cached(data, "o", lambda: load_dataset(data, "csv", "label", min_classes=1))
    assert len(again.y) == 10
    monkeypatch.setenv("FEDTRAIN_CACHE_DIR", "off")
    calls = []
    for _ in range(2):
        cached(data, "o", lambda: calls.append(1) or load_dataset(data, "csv", "label", min_classes=1))
    assert len(calls) == 2
