"""Checkpoints: the global arrays with everything needed to resume exactly and to use the model.

Python's ``random`` (Flower's client sampling) and numpy's global generator (Flower's DP noise) are
saved with the state, so a resumed run continues their streams instead of repeating them.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from fedtrain.config import RunConfig, load_config, toml_value
from fedtrain.data import Normalizer
from fedtrain.errors import CheckpointError, FedtrainError
from fedtrain.federation.run_state import RunState
from fedtrain.logging import get_logger
from fedtrain.privacy.ledger import PrivacyLedger
from fedtrain.results import RunFolder
from fedtrain.results.run_folder import checkpoint_bytes

__all__ = ["RESUMABLE_KEYS", "Checkpointer", "ResumePoint", "check_resume_config", "open_run", "seed_generators"]

log = get_logger()

# The only keys ``--resume`` may change: how long the run goes on, when it stops, its budget ceiling, how long it
# waits, and what it writes. Every other key shapes the model, the data, the partitions or the training, so a
# change would make the resumed run another run (or crash loading the checkpoint).
RESUMABLE_KEYS = (
    "num-rounds",
    "early-stopping-patience",
    "early-stopping-min-delta",
    "dp-target-epsilon",
    "dp-user-max-epsilon",
    "round-timeout",
    "secagg-timeout",
    "fraction-evaluate",
    "torch-threads",
    "runtime",
    "out-dir",
    "run-name",
    "resume-dir",
    "progress",
    "report",
    "export-formats",
    "export-ort",
    "export-checkpoint",
    "export-calibration",
    "export-calibration-samples",
    "export-max-accuracy-drop",
    "export-force",
    "export-latency-calls",
)
_DERIVED_KEYS = ("dp-defaults-applied",)  # recomputed by the loader from the keys above


@dataclass
class ResumePoint:
    """A run folder and where its run stands (fresh: no arrays yet)."""

    folder: RunFolder
    state: RunState
    arrays: ArrayRecord | None

    def begin(self) -> None:
        """The resumed run really starts: drop the metrics lines of the round the checkpoint does not cover."""
        if self.arrays is not None:
            self.folder.truncate_metrics(self.state.records)
            log.info("Resuming %s after global round %d", self.folder.path, self.state.global_round)


class Checkpointer:
    """Writes ``latest.pt`` after every round (and ``best.pt`` when the round is the best).

    A round's files (its metrics line, then its checkpoint) are written on a background thread while the
    next round trains: waiting for the disk (fsync) is most of their cost. What they hold is taken when the
    round ends, so later rounds cannot change it. Every other write and read of the checkpoints
    (:meth:`save`, :meth:`persist_privacy`, :meth:`flush`) waits for them first; so does the next round's.
    A crash before they are on disk loses that round too: the folder then holds the round before, and a
    resume truncates the metrics lines its checkpoint does not cover and trains from there.
    """

    def __init__(
        self,
        cfg: RunConfig,
        folder: RunFolder,
        state: RunState,
        privacy: PrivacyLedger,
        normalizer: Normalizer,
        classes: tuple[str, ...],
        input_shape: tuple[int, ...],
        *,
        session_start: float | None = None,
    ) -> None:
        self.cfg, self.folder, self.state, self.privacy = cfg, folder, state, privacy
        # Wall time: the run's earlier sessions (from the state) plus this one, kept current in every checkpoint.
        self._wall_before, self._session_start = state.wall_seconds, session_start or time.perf_counter()
        self.normalizer, self.classes, self.input_shape = normalizer, classes, input_shape
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def update_wall_time(self) -> None:
        self.state.wall_seconds = self._wall_before + time.perf_counter() - self._session_start

    def payload(self, arrays: ArrayRecord) -> dict[str, Any]:
        self.update_wall_time()
        return {
            "arrays": arrays.to_torch_state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "classes": list(self.classes),
            "input_shape": list(self.input_shape),
            "state": self.state.to_dict(),
            "random_state": random.getstate(),
            "numpy_random_state": _numpy_state(self.cfg),
        }

    def save(self, arrays: ArrayRecord, *, best: bool) -> None:
        """A checkpoint of ``arrays`` now (after the round files still being written)."""
        self.flush()
        self.folder.save_checkpoint(self.payload(arrays), best=best, sync_dir=False)

    def save_round(self, record: dict[str, Any], arrays: ArrayRecord, *, best: bool, wait: bool) -> None:
        """The round's metrics line, then its checkpoint; in the background unless ``wait``.

        Each file is fsynced before it counts (the line before the checkpoint that counts it, the checkpoint
        before its rename), so a power loss never tears one; the renames are not synced one by one (the run's
        last write, :meth:`persist_privacy`, is), so a power loss may take back the last rounds, as a crash may.
        """
        line, blob = json.dumps(record), checkpoint_bytes(self.payload(arrays))  # taken now
        self.flush()  # the previous round's files first: the order on disk is the order of the rounds

        def write() -> None:
            self.folder.append_metrics(line)
            self.folder.write_checkpoint(blob, best=best, sync_dir=False)

        if wait:
            write()
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="fedtrain-run-folder")
        self._pending = self._writer.submit(write)

    def flush(self) -> None:
        """Wait until the round files being written are on disk; a write that failed raises here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Flush, and stop the writer thread."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def persist_privacy(self) -> None:
        """Put the ledger's latest state and the wall time into the latest checkpoint, keeping its position.

        A round that ends the run (budget, failure, interrupt) may have spent budget after the last save, and a
        user-level release may have been made in it. The wall time of this session after the last round is kept
        too: a resumed run adds its own to the total in summary.json, not to the last round's.
        """
        self.flush()
        self.privacy.sync_user_releases()
        self.update_wall_time()
        if not self.folder.latest_checkpoint.is_file():
            return
        ckpt = self.folder.load_checkpoint("latest")
        ckpt["state"] = {**ckpt["state"], "privacy": self.state.privacy, "wall_seconds": self.state.wall_seconds}
        ckpt.pop("format", None)
        self.folder.save_checkpoint(ckpt)


