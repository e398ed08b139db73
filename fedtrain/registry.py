"""Algorithms by name: one :class:`Registry` per seam (optimizers, strategies, stages, ...).

A registry maps a config value (``optimizer = "adam"``) to what builds it. Entries register
where they are defined, with a decorator or a call::

    OPTIMIZERS = Registry[OptimizerFactory]("optimizer")

    @OPTIMIZERS.register("adam")
    def _adam(params, lr, cfg): ...

The config schema takes its allowed values from the registries (:func:`names_of`), so a new
entry is one new file plus one registration, and the name list is never written twice.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar, cast, overload

from fedtrain.errors import ConfigError

__all__ = ["Registry", "RegistryNames", "names_of"]

T = TypeVar("T")
_DECORATE = object()  # register(name) without an entry: used as a decorator (an entry may itself be None)


class Registry(Generic[T]):
    """Named entries of one kind; ``key`` is the config key whose value selects an entry."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, entry: T) -> T: ...
    def register(self, name: str, entry: T | object = _DECORATE) -> T | Callable[[T], T]:
        """Add ``entry`` under ``name`` (or decorate it); a name registers once."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.key} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add if entry is _DECORATE else add(cast(T, entry))

    def get(self, name: str) -> T:
        """The entry called ``name``, or a ConfigError naming the choices."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"{self.key}={name!r} is unknown; choose one of {', '.join(self._entries)}") from None

    __getitem__ = get

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.key!r}, {list(self._entries)})"


class RegistryNames(Sequence[str]):
    """The names of a registry, resolved when first read.

    The config schema is imported before the modules that fill the registries (they import the
    config), so it holds this lazy view; ``"module:ATTRIBUTE"`` names the registry.
    """

    def __init__(self, target: str, before: tuple[str, ...] = ()) -> None:
        self.target, self.before = target, before

    def _names(self) -> tuple[str, ...]:
        module, attribute = self.target.split(":")
        registry: Registry[object] = getattr(importlib.import_module(module), attribute)
        return (*self.before, *registry.names())

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    def __hash__(self) -> int:
        return hash((self.target, self.before))

    def __repr__(self) -> str:
        return repr(self._names())


def names_of(target: str, *, before: tuple[str, ...] = ()) -> RegistryNames:
    """The allowed values of a config key: the names in the registry at ``"module:ATTRIBUTE"``.

    ``before`` lists values that are not registry entries (e.g. ``auto``), placed first.
    """
    return RegistryNames(target, before)
