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

from fedtrain.config import RunConfig
from fedtrain.config.dp_recipes import normalization_noise, normalization_segments
from fedtrain.privacy.accountant import epsilon_of

__all__ = ["normalization_epsilon", "normalization_noise", "normalization_segments"]


def normalization_epsilon(cfg: RunConfig) -> float:
    """Epsilon of the normalisation release on its own (0 without ``dp-standard``)."""
    seg = normalization_segments(cfg)
    return epsilon_of(cfg.privacy.dp_accountant, seg, cfg.privacy.dp_delta) if seg else 0.0
