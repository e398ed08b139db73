"""normalize=dp-standard's statistics where the release is mostly noise (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest

from fedtrain.data import load_digits
from fedtrain.data.dp_normalize import STD_FLOOR, dp_standard_statistics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_noisy_release_does_not_blow_up_constant_pixels(seed):
    # Epsilon 1 with the default 10 % share: z = 34, C = 4, 10 clients of 1,797 digits. Each pooled mean is off by
    # about 0.24 (units of the maximum). Dividing that by the 0.05 floor put every constant pixel near +-5.
    x = load_digits().x
    parts = np.array_split(x, 10)
    shift, scale = dp_standard_statistics(parts, 16.0, clip=4.0, noise_multiplier=34.0, seed=seed)
    z = (x - shift) / scale
    constant = x.std(0) == 0  # digits' always-blank border pixels
    assert constant.sum() >= 3
    assert np.abs(z[:, constant]).max() < 1.0  # no larger than `range` would make them (x / 16 in [0, 1])
    assert np.abs(z).max() < 3.0 and float((z**2).mean()) < 1.0
    assert np.all((shift >= 0) & (shift <= 16))  # the means stay in the inputs' range


def test_a_measured_variance_is_used_where_the_noise_is_small():
    x = load_digits().x
    parts = np.array_split(x, 10)
    shift, scale = dp_standard_statistics(parts, 16.0, clip=12.0, noise_multiplier=0.01, seed=0)
    assert np.allclose(shift, x.mean(0), atol=0.05)
    assert np.allclose(scale, np.maximum(x.std(0), STD_FLOOR * 16), atol=0.05)  # the floor where it is exact
