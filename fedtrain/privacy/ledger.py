"""The server's view of privacy spent: every client's full DP history and the user-level releases.

Clients send their whole accountant history (every ``(sigma, q, steps)`` segment, over all
phases) with each train reply; the ledger keeps the latest per partition (clients that sat a
round out keep theirs) and recomputes each epsilon itself, so the reported maximum covers every
client and does not rest on a client's own figure. Its state goes into the server checkpoint; on
resume the histories are sent back to clients (``dp-restore-history``) and the user-level
accountant is rebuilt release by release. :meth:`PrivacyLedger.document` is ``privacy.json``, from
which anyone can recompute every epsilon (docs/privacy.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, cast

from fedtrain.config import RunConfig
from fedtrain.errors import CheckpointError
from fedtrain.logging import get_logger
from fedtrain.privacy.accountant import RDP_ORDERS, ClientAccountant, epsilon_of
from fedtrain.privacy.dp_normalize import normalization_segments
from fedtrain.privacy.unaccounted import unaccounted_statistics
from fedtrain.privacy.user_level import make_user_accountant, sampled_clients, user_epsilon, user_releases
from fedtrain.wire import DP_EPSILON, DP_HISTORY, PARTITION_ID, RESTORE_HISTORY

__all__ = ["PRIVACY_FORMAT", "PrivacyLedger"]

PRIVACY_FORMAT = "fedtrain-privacy/1"
log = get_logger()

Segment = tuple[float, float, int]


class PrivacyLedger:
    """Sample-level histories per partition and the run's user-level accountant."""

    def __init__(self, cfg: RunConfig, state: dict[str, Any]) -> None:
        self.cfg = cfg
        self.state = state  # persisted in the checkpoint; keys: clients, user_releases
        self.state.setdefault("clients", {})
        _migrate(cfg, self.state)
        self._epsilons: dict[tuple[Segment, ...], float] = {}
        releases = self.state.get("user_releases", [])
        self.user_accountant = make_user_accountant(cfg, releases) if cfg.user_dp else None

    @property
    def clients(self) -> dict[str, dict[str, Any]]:
        clients: dict[str, dict[str, Any]] = self.state["clients"]
        return clients

    def history(self, pid: str) -> list[Segment]:
        return [(float(s), float(q), int(n)) for s, q, n in self.clients[pid]["segments"]]

    def update(self, reports: Iterable[dict[str, Any]]) -> None:
        """Take the histories of this round's train replies, as soon as they arrive."""
        for report in reports:
            history = report.get(DP_HISTORY)
            if history is None:
                continue
            pid = str(int(report[PARTITION_ID]))
            acc = ClientAccountant.from_state_dict(history)
            if not self._extends(pid, acc):
                acc = self._with_lost_history(pid, acc)
            epsilon = self._epsilon(acc.history)
            claimed = report.get(DP_EPSILON)
            if claimed is not None and float(claimed) < epsilon * (1 - 1e-6) - 1e-9:
                log.warning("client %s reported ε = %.4f, its history spends %.4f: using the latter", pid,
                            float(claimed), epsilon)  # fmt: skip
            self.clients[pid] = {
                "segments": [[float(s), float(q), int(n)] for s, q, n in acc.history],
                "steps": acc.steps,
                "epsilon": epsilon,
            }

    def sync_user_releases(self) -> None:
        """Copy the user-level releases composed so far into the checkpointed state (after aggregation)."""
        if self.user_accountant is not None:
            self.state["user_releases"] = user_releases(self.user_accountant)

    def _extends(self, pid: str, acc: ClientAccountant) -> bool:
        """Whether the stored history is a prefix of the new one (its last segment may have grown)."""
        if pid not in self.clients:
            return True
        old, new = self.history(pid), acc.history
        return len(new) >= len(old) and all(
            n == o if i < len(old) - 1 else n[:2] == o[:2] and n[2] >= o[2]
            for i, (o, n) in enumerate(zip(old, new, strict=False))
        )

    def _with_lost_history(self, pid: str, acc: ClientAccountant) -> ClientAccountant:
        """The client lost its accountant: count what it spent before and what it reports now (conservative)."""
        log.warning("client %s sent a DP history that does not extend the one it spent before (%d steps): it lost "
                    "its accountant; the ledger counts both", pid, self.clients[pid]["steps"])  # fmt: skip
        both = ClientAccountant(acc.mechanism)
        for sigma, q, steps in self.history(pid) + acc.history:
            both.record(sigma, q, steps)
        return both

    def _epsilon(self, history: list[Segment]) -> float:
        key = tuple(history)
        if key not in self._epsilons:
            pc = self.cfg.privacy
            self._epsilons[key] = epsilon_of(pc.dp_accountant, list(history), pc.dp_delta) if history else 0.0
        return self._epsilons[key]

    def _epsilon_stats(self) -> dict[str, float]:
        """Max, mean and min of every client's epsilon (0 before any client reported)."""
        eps = [float(c["epsilon"]) for c in self.clients.values()] or [0.0]
        return {"epsilon_max": max(eps), "epsilon_mean": sum(eps) / len(eps), "epsilon_min": min(eps)}

    def record(self, declined: int) -> dict[str, Any]:
        """Fields for this round's metrics line; aggregates over clients are named as aggregates."""
        out: dict[str, Any] = {}
        if self.cfg.sample_dp:
            last = [self.history(pid)[-1] for pid in self.clients if self.clients[pid]["segments"]]
            out.update({
                **self._epsilon_stats(),
                "delta": self.cfg.privacy.dp_delta,
                "sigma_mean": _mean(s for s, _, _ in last),
                "sample_rate_mean": _mean(q for _, q, _ in last),
                "steps_max": max((int(c["steps"]) for c in self.clients.values()), default=0),
                "declined": declined,
            })  # fmt: skip
        if self.user_accountant is not None:
            out.update(
                {"user_epsilon": user_epsilon(self.user_accountant), "user_delta": self.cfg.privacy.dp_user_delta}
            )
        return out

    def restore_config(self) -> dict[str, Any]:
        """Every partition's full history, for clients that lost their ``Context.state`` (resume)."""
        n = self.cfg.partition.num_clients
        rows = [json.dumps(self.clients[str(i)]["segments"]) if str(i) in self.clients else "" for i in range(n)]
        return {RESTORE_HISTORY: rows}

    def summary(self) -> dict[str, Any]:
        """The ``privacy`` section of summary.json."""
        pc = self.cfg.privacy
        out: dict[str, Any] = {"level": pc.dp_level, "outside_budget": unaccounted_statistics(self.cfg)}
        if self.cfg.sample_dp:
            out["sample"] = {
                "accountant": pc.dp_accountant,
                "delta": pc.dp_delta,
                "target_epsilon": pc.dp_target_epsilon,
                **self._epsilon_stats(),
                "max_grad_norm": pc.dp_max_grad_norm,
                **self._normalization(),
                "clients_with_dp": len(self.clients),
                "per_client": {k: dict(v) for k, v in sorted(self.clients.items(), key=lambda kv: int(kv[0]))},
            }
        if self.user_accountant is not None:
            out["user"] = {
                "accountant": "rdp (Flower RdpAccountant, no sampling amplification)",
                "delta": pc.dp_user_delta,
                "epsilon": user_epsilon(self.user_accountant),
                "rounds": self.user_accountant.num_releases,
                "noise_multiplier": pc.dp_user_noise_multiplier,
                "clipping": pc.dp_user_clipping,
                "clipping_norm": pc.dp_user_clipping_norm,
                "sampled_clients": sampled_clients(self.cfg),
                "max_epsilon": pc.dp_user_max_epsilon or None,
            }
        return out

    def document(self) -> dict[str, Any]:
        """``privacy.json``: everything needed to recompute every epsilon of the run (docs/privacy.md)."""
        pc = self.cfg.privacy
        doc: dict[str, Any] = {"format": PRIVACY_FORMAT, "level": pc.dp_level,
                               "outside_budget": unaccounted_statistics(self.cfg)}  # fmt: skip
        if self.cfg.sample_dp:
            doc["sample"] = {
                "mechanism": "Poisson-subsampled Gaussian (DP-SGD), add or remove one record",
                "accountant": pc.dp_accountant,
                "rdp_orders": list(RDP_ORDERS) if pc.dp_accountant == "rdp" else None,
                "delta": pc.dp_delta,
                "target_epsilon": pc.dp_target_epsilon,
                "max_grad_norm": pc.dp_max_grad_norm,
                **self._normalization(),
                "clients": {
                    pid: {
                        "epsilon": c["epsilon"],
                        "segments": [
                            {"noise_multiplier": s, "sample_rate": q, "steps": n} for s, q, n in c["segments"]
                        ],
                    }
                    for pid, c in sorted(self.clients.items(), key=lambda kv: int(kv[0]))
                },
            }
        if self.user_accountant is not None:
            doc["user"] = {
                "mechanism": "Gaussian on the average of clipped client updates, add or remove one client, "
                "no sampling amplification",
                "accountant": "rdp",
                "rdp_orders": [float(a) for a in cast(list[float], self.user_accountant.state_dict()["orders"])],
                "delta": pc.dp_user_delta,
                "epsilon": user_epsilon(self.user_accountant),
                "releases": user_releases(self.user_accountant),
            }
        return doc

    def _normalization(self) -> dict[str, Any]:
        """The ``normalize=dp-standard`` release, when there is one: the first segment of every client's history."""
        segments = normalization_segments(self.cfg)
        if not segments:
            return {}
        pc, dc = self.cfg.privacy, self.cfg.data
        alone = epsilon_of(pc.dp_accountant, segments, pc.dp_delta)
        return {
            "normalization": {
                "mechanism": "Gaussian on each client's sums of (x, x^2) / input maximum, each record clipped to L2 "
                "norm normalize-dp-clip; one release at sampling rate 1, composed into every client's accountant",
                "noise_multiplier": segments[0][0],
                "clip": dc.normalize_dp_clip,
                "share": dc.normalize_dp_share,
                "epsilon_alone": alone,
            }
        }

    def log_line(self) -> str:
        """Opacus' style: ``(ε = 1.16, δ = 1e-05)``."""
        parts = []
        if self.cfg.sample_dp:
            detail = (
                f"ε = {self._epsilon_stats()['epsilon_max']:.2f}" if self.clients else "no client has reported DP yet"
            )
            parts.append(f"sample-level max ({detail}, δ = {self.cfg.privacy.dp_delta:g})")
        if self.user_accountant is not None:
            eps = user_epsilon(self.user_accountant)
            parts.append(f"user-level (ε = {eps:.2f}, δ = {self.cfg.privacy.dp_user_delta:g})")
        return "; ".join(parts)


