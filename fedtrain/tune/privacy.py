"""The privacy statement of a search: what all its trials together spend, per client.

Every trial trains on the same clients' records. Releasing the best trial (its config and its model) is
post-processing of all trials' outputs, so under sample-level DP the search spends the composition of every
trial's DP history, client by client: the RDP curves add up (each trial's noise is fresh). This is an upper
bound; Papernot & Steinke (2022) show a random number of trials costs much less than composing them, which
fedtrain does not implement (yet), so the figure here is conservative. User-level DP is not composed across
trials: the statement says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedtrain.config import RunConfig
from fedtrain.privacy.accountant import epsilon_of

__all__ = ["search_privacy"]


def search_privacy(cfg: RunConfig, run_dirs: list[Path]) -> dict[str, Any]:
    """The search's privacy statement from its trials' ``privacy.json`` files.

    Returns
    -------
    dict
        ``statement`` (one paragraph), and under sample-level DP ``epsilon_per_trial`` (the largest trial's,
        max over clients), ``epsilon_search`` (all trials composed, max over clients), ``delta``, ``trials``.
    """
    pc = cfg.privacy
    if pc.dp_level == "none":
        return {"level": "none", "statement": "No DP: the trials and the search carry no privacy guarantee."}
    histories: dict[str, list[tuple[float, float, int]]] = {}
    per_trial = 0.0
    for run_dir in run_dirs:
        doc = json.loads((run_dir / "privacy.json").read_text())
        for pid, client in doc.get("sample", {}).get("clients", {}).items():
            segs = [(s["noise_multiplier"], s["sample_rate"], s["steps"]) for s in client["segments"]]
            histories.setdefault(pid, []).extend(segs)
            per_trial = max(per_trial, float(client["epsilon"]))
    out: dict[str, Any] = {"level": pc.dp_level, "trials": len(run_dirs), "delta": pc.dp_delta}
    if not histories:
        out["statement"] = "The trials recorded no sample-level DP history; the search is not accounted."
        return out
    search = max(epsilon_of(pc.dp_accountant, h, pc.dp_delta) for h in histories.values())
    out.update({"epsilon_per_trial": per_trial, "epsilon_search": search, "accountant": pc.dp_accountant})
    user = " User-level DP is not composed across trials." if cfg.user_dp else ""
    out["statement"] = (
        f"Each trial spends at most epsilon = {per_trial:.3g} per client (delta = {pc.dp_delta:g}). The search "
        f"selects on the server's validation split, and releasing its best trial is post-processing of all "
        f"{len(run_dirs)} trials, which together spend epsilon = {search:.3g} per client (every trial's history "
        f"composed, {pc.dp_accountant}, same delta). That is the privacy of the tuned model; quoting the per-trial "
        "epsilon alone would understate it. (Papernot & Steinke 2022 bound a random number of trials more "
        f"tightly; fedtrain composes, which is conservative.){user}"
    )
    if math.isinf(search):
        out["statement"] = "A trial ran without sample-level DP: the search has no finite epsilon."
    return out
