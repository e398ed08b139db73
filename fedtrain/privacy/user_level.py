"""User-level DP (DP-FedAvg, McMahan et al. 2018) with Flower's wrappers and Flower's RDP accountant.

Each client's whole update is clipped (at the server or on the client) and the server adds
Gaussian noise to the average. One accountant spans the run (all phases); it counts one
release per aggregated round with no sampling amplification (Flower's supported mode), at
``dp-user-delta``. This module owns how the two DP levels compose at the server:

- Clients that decline a round (sample-level budget) stay in the aggregate as zero updates with
  their equal weight, so every round averages exactly the sampled cohort the noise was scaled
  for (see :func:`fedtrain.privacy.composition.select_replies`).
- Fixed clipping uses the accountant built into Flower's wrappers, whose strict check refuses a
  round with fewer updates than sampled.
- Flower's adaptive wrappers have no accountant and accept fewer updates, so
  :class:`_AccountedAdaptive` composes, per aggregated round, the Gaussian event that was really
  released (:func:`adaptive_release_multiplier`): the update noise, scaled for ``K`` sampled
  clients, on an average of ``m <= K`` updates, together with the clipped-count noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict, cast

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
from flwr.serverapp.strategy.dp_adaptive_clipping import DifferentialPrivacyAdaptiveBase

from fedtrain.config import RunConfig

__all__ = [
    "UserRelease",
    "adaptive_noise_split",
    "adaptive_release_multiplier",
    "make_user_accountant",
    "sampled_clients",
    "user_epsilon",
    "user_releases",
    "wrap_user_dp",
]


class UserRelease(TypedDict):
    """One composition of the user-level accountant: ``count`` rounds of the same Gaussian release."""

    noise_multiplier: float
    sample_size: int
    count: int


def sampled_clients(cfg: RunConfig) -> int:
    """Clients per round, as Flower's FedAvg samples them."""
    n = cfg.partition.num_clients
    return min(n, max(int(n * cfg.strategy.fraction_train), cfg.strategy.min_clients))


def make_user_accountant(cfg: RunConfig, releases: Iterable[Mapping[str, Any]] = ()) -> RdpAccountant:
    """Flower's RDP accountant for the run, with the ``releases`` of earlier rounds replayed (resume)."""
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
    for r in releases:
        event = GaussianPrivacyEvent(float(r["noise_multiplier"]), int(r["sample_size"]), cfg.partition.num_clients)
        acc.compose(event, count=int(r["count"]))
    return acc


def user_releases(acc: RdpAccountant) -> list[UserRelease]:
    """The releases composed so far: ``noise_multiplier``, ``sample_size`` and ``count`` of each."""
    # Flower types its JSON state as dict[str, object]; "compositions" is a list of {"event": {...}, "count": n}.
    compositions = cast(list[dict[str, Any]], acc.state_dict()["compositions"])
    return [
        {"noise_multiplier": float(c["event"]["noise_multiplier"]), "sample_size": int(c["event"]["sample_size"]),
         "count": int(c["count"])}
        for c in compositions
    ]  # fmt: skip


def user_epsilon(acc: RdpAccountant) -> float:
    return acc.get_privacy_spent().epsilon if acc.num_releases else 0.0


def adaptive_release_multiplier(update_multiplier: float, count_stddev: float, sampled: int, aggregated: int) -> float:
    """Noise multiplier of the one Gaussian mechanism equivalent to a round of adaptive clipping.

    The update noise has std ``update_multiplier * C / sampled`` on an average of ``aggregated``
    updates of norm <= C, i.e. multiplier ``update_multiplier * aggregated / sampled`` on their sum.
    Flower's clipped count is ``count + N(0, count_stddev)`` with sensitivity 1 (not the centred
    1/2 of Andrew et al. 2021 that Flower's noise split assumes), so it is a Gaussian with
    multiplier ``count_stddev``. Two Gaussians on one neighbouring pair compose as
    ``z = (z_update^-2 + z_count^-2)^-1/2``.
    """
    z_update = update_multiplier * aggregated / sampled
    inverse = (z_update**-2 if z_update > 0 else math.inf) + (count_stddev**-2 if count_stddev > 0 else math.inf)
    return 0.0 if math.isinf(inverse) else inverse**-0.5


