"""Checkpoints: the global arrays with everything needed to resume exactly and to use the model.

Python's ``random`` (Flower's client sampling) and numpy's global generator (Flower's DP noise) are
saved with the state, so a resumed run continues their streams instead of repeating them.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from fedtrain.config import RunConfig
from fedtrain.data import Normalizer
from fedtrain.errors import CheckpointError
from fedtrain.federation.run_state import RunState
from fedtrain.logging import get_logger
from fedtrain.privacy.ledger import PrivacyLedger
from fedtrain.results import RunFolder

__all__ = ["Checkpointer", "ResumePoint", "open_run", "seed_generators"]

log = get_logger()


@dataclass
class ResumePoint:
    """A run folder and where its run stands (fresh: no arrays yet)."""

    folder: RunFolder
    state: RunState
    arrays: ArrayRecord | None


class Checkpointer:
    """Writes ``latest.pt`` after every round (and ``best.pt`` when the round is the best)."""

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
        self.folder.save_checkpoint(self.payload(arrays), best=best)

    def persist_privacy(self) -> None:
        """Put the ledger's latest state into the latest checkpoint, keeping its position in the plan.

        A round that ends the run (budget, failure) may have spent budget after the last save, and a user-level
        release may have been made in it.
        """
        self.privacy.sync_user_releases()
        if not self.folder.latest_checkpoint.is_file():
            return
        ckpt = self.folder.load_checkpoint("latest")
        ckpt["state"] = {**ckpt["state"], "privacy": self.state.privacy}
        ckpt.pop("format", None)
        self.folder.save_checkpoint(ckpt)


def open_run(cfg: RunConfig) -> ResumePoint:
    """A new run folder, or the resumed one with its saved state, weights and generator states."""
    if not cfg.output.resume_dir:
        return ResumePoint(RunFolder.create(cfg.output.out_dir, cfg.output.run_name), RunState(), None)
    folder = RunFolder.open(cfg.output.resume_dir)
    ckpt = folder.load_checkpoint("latest")
    try:
        state, arrays = RunState.from_dict(ckpt["state"]), ArrayRecord(ckpt["arrays"])
        random.setstate(_as_random_state(ckpt["random_state"]))
        _restore_numpy_state(ckpt, cfg)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint in {str(folder.path)!r} lacks or has a bad {err}; it cannot be resumed"
        ) from None
    folder.truncate_metrics(state.records)
    log.info("Resuming %s after global round %d", folder.path, state.global_round)
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
