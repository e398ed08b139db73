"""The resumable state of a run: where the plan is, the best round, early stopping, warnings.

Typed here, stored in every checkpoint as plain values (``to_dict``/``from_dict``), so a checkpoint
loads with ``torch.load(weights_only=True)``. Checkpoints written before stages existed used the
keys ``phase_index``/``phase_round``/``phases``; they still load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BestRound", "RunState", "StageRecord"]


@dataclass
class BestRound:
    """The selected round: by validation accuracy, or the latest supervised round without a validation split."""

    round: int = 0
    accuracy: float | None = 0.0  # test accuracy of that round (None when the server has no test data)
    val_accuracy: float | None = 0.0
    phase: str = ""


@dataclass
class StageRecord:
    """How one stage of the plan ended."""

    name: str
    rounds: int
    status: str  # "completed" | "stopped" | "failed"
    reason: str = ""


@dataclass
class RunState:
    """Everything the server must remember across rounds and ``--resume``.

    ``privacy`` (the ledger's state), ``strategy`` (server optimizer moments) and ``loss_watch`` are
    owned by their components, which keep them as plain values.
    """

    stage_index: int = 0  # the stage in progress
    stage_round: int = 0  # its last completed round
    global_round: int = 0
    records: int = 0  # lines in metrics.jsonl
    wall_seconds: float = 0.0
    best: BestRound = field(default_factory=BestRound)
    best_val: float = -1.0
    bad_rounds: int = 0  # rounds without validation gain (early stopping)
    stages: list[StageRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    loss_watch: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    strategy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunState:
        """Rebuild from a checkpoint's ``state``; raises KeyError/TypeError/ValueError when it is malformed."""
        raw = dict(raw)
        for old, new in (("phase_index", "stage_index"), ("phase_round", "stage_round"), ("phases", "stages")):
            if old in raw:
                raw.setdefault(new, raw.pop(old))
        best = raw.pop("best", {})
        stages = raw.pop("stages", [])
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise KeyError(f"state entries {sorted(unknown)}")
        return cls(
            best=BestRound(**best),
            stages=[StageRecord(**s) for s in stages],
            **{k: v for k, v in raw.items() if k in known},
        )
