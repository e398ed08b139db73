"""Typed errors that reach the user as one clear line and an exit code.

Every error raised for bad input derives from :class:`FedtrainError`; the CLI prints
``error: <message>`` and exits with ``exit_code``. Messages name the bad value, where it is, and the fix.

The exit codes tell the families apart and are part of the interface (docs/errors.md, generated from the
bad-input suite in tests/reliability): 1 other (environment), 2 config (argparse misuse too), 3 data,
4 model, 5 checkpoint or run folder, 6 export, 7 deployment (:mod:`fedtrain.deploy.errors`). The device
runtime's errors (:mod:`fedtrain.edge.errors`) are data (3) or model (4) errors.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportError",
    "FedtrainError",
    "ModelError",
]


class FedtrainError(Exception):
    """Base class for errors caused by user input or the environment."""

    exit_code = 1


class ConfigError(FedtrainError, ValueError):
    """The run configuration has unknown keys, wrong types or values out of range."""

    exit_code = 2

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class DataError(FedtrainError, ValueError):
    """A data file is missing, corrupt or has the wrong shape."""

    exit_code = 3


class ModelError(FedtrainError, ValueError):
    """The model cannot be built for this data or configuration."""

    exit_code = 4


class CheckpointError(FedtrainError, ValueError):
    """A checkpoint or run folder is missing, corrupt or does not match the config."""

    exit_code = 5


class ExportError(FedtrainError, ValueError):
    """A model cannot be exported, calibrated or validated, or a format lost too much accuracy."""

    exit_code = 6