def _migrate(cfg: RunConfig, state: dict[str, Any]) -> None:
    """Read a checkpoint of fedtrain <= 0.1.0, which kept one (sigma, q, steps) per client."""
    old = {pid: c for pid, c in state["clients"].items() if "segments" not in c}
    if old and "pretrain" in cfg.phases:
        raise CheckpointError(
            "this checkpoint was written by an older fedtrain that kept only one DP segment per client; its "
            f"plan {cfg.strategy.plan!r} has several phases, so the spent epsilon cannot be rebuilt exactly. "
            "Start a new run instead of resuming"
        )
    for pid, c in old.items():
        state["clients"][pid] = {"segments": [[float(c["sigma"]), float(c["q"]), int(c["steps"])]],
                                 "steps": int(c["steps"]), "epsilon": float(c["epsilon"])}  # fmt: skip
    count = state.get("user_releases")
    if isinstance(count, int) and count and cfg.privacy.dp_user_clipping.startswith("adaptive"):
        raise CheckpointError(
            "this checkpoint was written by an older fedtrain whose adaptive clipping released less noise than it "
            "accounted; its user-level epsilon cannot be rebuilt. Start a new run instead of resuming"
        )
    if isinstance(count, int):  # a count of identical releases at the configured noise and cohort
        z, k = cfg.privacy.dp_user_noise_multiplier, sampled_clients(cfg)
        state["user_releases"] = [{"noise_multiplier": z, "sample_size": k, "count": count}] if count else []


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else math.nan
