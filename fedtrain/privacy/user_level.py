"""User-level DP (DP-FedAvg, McMahan et al. 2018) with Flower's wrappers and Flower's RDP accountant.

Each client's whole update is clipped (at the server or on the client) and the server adds
Gaussian noise to the average. One accountant spans the run (all phases); it counts one
release per round with no sampling amplification (Flower's supported mode), at ``dp-user-delta``.
Fixed clipping uses the accountant built into Flower's wrappers; Flower's adaptive wrappers
have none, so :class:`_AccountedAdaptive` composes the same Gaussian event per round (the
adaptive wrappers already split the noise budget between update and clipped-count noise so
that the total equals a Gaussian mechanism with the configured multiplier, Andrew et al. 2021).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import (
    GaussianPrivacyEvent,
    Grid,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedtrain.config import RunConfig

__all__ = ["make_user_accountant", "sampled_clients", "user_epsilon", "wrap_user_dp"]


def sampled_clients(cfg: RunConfig) -> int:
    """Clients per round, as Flower's FedAvg samples them."""
    n = cfg.partition.num_clients
    return min(n, max(int(n * cfg.strategy.fraction_train), cfg.strategy.min_clients))


def make_user_accountant(cfg: RunConfig, releases: int = 0) -> RdpAccountant:
    """Flower's RDP accountant for the run, with ``releases`` rounds already spent (resume)."""
    pc = cfg.privacy
    acc = RdpAccountant(
        PrivacyConfig(
            target_delta=pc.dp_user_delta,
            population_size=cfg.partition.num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=pc.dp_user_max_epsilon or None,
        )
    )
    if releases:
        acc.compose(_event(cfg), count=releases)
    return acc


def _event(cfg: RunConfig) -> GaussianPrivacyEvent:
    return GaussianPrivacyEvent(
        noise_multiplier=cfg.privacy.dp_user_noise_multiplier,
        sample_size=sampled_clients(cfg),
        population_size=cfg.partition.num_clients,
    )


def user_epsilon(acc: RdpAccountant) -> float:
    return acc.get_privacy_spent().epsilon if acc.num_releases else 0.0


class _AccountedAdaptive:
    """Mixin: compose one Gaussian release per aggregated round; refuse a round past the budget."""

    accountant: RdpAccountant
    event: GaussianPrivacyEvent

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        limit = self.accountant.config.max_epsilon
        if limit is not None and self.accountant.would_exceed(self.event):
            raise PrivacyBudgetExhausted(
                f"the next round would exceed dp-user-max-epsilon={limit} "
                f"(current epsilon: {user_epsilon(self.accountant):.3f})"
            )
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            self.accountant.compose(self.event)
        return arrays, metrics


class _ServerAdaptive(_AccountedAdaptive, DifferentialPrivacyServerSideAdaptiveClipping):
    pass


class _ClientAdaptive(_AccountedAdaptive, DifferentialPrivacyClientSideAdaptiveClipping):
    pass


def wrap_user_dp(strategy: Strategy, cfg: RunConfig, accountant: RdpAccountant) -> Strategy:
    """Wrap ``strategy`` in the Flower DP wrapper named by ``dp-user-clipping``."""
    pc = cfg.privacy
    k = sampled_clients(cfg)
    z = pc.dp_user_noise_multiplier
    if pc.dp_user_clipping in ("server", "client"):
        cls = (
            DifferentialPrivacyServerSideFixedClipping
            if pc.dp_user_clipping == "server"
            else (DifferentialPrivacyClientSideFixedClipping)
        )
        return cls(strategy, z, pc.dp_user_clipping_norm, k, accountant=accountant)
    cls = _ServerAdaptive if pc.dp_user_clipping == "adaptive-server" else _ClientAdaptive
    # Flower splits z between update noise and clipped-count noise and needs 2 * count_stddev > z;
    # Andrew et al. suggest count_stddev = K / 20, which small cohorts cannot meet.
    wrapped = cls(strategy, z, k, initial_clipping_norm=pc.dp_user_clipping_norm, clipped_count_stddev=max(k / 20, z))
    wrapped.accountant, wrapped.event = accountant, _event(cfg)
    return wrapped
