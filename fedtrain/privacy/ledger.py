"""The server's view of privacy spent: every client's sample-level epsilon and the user-level epsilon.

Clients report their public DP parameters (sigma, q, steps) and epsilon with each reply; the
ledger keeps the latest per partition (clients that sat a round out keep their value), so the
reported maximum covers every client, not only those sampled last. Its state goes into the
server checkpoint, and on resume it is sent back to clients (``dp-restore-*``).
"""

from __future__ import annotations

import math
from typing import Any

from fedtrain.config import RunConfig
from fedtrain.federation import keys
from fedtrain.privacy.client_privacy import RESTORE_Q, RESTORE_SIGMA, RESTORE_STEPS
from fedtrain.privacy.user_level import make_user_accountant, sampled_clients, user_epsilon

__all__ = ["PrivacyLedger"]


class PrivacyLedger:
    """Sample-level budgets per partition and the run's user-level accountant."""

    def __init__(self, cfg: RunConfig, state: dict[str, Any]) -> None:
        self.cfg = cfg
        self.state = state  # persisted in the checkpoint; keys: clients, user_releases
        self.state.setdefault("clients", {})
        self.user_accountant = make_user_accountant(cfg, int(state.get("user_releases", 0))) if cfg.user_dp else None

    @property
    def clients(self) -> dict[str, dict[str, float]]:
        return self.state["clients"]

    def update(self, client_metrics: list[dict[str, Any]]) -> None:
        for m in client_metrics:
            if keys.DP_EPSILON in m:
                self.clients[str(int(m[keys.PARTITION_ID]))] = {
                    "epsilon": float(m[keys.DP_EPSILON]),
                    "sigma": float(m[keys.DP_SIGMA]),
                    "q": float(m[keys.DP_SAMPLE_RATE]),
                    "steps": int(m[keys.DP_STEPS]),
                }
        if self.user_accountant is not None:
            self.state["user_releases"] = self.user_accountant.num_releases

    def record(self, declined: int) -> dict[str, Any]:
        """Fields for this round's metrics line."""
        out: dict[str, Any] = {}
        if self.cfg.sample_dp:
            eps = [c["epsilon"] for c in self.clients.values()] or [0.0]
            out.update({
                "epsilon_max": max(eps),
                "epsilon_mean": sum(eps) / len(eps),
                "epsilon_min": min(eps),
                "delta": self.cfg.privacy.dp_delta,
                "sigma": _mean(c["sigma"] for c in self.clients.values()),
                "sample_rate": _mean(c["q"] for c in self.clients.values()),
                "steps": max((c["steps"] for c in self.clients.values()), default=0),
                "declined": declined,
            })  # fmt: skip
        if self.user_accountant is not None:
            out.update(
                {"user_epsilon": user_epsilon(self.user_accountant), "user_delta": self.cfg.privacy.dp_user_delta}
            )
        return out

    def restore_config(self) -> dict[str, Any]:
        """Per-partition DP parameters for clients that lost their ``Context.state`` (resume)."""
        n = self.cfg.partition.num_clients
        rows = [self.clients.get(str(i), {"sigma": 0.0, "q": 0.0, "steps": 0}) for i in range(n)]
        return {
            RESTORE_SIGMA: [float(r["sigma"]) for r in rows],
            RESTORE_Q: [float(r["q"]) for r in rows],
            RESTORE_STEPS: [int(r["steps"]) for r in rows],
        }

    def summary(self) -> dict[str, Any]:
        """The ``privacy`` section of summary.json."""
        pc = self.cfg.privacy
        out: dict[str, Any] = {"level": pc.dp_level}
        if self.cfg.sample_dp:
            rec = self.record(0)
            out["sample"] = {
                "accountant": pc.dp_accountant,
                "delta": pc.dp_delta,
                "target_epsilon": pc.dp_target_epsilon,
                "epsilon_max": rec["epsilon_max"],
                "epsilon_mean": rec["epsilon_mean"],
                "epsilon_min": rec["epsilon_min"],
                "max_grad_norm": pc.dp_max_grad_norm,
                "per_client": {k: v for k, v in sorted(self.clients.items(), key=lambda kv: int(kv[0]))},
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

    def log_line(self) -> str:
        """Opacus' style: ``(ε = 1.16, δ = 1e-05)``."""
        parts = []
        if self.cfg.sample_dp:
            parts.append(
                f"sample-level max (ε = {self.record(0)['epsilon_max']:.2f}, δ = {self.cfg.privacy.dp_delta:g})"
            )
        if self.user_accountant is not None:
            eps = user_epsilon(self.user_accountant)
            parts.append(f"user-level (ε = {eps:.2f}, δ = {self.cfg.privacy.dp_user_delta:g})")
        return "; ".join(parts)


def _mean(values) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else math.nan