def check_resume_config(cfg: RunConfig, folder: RunFolder) -> None:
    """Refuse a resume whose config changes a key outside :data:`RESUMABLE_KEYS`, naming each changed key."""
    try:
        saved = load_config(file=folder.path / "config.toml").to_flat()
    except FedtrainError as err:
        raise CheckpointError(f"the run folder's config.toml cannot be read ({err}); it cannot be resumed") from None
    given = cfg.to_flat()
    fixed = set(RESUMABLE_KEYS) | set(_DERIVED_KEYS)
    changed = [k for k in given if k not in fixed and given.get(k) != saved.get(k)]
    if changed:
        pairs = ", ".join(f"{k} ({toml_value(saved.get(k))} -> {toml_value(given.get(k))})" for k in changed)
        may = ", ".join(k for k in RESUMABLE_KEYS if k != "resume-dir")
        raise CheckpointError(
            f"--resume cannot change {pairs} in {str(folder.path)!r}: the checkpoint was trained with the run's own "
            f"values. Only these keys may change on resume: {may}; drop the others, or start a new run"
        )


def open_run(cfg: RunConfig) -> ResumePoint:
    """A new run folder, or the resumed one with its saved state, weights and generator states.

    A resumed folder is only read here: the caller truncates metrics.jsonl (:meth:`ResumePoint.begin`) once every
    check passed, so a refused resume leaves the folder as it was.
    """
    if not cfg.output.resume_dir:
        return ResumePoint(RunFolder.create(cfg.output.out_dir, cfg.output.run_name), RunState(), None)
    folder = RunFolder.open(cfg.output.resume_dir)
    check_resume_config(cfg, folder)
    ckpt = folder.load_checkpoint("latest")
    try:
        state, arrays = RunState.from_dict(ckpt["state"]), ArrayRecord(ckpt["arrays"])
        random.setstate(_as_random_state(ckpt["random_state"]))
        _restore_numpy_state(ckpt, cfg)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint in {str(folder.path)!r} lacks or has a bad {err}; it cannot be resumed"
        ) from None
    return ResumePoint(folder, state, arrays)


def seed_generators(cfg: RunConfig) -> None:
    """Seed ``random`` (Flower's client sampling) and numpy (Flower's DP noise) for a fresh run.

    With ``dp-noise-seed=os`` numpy's whole state comes from the OS, so no one can regenerate the noise.
    """
    random.seed(cfg.runtime.seed)
    if cfg.privacy.dp_noise_seed == "os":
        np.random.seed(np.random.SeedSequence().generate_state(624))
    else:
        np.random.seed(cfg.runtime.seed)


def _numpy_state(cfg: RunConfig) -> list[Any] | None:
    """The global numpy RNG state as plain values (checkpoints load with ``weights_only``).

    Not with ``dp-noise-seed=os``: the state would let anyone holding a checkpoint (``best.pt`` is made to be
    shared) regenerate the server's later noise; a resumed run draws fresh entropy instead.
    """
    if cfg.privacy.dp_noise_seed == "os":
        return None
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def _restore_numpy_state(ckpt: dict[str, Any], cfg: RunConfig) -> None:
    """Continue numpy's stream: Flower's DP wrappers draw their noise from it.

    Reseeding on resume would add the very noise of the first rounds again, and anyone holding two global
    models could cancel it. A checkpoint without the state cannot be resumed under user-level DP.
    """
    raw = ckpt.get("numpy_random_state")
    if cfg.privacy.dp_noise_seed == "os":
        return  # seeded from fresh OS entropy by seed_generators: no release repeats earlier noise
    if raw is None:
        if cfg.user_dp:
            raise KeyError("numpy_random_state (user-level DP noise would repeat the first rounds' noise)")
        return
    name, keys, pos, has_gauss, cached = raw
    np.random.set_state((str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))


def _as_random_state(raw: Any) -> tuple[Any, ...]:
    version, internal, gauss = raw
    return (int(version), tuple(int(v) for v in internal), gauss)
