"""``normalize=dp-standard``: per-feature mean and scale estimated inside each client's privacy budget.

Each client clips every record's vector ``(u, u**2)`` (``u = x / input maximum``, so features lie in
[0, 1]) to L2 norm ``C`` (``normalize-dp-clip``) and releases the sums with Gaussian noise of std
``z * C`` per coordinate: adding or removing one record moves the sums by at most ``C``, so this is
the Gaussian mechanism with noise multiplier ``z``, one release at sampling rate 1. The server adds the
clients' noisy sums and divides by the public record count. ``z`` is chosen so that the release alone
spends ``normalize-dp-share`` of ``dp-target-epsilon``; the release is the first segment
``(z, 1.0, 1)`` of every client's accountant, so DP-SGD's sigma is calibrated for what is left and every
epsilon the run reports counts both.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from fedtrain.config import RunConfig
from fedtrain.privacy.accountant import epsilon_of

__all__ = [
    "STD_FLOOR",
    "dp_standard_statistics",
    "normalization_epsilon",
    "normalization_noise",
    "normalization_segments",
]

STD_FLOOR = 0.05  # smallest scale, in units of the input maximum: noisy near-constant pixels stay bounded


@functools.lru_cache(maxsize=32)
def normalization_noise(share: float, target_epsilon: float, delta: float, mechanism: str) -> float:
    """Smallest noise multiplier ``z`` whose single Gaussian release spends at most ``share * target_epsilon``."""

    def spent(z: float) -> float:
        return epsilon_of(mechanism, [(z, 1.0, 1)], delta)

    goal = share * target_epsilon
    low, high = 0.0, 1.0
    while spent(high) > goal:
        low, high = high, 2 * high
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if spent(mid) > goal else (low, mid)
        if high - low < 1e-6 * high:
            break
    return high


def normalization_segments(cfg: RunConfig) -> list[tuple[float, float, int]]:
    """The ``(z, 1.0, 1)`` release this config makes before any DP-SGD step (empty unless ``dp-standard``)."""
    if cfg.data.normalize != "dp-standard" or not cfg.sample_dp or math.isinf(cfg.privacy.dp_target_epsilon):
        return []
    pc = cfg.privacy
    z = normalization_noise(cfg.data.normalize_dp_share, pc.dp_target_epsilon, pc.dp_delta, pc.dp_accountant)
    return [(z, 1.0, 1)]


def normalization_epsilon(cfg: RunConfig) -> float:
    """Epsilon of the normalisation release on its own (0 without ``dp-standard``)."""
    seg = normalization_segments(cfg)
    return epsilon_of(cfg.privacy.dp_accountant, seg, cfg.privacy.dp_delta) if seg else 0.0


def dp_standard_statistics(
    parts: Sequence[np.ndarray], max_value: float, *, clip: float, noise_multiplier: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shift and scale (raw units) from the clients' noisy clipped sums of ``u`` and ``u**2``.

    Parameters
    ----------
    parts
        Each client's raw training inputs, shape ``(n_i, *input_shape)``.
    max_value
        The inputs' nominal maximum (``u = x / max_value``).
    clip
        L2 bound ``C`` on each record's ``(u, u**2)``.
    noise_multiplier
        ``z``: each client's sums get Gaussian noise of std ``z * C``.
    seed
        Seeds each client's noise (client ``i`` uses ``seed + 3000 + i``), so every process rebuilds the same release.
    """
    shape = parts[0].shape[1:]
    d = int(np.prod(shape))
    total = np.zeros(2 * d)
    count = 0
    for cid, x in enumerate(parts):
        u = x.reshape(len(x), d).astype(np.float64) / max_value
        v = np.concatenate([u, u**2], axis=1)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        v = v * np.minimum(1.0, clip / np.maximum(norms, 1e-12))
        noise = np.random.default_rng(seed + 3000 + cid).normal(0.0, noise_multiplier * clip, 2 * d)
        total += v.sum(0) + noise  # what client cid releases
        count += len(x)
    mean, second = total[:d] / count, total[d:] / count
    std = np.sqrt(np.maximum(second - mean**2, STD_FLOOR**2))
    std = np.maximum(std, STD_FLOOR)
    return (mean * max_value).reshape(shape).astype(np.float32), (std * max_value).reshape(shape).astype(np.float32)
