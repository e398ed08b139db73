"""The privacy statement of a search: what all its trials together spend, per record.

Every trial trains on the same records. Releasing the best trial (its config and its model) is post-processing of
all trials' outputs, so under sample-level DP the search spends the composition of every trial's DP-SGD: the RDP
curves add up (each trial's noise is fresh). A record may sit with different clients in different trials (another
seed, `num-clients` or `dirichlet-alpha` partitions differently), so each trial contributes its worst client's RDP
at every order; their sum bounds every record's loss over the search. This is an upper bound; Papernot & Steinke
(2022) show a random number of trials costs much less than composing them, which fedtrain does not implement (yet),
so the figure is conservative. User-level DP is not composed across trials: the statement says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedtrain.config import RunConfig
from fedtrain.privacy.accountant import epsilon_from_rdp, rdp_curve

__all__ = ["search_privacy"]


def _trial_curve(run_dir: Path) -> tuple[np.ndarray, float] | None:
    """A trial's worst client's RDP at each order (max over clients) and its largest epsilon; None without DP."""
    path = run_dir / "privacy.json"
    clients = json.loads(path.read_text()).get("sample", {}).get("clients", {}) if path.is_file() else {}
    if not clients:
        return None
    curves = [
        rdp_curve([(s["noise_multiplier"], s["sample_rate"], s["steps"]) for s in client["segments"]])
        for client in clients.values()
    ]
    return np.max(curves, axis=0), max(float(c["epsilon"]) for c in clients.values())


def search_privacy(cfg: RunConfig, run_dirs: list[Path]) -> dict[str, Any]:
    """The search's privacy statement from its trials' ``privacy.json`` files.

    Returns
    -------
    dict
        ``statement`` (one paragraph), and under sample-level DP ``epsilon_per_trial`` (the largest trial's,
        max over clients), ``epsilon_search`` (all trials composed, worst client of each), ``delta``, ``trials``.
    """
    pc = cfg.privacy
    if pc.dp_level == "none":
        return {"level": "none", "statement": "No DP: the trials and the search carry no privacy guarantee."}
    out: dict[str, Any] = {"level": pc.dp_level, "trials": len(run_dirs), "delta": pc.dp_delta}
    if not cfg.sample_dp:
        out["statement"] = "User-level DP only: it is not composed across trials, so the search is not accounted."
        return out
    trials = [_trial_curve(d) for d in run_dirs]
    if not trials or any(t is None for t in trials):
        missing = sum(t is None for t in trials)
        out["epsilon_search"] = math.inf
        out["statement"] = (
            f"{missing} of {len(run_dirs)} trials recorded no sample-level DP history (e.g. a trial without DP, or "
            "one that failed before its first round): the search has no finite epsilon."
        )
        return out
    curves = [t[0] for t in trials if t is not None]
    per_trial = max(t[1] for t in trials if t is not None)
    search = epsilon_from_rdp(np.sum(curves, axis=0), pc.dp_delta)
    out.update(
        {"epsilon_per_trial": per_trial, "epsilon_search": search, "accountant": "rdp",
         "trial_accountant": pc.dp_accountant}
    )  # fmt: skip
    user = " User-level DP is not composed across trials." if cfg.user_dp else ""
    # The trials' own figures come from their accountant; composing them needs RDP curves, which bound each trial a
    # little above PRV's figure (so one trial's "search" epsilon can exceed its per-trial epsilon).
    by = "" if pc.dp_accountant == "rdp" else f" by {pc.dp_accountant}"
    out["statement"] = (
        f"Each trial spends at most epsilon = {per_trial:.3g} per client{by} (delta = {pc.dp_delta:g}). The search "
        f"selects on the server's validation split, and releasing its best trial is post-processing of all "
        f"{len(run_dirs)} trials, which together spend epsilon = {search:.3g} per record (each trial's worst "
        "client's RDP composed over the trials, same delta: a record may sit with another client in another "
        "trial). That is the privacy of the tuned model; quoting the per-trial epsilon alone would understate it. "
        "(Papernot & Steinke 2022 bound a random number of trials more tightly; fedtrain composes, which is "
        f"conservative.){user}"
    )
    return out
