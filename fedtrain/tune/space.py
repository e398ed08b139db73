"""The search space of ``fedtrain tune``: ``--space "learning-rate=log:0.05:2 batch-size=cat:16|32|64"``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedtrain.config import RunConfig, load_config
from fedtrain.errors import ConfigError

__all__ = ["KINDS", "Param", "parse_space"]

KINDS = ("float", "log", "int", "cat")
_EXAMPLE = '--space "learning-rate=log:0.05:2 batch-size=cat:16|32|64 model=cat:linear|mlp"'


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` (``float``, ``log``, ``int``, ``cat``) with its bounds or choices."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna ``trial`` draws for this key."""
        if self.kind == "cat":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--space: {what} {text!r} is not a number; e.g. {_EXAMPLE}") from None


def _choice(key: str, text: str) -> Any:
    """A categorical value typed as the key's default is (so ``batch-size=cat:16|32`` searches ints)."""
    default = RunConfig().to_flat()[key]
    if isinstance(default, bool):
        return text.lower() == "true"
    if isinstance(default, int):
        return int(_number(text, f"{key} choice"))
    if isinstance(default, float):
        return _number(text, f"{key} choice")
    return text


def parse_space(text: str, base: RunConfig | None = None) -> list[Param]:
    """Parse ``key=kind:...`` entries separated by spaces; every value the space can draw must be valid.

    The bounds and choices are checked on top of ``base`` (the search's config), so cross-key rules apply.

    Raises
    ------
    ConfigError
        For an unknown key or kind, bad bounds, or a value the config refuses (naming it).
    """
    keys = RunConfig().to_flat()
    params: list[Param] = []
    for entry in text.split():
        key, sep, spec = entry.partition("=")
        kind, _, rest = spec.partition(":")
        if not sep or key not in keys:
            raise ConfigError(f"--space: {entry!r} must be KEY=KIND:... with a config key; e.g. {_EXAMPLE}")
        if kind not in KINDS:
            raise ConfigError(f"--space: {entry!r} has kind {kind!r}; use one of {', '.join(KINDS)}")
        if kind == "cat":
            choices = tuple(_choice(key, c) for c in rest.split("|") if c)
            if not choices:
                raise ConfigError(f"--space: {entry!r} names no choices; e.g. {key}=cat:a|b")
            param = Param(key, kind, choices=choices)
            edges: list[Any] = list(choices)
        else:
            bounds = rest.split(":")
            if len(bounds) != 2:
                raise ConfigError(f"--space: {entry!r} needs {kind}:LOW:HIGH; e.g. {_EXAMPLE}")
            low, high = (_number(b, f"{key} bound") for b in bounds)
            if not low < high or (kind == "log" and low <= 0):
                raise ConfigError(f"--space: {entry!r} needs LOW < HIGH (and LOW > 0 for log)")
            param = Param(key, kind, low, high)
            edges = [int(low), int(high)] if kind == "int" else [low, high]
        for value in edges:  # every draw lies between these: the config's own checks name a bad one
            load_config(base=base.to_flat() if base else None, overrides={key: value})
        if any(p.key == key for p in params):
            raise ConfigError(f"--space names {key} twice")
        params.append(param)
    if not params:
        raise ConfigError(f"--space is empty; e.g. {_EXAMPLE}")
    return params
