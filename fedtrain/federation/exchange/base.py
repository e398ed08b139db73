"""The round-exchange seam: what a stage hands over for one round, and what comes back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtrain.config import RunConfig
from fedtrain.registry import Registry

__all__ = ["EXCHANGES", "RoundExchange", "RoundRequest", "TrainReplies", "build_exchange"]


@dataclass
class RoundRequest:
    """One round's train (or evaluate) step as the stage asks for it."""

    strategy: Strategy
    grid: Grid
    server_round: int  # the global round: strategies and DP wrappers count it
    arrays: ArrayRecord  # the global arrays clients start from
    config: ConfigRecord
    timeout: float | None


@dataclass
class TrainReplies:
    """What came back from one round's train step, before aggregation.

    ``trained`` and ``declined`` are per-client reports (reply metrics, plus the DP history under
    sample-level DP). ``aggregate`` runs the strategy's aggregation (or returns what a protocol
    already aggregated); the stage calls it only when the round may go on.
    """

    sent: int
    trained: list[dict[str, Any]]
    declined: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # replies not counted (no DP evidence), one reason each
    failures: list[str] = field(default_factory=list)  # error replies and refusals, one line each
    aggregate: Callable[[], ArrayRecord | None] = lambda: None
    metrics: dict[str, Any] = field(default_factory=dict)  # the exchange's own figures, for the metrics line
    stop: str = ""  # set when the exchange's policy ends the run here (e.g. a halted SecAgg+ round)
    warnings: list[str] = field(default_factory=list)  # for the user: logged and kept in summary.json
    spent: list[dict[str, Any]] | None = None  # everyone who spent privacy budget (default: trained + declined)

    @property
    def spenders(self) -> list[dict[str, Any]]:
        """Reports of the clients whose training this round spent budget, for the privacy ledger."""
        return self.spent if self.spent is not None else self.trained + self.declined


class RoundExchange(ABC):
    """Carries a round's messages between the strategy and the clients over a grid."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def train(self, request: RoundRequest) -> TrainReplies:
        """Send the round's train messages, collect the replies, prepare their aggregate."""

    @abstractmethod
    def evaluate(self, request: RoundRequest) -> tuple[MetricRecord | None, int, list[str]]:
        """Federated evaluation of ``request.arrays``: (aggregated metrics, clients evaluated, failures)."""


EXCHANGES: Registry[Callable[[RunConfig], RoundExchange]] = Registry("round-exchange")


def build_exchange(cfg: RunConfig, name: str) -> RoundExchange:
    """The exchange named ``name`` (config key ``round-exchange``) for this run."""
    return EXCHANGES.get(name)(cfg)
