"""The run folder: resolved config, metrics log, checkpoints and summary on disk."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedtrain.config import RunConfig, dump_toml
from fedtrain.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "RunFolder", "atomic_write", "checkpoint_bytes"]

CHECKPOINT_FORMAT = "fedtrain-checkpoint-v1"


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync and rename, so a crash (or power loss) never leaves half a file.

    The temporary name is unique per process and thread: two writers never share one half-written file.
    """
    _replace_all([(path, data)], sync_dir=True)


def _replace_all(files: list[tuple[Path, bytes]], *, sync_dir: bool) -> None:
    """Write each file's data to a temporary file and fsync it, then rename them all into place, in order.

    A rename is only made after its data is on disk, so a power loss leaves each path at its old or its new
    content, never a torn or empty file. ``sync_dir`` also makes the renames durable now (fsync of the folder,
    once); without it a power loss may leave the old content, a state the caller must be able to resume from.
    """
    tmps = [path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp") for path, _ in files]
    try:
        for tmp, (_, data) in zip(tmps, files, strict=True):
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, (path, _) in zip(tmps, files, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    if sync_dir:
        for folder in dict.fromkeys(path.parent for path, _ in files):
            _fsync_dir(folder)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RunFolder:
    """``<out-dir>/<date>-<time>[-<name>]/`` and the files in it."""

    path: Path

    @classmethod
    def create(cls, out_dir: str | Path, name: str = "") -> RunFolder:
        """A new, empty folder; atomic: runs started at once in ``out_dir`` each get their own (suffix ``-1``, ...)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(out_dir) / (f"{stamp}-{name}" if name else stamp)
        base.parent.mkdir(parents=True, exist_ok=True)
        path, i = base, 1
        while True:  # mkdir either creates the folder or fails: no window between a check and the creation
            try:
                path.mkdir(exist_ok=False)
                return cls(path)
            except FileExistsError:  # another run took this name (same second, same name)
                path, i = base.with_name(f"{base.name}-{i}"), i + 1

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
        atomic_write(self.path / "config.toml", dump_toml(cfg).encode())

    def append_metrics(self, record: dict[str, Any] | str) -> None:
        """Append one line (a record, or its JSON), fsynced.

        A crash mid-write leaves at most a torn last line, which reads skip.
        """
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete record; a torn last line (a run killed while appending it) is skipped."""
        if not self.metrics_path.is_file():
            return []
        text = self.metrics_path.read_text(encoding="utf-8", errors="replace")
        records = []
        lines = text.split("\n")
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if index < len(lines) - 1 and any(rest.strip() for rest in lines[index + 1 :]):
                    raise CheckpointError(
                        f"{str(self.metrics_path)!r} line {index + 1} is not JSON; the file was edited or damaged"
                    ) from None
                # the last line, cut off by a crash: the round it belonged to is run again on resume
        return records

    def truncate_metrics(self, keep: int) -> None:
        """Keep the first ``keep`` records (those covered by the checkpoint being resumed)."""
        records = self.read_metrics()[:keep]
        atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records).encode())

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        path = self.path / name
        atomic_write(path, (json.dumps(payload, indent=2) + "\n").encode())
        return path

    # --- checkpoints ---------------------------------------------------------
    def save_checkpoint(self, payload: dict[str, Any], *, best: bool = False, sync_dir: bool = True) -> None:
        """Write ``latest.pt`` (and ``best.pt``), each fsynced before it is renamed into place.

        ``sync_dir=False`` (every round's checkpoint) leaves out the fsync that makes the renames durable at
        once: a power loss may then take back the last round's checkpoint, never tear one, and a resume
        truncates the metrics lines it does not cover and trains that round again.
        """
        self.write_checkpoint(checkpoint_bytes(payload), best=best, sync_dir=sync_dir)

    def write_checkpoint(self, blob: bytes, *, best: bool = False, sync_dir: bool = True) -> None:
        """:meth:`save_checkpoint` of a payload already turned into bytes (:func:`checkpoint_bytes`)."""
        self.latest_checkpoint.parent.mkdir(exist_ok=True)
        files = [(self.latest_checkpoint, blob)] + ([(self.best_checkpoint, blob)] if best else [])
        _replace_all(files, sync_dir=sync_dir)

    def load_checkpoint(self, which: str = "latest") -> dict[str, Any]:
        path = self.latest_checkpoint if which == "latest" else self.best_checkpoint
        if which == "latest" and not path.is_file():
            raise CheckpointError(self._missing_latest())
        return load_checkpoint_file(path)

    def _missing_latest(self) -> str:
        """What is missing when ``latest.pt`` is, and what can be done about it."""
        latest, best = self.latest_checkpoint, self.best_checkpoint
        rounds = len(self.read_metrics())
        if best.is_file():
            try:
                best_round = int(load_checkpoint_file(best)["state"]["global_round"])
            except (CheckpointError, KeyError, TypeError, ValueError):
                best_round = -1
            after = f"after global round {best_round}" if best_round >= 0 else "from the best round"
            return (
                f"no checkpoint at {str(latest)!r} (deleted?), though metrics.jsonl records {rounds} rounds; "
                f"checkpoints/best.pt exists ({after}): to resume from it, run "
                f"`cp {best} {latest}` and resume again (rounds after it run again)"
            )
        if rounds:
            return (
                f"no checkpoint at {str(latest)!r} nor best.pt, though metrics.jsonl records {rounds} rounds: the "
                "checkpoints were deleted and this run cannot be resumed; start a new run"
            )
        return f"no checkpoint at {str(latest)!r}: the run stopped before its first round finished; start a new run"


def checkpoint_bytes(payload: dict[str, Any]) -> bytes:
    """The bytes of ``latest.pt`` holding ``payload``: a snapshot, whatever later happens to its objects."""
    return _to_bytes({"format": CHECKPOINT_FORMAT, **payload})


def _to_bytes(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint written by :meth:`RunFolder.save_checkpoint`."""
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {str(path)!r}: the run stopped before its first round finished, or the file was "
            "deleted; start a new run"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a fedtrain checkpoint ({type(err).__name__}); "
            "start a new run, or resume from a run folder with an intact checkpoints/latest.pt"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        if isinstance(payload, dict) and "format" in payload:
            what = f"it is format {payload['format']!r}, from another fedtrain version"
        else:
            what = f"it holds a {type(payload).__name__}" + (" without a 'format' entry" if isinstance(payload, dict)
                                                              else "")  # fmt: skip
        raise CheckpointError(
            f"{str(path)!r} is not a {CHECKPOINT_FORMAT} file ({what}); start a new run, or re-run the fedtrain "
            "version that wrote it"
        )
    return payload
