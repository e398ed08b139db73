"""Private statistics a DP run reads outside the accountant, in plain words (``privacy.outside_budget``).

Epsilon covers DP-SGD's noisy gradients (sample level) or the noisy aggregate of clipped updates (user
level). Anything else computed from the clients' data and seen by the server, the report or an exported
model is outside the budget; this module names each such statistic that a config turns on. Record counts
are taken as public, as the accountant's model does (clients send ``num-examples``, and ``q`` and
``steps`` follow from them), and are not listed. It reads only the config (no data, no federation) so the
CLI, the server and the report can all call it.
"""

from __future__ import annotations

from fedtrain.config import RunConfig
from fedtrain.config.data_source import fitted_on_server_file

__all__ = ["label_counts_allowed", "train_loss_shared", "unaccounted_statistics"]


def label_counts_allowed(cfg: RunConfig) -> bool:
    """Whether the report may show each client's label counts (the label-distribution plot).

    Without DP always; under DP only with ``dp-allow-unaccounted-statistics=true``.
    """
    return cfg.privacy.dp_level == "none" or cfg.privacy.dp_allow_unaccounted_statistics


def train_loss_shared(cfg: RunConfig) -> bool:
    """Whether clients send their mean local loss: always without DP, under DP only when opted in."""
    return cfg.privacy.dp_level == "none" or cfg.privacy.dp_allow_unaccounted_statistics


def unaccounted_statistics(cfg: RunConfig) -> list[str]:
    """Every private statistic this run reads outside the accountant; empty without DP.

    Parameters
    ----------
    cfg
        The resolved run config.

    Returns
    -------
    list[str]
        One sentence per statistic, naming the key that causes it.
    """
    if cfg.privacy.dp_level == "none":
        return []
    out: list[str] = []
    norm = cfg.data.normalize
    on_clients = not fitted_on_server_file(cfg)
    if norm == "standard" and on_clients:
        out.append("normalize='standard': per-feature mean and std of the pooled training split of all clients")
    elif norm == "minmax" and on_clients:
        out.append("normalize='minmax': per-feature minimum and maximum of the pooled training split of all clients")
    if cfg.sample_dp and cfg.train.class_weights == "balanced":
        # Each record's weighted loss depends on the client's other labels: per-record clipping does not
        # bound that influence. Under user-level DP alone the whole update is clipped, so it is covered.
        out.append("class-weights='balanced': label counts of each client (they weight its loss)")
    if cfg.strategy.fraction_evaluate > 0:
        out.append(
            f"fraction-evaluate={cfg.strategy.fraction_evaluate:g}: loss and accuracy of the global model on each "
            "sampled client's local evaluation share, sent to the server without noise"
        )
    if train_loss_shared(cfg):
        out.append("train loss of each client: its mean local loss each round, sent to the server without noise")
    if cfg.output.report and label_counts_allowed(cfg):
        out.append("report=true: label counts of each client (the label-distribution plot of report.html)")
    return out
