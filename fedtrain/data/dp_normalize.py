"""``normalize=dp-standard``'s statistics: the clients' noisy clipped sums of ``u`` and ``u**2``, added up.

The mechanism and its accounting are described in :mod:`fedtrain.privacy.dp_normalize`; this module only does
the arithmetic each client and the server would do, seeded so that every process of a simulation rebuilds the
same release.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["NOISE_FLOOR", "STD_FLOOR", "dp_standard_statistics"]

STD_FLOOR = 0.05  # smallest scale, in units of the input maximum: noisy near-constant pixels stay bounded
# A variance counts as measured only where it exceeds this many standard deviations of the release's own noise on
# it; below, the scale is that noise level instead. Without it a pixel that is constant (digits' borders) got the
# floor 0.05 from a variance that was pure noise and its noisy mean (off by 0.33 at epsilon 0.1) was divided by it:
# inputs at the +-5 clip in every such pixel, 0.24 accuracy at epsilon 1 against 0.47 with `range` (issue 17).
NOISE_FLOOR = 3.0


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
    # Post-processing with public facts only: u and u**2 lie in [0, 1], and each pooled mean's noise has std
    # z * C * sqrt(clients) / count (the variance's: that times sqrt(1 + 4 mean**2), from second - mean**2).
    mean, second = np.clip(total[:d] / count, 0.0, 1.0), np.clip(total[d:] / count, 0.0, 1.0)
    err = noise_multiplier * clip * math.sqrt(len(parts)) / count
    floor = np.maximum(STD_FLOOR, np.sqrt(NOISE_FLOOR * err * np.sqrt(1.0 + 4.0 * mean**2)))
    std = np.maximum(np.sqrt(np.maximum(second - mean**2, 0.0)), floor)
    return (mean * max_value).reshape(shape).astype(np.float32), (std * max_value).reshape(shape).astype(np.float32)
