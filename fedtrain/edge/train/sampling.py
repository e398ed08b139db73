"""Where the device trainer's random draws come from: batches (Poisson or shuffled), DP noise, corruption masks.

``dp-noise-seed=os`` (:class:`OsDraws`): a ``numpy.random.Generator`` (PCG64DXSM) on
``SeedSequence(os.urandom(32))``, fresh for every local call. 256 bits from the operating system's CSPRNG mean
nobody, not even whoever knows the run's seed, can regenerate a call's Poisson batches or noise. The generator
itself is statistical, not a CSPRNG: an observer of its raw outputs could in principle infer its state, but raw
draws never leave the device, only noised sums do; Gaussians straight from ``os.urandom`` (Box-Muller) were
slower, for a difference nobody outside the device can observe.
The torch client's ``os`` mode seeds torch's generator from ``secrets`` the same way. ``dp-noise-seed=run``
(:class:`SeededDraws`): the same generator seeded with the call's seed, reproducible for experiments. Neither
closes the floating-point attack on Gaussian noise (Mironov 2012); Opacus' non-secure mode, which the torch
client uses, does not either.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import numpy as np

__all__ = ["Draws", "OsDraws", "SeededDraws", "build_draws", "poisson_batches", "shuffled_batches"]


class Draws(ABC):
    """The random draws of one local call."""

    @abstractmethod
    def uniform(self, size: int) -> np.ndarray:
        """``size`` float64 uniforms in [0, 1)."""

    @abstractmethod
    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        """Gaussian noise, float32, of standard deviation ``std``."""

    def poisson(self, n: int, q: float) -> np.ndarray:
        """Indices of one Poisson batch: each of ``n`` records independently with probability ``q`` (Opacus')."""
        return np.flatnonzero(self.uniform(n) < q)

    def permutation(self, n: int) -> np.ndarray:
        """A uniformly random order of ``n`` records (batches without DP)."""
        return np.argsort(self.uniform(n), kind="stable")


class SeededDraws(Draws):
    """``numpy.random.Generator`` (PCG64DXSM) seeded with ``seed``: reproducible."""

    def __init__(self, seed: int | np.random.SeedSequence) -> None:
        sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        self.rng = np.random.Generator(np.random.PCG64DXSM(sequence))

    def uniform(self, size: int) -> np.ndarray:
        return self.rng.random(size)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def permutation(self, n: int) -> np.ndarray:
        return self.rng.permutation(n)


class OsDraws(SeededDraws):
    """The generator seeded from 256 bits of ``os.urandom``: not reproducible, by anyone."""

    def __init__(self) -> None:
        super().__init__(np.random.SeedSequence(int.from_bytes(os.urandom(32), "little")))


def build_draws(noise_seed: str, seed: int) -> Draws:
    """The draws of ``dp-noise-seed`` (``os`` or ``run``) for a call seeded with ``seed``."""
    return OsDraws() if noise_seed == "os" else SeededDraws(seed)


def poisson_batches(draws: Draws, n: int, q: float, steps: int) -> list[np.ndarray]:
    """``steps`` Poisson batches over ``n`` records at rate ``q`` (some may be empty)."""
    return [draws.poisson(n, q) for _ in range(steps)]


def shuffled_batches(draws: Draws, n: int, size: int) -> list[np.ndarray]:
    """One epoch in a random order, in batches of ``size`` (the last one smaller), as a shuffling DataLoader."""
    order = draws.permutation(n)
    return [order[i : i + size] for i in range(0, n, size)]
