"""Where the device trainer's random draws come from: batches (Poisson or shuffled), DP noise, corruption masks.

``dp-noise-seed=os`` (:class:`OsDraws`): every draw that DP rests on (which records a Poisson batch takes, the
Gaussian noise) is made from ``os.urandom``, the operating system's CSPRNG, turned into Gaussians by the
Box-Muller transform in float64. This is stronger than a ``numpy.random.Generator`` seeded from
``os.urandom``: PCG64 and Philox are statistical generators, whose future outputs an observer of past ones could
in principle predict. ``dp-noise-seed=run`` (:class:`SeededDraws`): a ``numpy.random.Generator`` (PCG64) seeded
with the call's seed, reproducible for experiments, as the torch client's ``run`` mode is. Neither closes the
floating-point attack on Gaussian noise (Mironov 2012); Opacus' non-secure mode, which the torch client uses,
does not either.
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
    """``numpy.random.Generator`` (PCG64) seeded with ``seed``: reproducible."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))

    def uniform(self, size: int) -> np.ndarray:
        return self.rng.random(size)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self.rng.normal(0.0, std, size=shape).astype(np.float32)

    def permutation(self, n: int) -> np.ndarray:
        return self.rng.permutation(n)


class OsDraws(Draws):
    """Every draw from ``os.urandom`` (the OS CSPRNG); Gaussians by Box-Muller."""

    def uniform(self, size: int) -> np.ndarray:
        bits = np.frombuffer(os.urandom(8 * size), dtype=np.uint64)
        return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)  # 53 random bits, as numpy's random()

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        n = int(np.prod(shape))
        half = (n + 1) // 2
        u1 = 1.0 - self.uniform(half)  # (0, 1]: log never sees 0
        u2 = self.uniform(half)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:n]
        return (std * z).astype(np.float32).reshape(shape)


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