class _AccountedAdaptive(DifferentialPrivacyAdaptiveBase):
    """Mixin over Flower's adaptive wrappers: a sound, accounted Gaussian release per round.

    Three corrections to Flower 1.42's adaptive clipping:

    - Strict cohort: a round is aggregated only when every sampled client replied (as Flower's
      fixed-clipping accountant requires), so each release is the full-cohort mechanism accounted
      and checked against ``dp-user-max-epsilon`` before the round.
    - Noise at the norm that clipped: Flower updates the clipping norm before it adds the noise, so
      the noise was scaled to the *next* round's norm. Here it uses the norm the updates were clipped to.
    - Direction of the norm update: Flower's bit means "was clipped", Andrew et al.'s "was not
      clipped", so Flower's norm ran away from the target quantile; here it moves towards it.

    The norm is kept in ``norm_state`` (the ledger's checkpointed state), so it survives phases and resume.
    """

    accountant: RdpAccountant
    population: int
    norm_state: dict[str, Any]
    _norm_used: float  # the norm this round's updates were clipped to

    def _release(self, aggregated: int) -> GaussianPrivacyEvent:
        z = adaptive_release_multiplier(
            self.noise_multiplier, self.clipped_count_stddev, self.num_sampled_clients, aggregated
        )
        return GaussianPrivacyEvent(noise_multiplier=z, sample_size=aggregated, population_size=self.population)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # One norm for the run: every phase's wrapper is built before any round, so take the latest here.
        self.clipping_norm = float(self.norm_state.get("user_clipping_norm", self.clipping_norm))
        limit = self.accountant.config.max_epsilon
        if limit is not None and self.accountant.would_exceed(self._release(self.num_sampled_clients)):
            raise PrivacyBudgetExhausted(
                f"the next round would exceed dp-user-max-epsilon={limit} "
                f"(current epsilon: {user_epsilon(self.accountant):.3f})"
            )
        # The MRO of _ServerAdaptive/_ClientAdaptive sends this to Flower's concrete wrapper; mypy sees only
        # the abstract Strategy method on the shared base.
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[safe-super]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        answered = sum(not m.has_error() for m in replies)
        if answered != self.num_sampled_clients or answered != len(replies):
            return None, None  # an incomplete cohort: the accounted mechanism was not what would be released
        self._norm_used = self.clipping_norm
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[safe-super]  # as above
        self.norm_state["user_clipping_norm"] = float(self.clipping_norm)
        if arrays is not None:
            self.accountant.compose(self._release(answered))
        return arrays, metrics

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        next_norm, self.clipping_norm = self.clipping_norm, self._norm_used
        try:
            return super()._add_noise_to_aggregated_arrays(aggregated)
        finally:
            self.clipping_norm = next_norm

    def _geometric_update(self, clipped_fraction: float) -> None:
        unclipped = 1.0 - clipped_fraction  # Andrew et al.'s b: the share of updates within the norm
        self.clipping_norm *= math.exp(-self.clip_norm_lr * (unclipped - (1.0 - self.target_clipped_quantile)))


class _ServerAdaptive(_AccountedAdaptive, DifferentialPrivacyServerSideAdaptiveClipping):
    pass


class _ClientAdaptive(_AccountedAdaptive, DifferentialPrivacyClientSideAdaptiveClipping):
    pass


def wrap_user_dp(strategy: Strategy, cfg: RunConfig, accountant: RdpAccountant, norm_state: dict[str, Any]) -> Strategy:
    """Wrap ``strategy`` in the Flower DP wrapper named by ``dp-user-clipping``.

    ``norm_state`` keeps the adaptive clipping norm across phases and resume (``user_clipping_norm``).
    """
    pc = cfg.privacy
    k = sampled_clients(cfg)
    z = pc.dp_user_noise_multiplier
    if pc.dp_user_clipping in ("server", "client"):
        fixed = (
            DifferentialPrivacyServerSideFixedClipping
            if pc.dp_user_clipping == "server"
            else DifferentialPrivacyClientSideFixedClipping
        )
        return fixed(strategy, z, pc.dp_user_clipping_norm, k, accountant=accountant)
    adaptive = _ServerAdaptive if pc.dp_user_clipping == "adaptive-server" else _ClientAdaptive
    count_stddev, z_flower = adaptive_noise_split(z, k)
    norm = float(norm_state.get("user_clipping_norm", pc.dp_user_clipping_norm))
    wrapped = adaptive(strategy, z_flower, k, initial_clipping_norm=norm, clipped_count_stddev=count_stddev)
    wrapped.accountant, wrapped.population, wrapped.norm_state = accountant, cfg.partition.num_clients, norm_state
    return wrapped


def adaptive_noise_split(z: float, sampled: int) -> tuple[float, float]:
    """Clipped-count std and the multiplier to hand Flower so that a full round releases exactly ``z``.

    Flower splits its multiplier as ``z_update = (z_f^-2 - (2 s)^-2)^-1/2``, which would be exact
    for a centred count of sensitivity 1/2; its count has sensitivity 1. Handing it
    ``z_f = (z^-2 - 0.75 s^-2)^-1/2`` gives ``z_update^-2 + s^-2 = z^-2``. ``s = max(K/20, 2z)``:
    Andrew et al.'s K/20 where the cohort allows, else enough for the split to exist.
    """
    if z <= 0:
        return 0.0, 0.0
    s = max(sampled / 20, 2 * z)
    return s, (z**-2 - 0.75 * s**-2) ** -0.5
