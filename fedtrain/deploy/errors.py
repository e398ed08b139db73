"""The error every deployment-kit refusal raises (a :class:`fedtrain.errors.FedtrainError`: one line in the CLI)."""

from __future__ import annotations

from fedtrain.errors import FedtrainError

__all__ = ["DeployError"]


class DeployError(FedtrainError, ValueError):
    """Bad deployment input (hosts, device names, folders, addresses) or a Flower command that failed."""

    exit_code = 7
