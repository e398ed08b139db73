"""The run folder: resolved config, metrics log, checkpoints and summary on disk."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedtrain.config import RunConfig, dump_toml
from fedtrain.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "RunFolder"]

CHECKPOINT_FORMAT = "fedtrain-checkpoint-v1"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunFolder:
    """``<out-dir>/<date>-<time>[-<name>]/`` and the files in it."""

    path: Path

    @classmethod
    def create(cls, out_dir: str | Path, name: str = "") -> RunFolder:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(out_dir) / (f"{stamp}-{name}" if name else stamp)
        path, i = base, 1
        while path.exists():  # two runs in the same second
            path, i = base.with_name(f"{base.name}-{i}"), i + 1
        path.mkdir(parents=True)
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        path = Path(path)
        if not (path / "config.toml").is_file():
            raise CheckpointError(
                f"{str(path)!r} is not a fedtrain run folder (no config.toml); "
                "pass a folder that `fedtrain run` printed"
            )
        return cls(path)

    # --- files ---------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def latest_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "latest.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    def write_config(self, cfg: RunConfig) -> None:
        _atomic_write(self.path / "config.toml", dump_toml(cfg).encode())

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_metrics(self, keep: int) -> None:
        """Keep the first ``keep`` records (those covered by the checkpoint being resumed)."""
        records = self.read_metrics()[:keep]
        _atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records).encode())

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        path = self.path / name
        _atomic_write(path, (json.dumps(payload, indent=2) + "\n").encode())
        return path

    # --- checkpoints ---------------------------------------------------------
    def save_checkpoint(self, payload: dict[str, Any], *, best: bool = False) -> None:
        self.latest_checkpoint.parent.mkdir(exist_ok=True)
        blob = _to_bytes({"format": CHECKPOINT_FORMAT, **payload})
        _atomic_write(self.latest_checkpoint, blob)
        if best:
            _atomic_write(self.best_checkpoint, blob)

    def load_checkpoint(self, which: str = "latest") -> dict[str, Any]:
        path = self.latest_checkpoint if which == "latest" else self.best_checkpoint
        return load_checkpoint_file(path)


def _to_bytes(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint written by :meth:`RunFolder.save_checkpoint`."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}; the run stopped before its first round finished")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a fedtrain checkpoint ({type(err).__name__}); "
            "start a new run, or resume from a run folder with an intact checkpoints/latest.pt"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a {CHECKPOINT_FORMAT} file")
    return payload
