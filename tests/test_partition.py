import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtrain.data import load_digits, partition
from fedtrain.errors import ConfigError

LABELS = load_digits().y


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["iid", "dirichlet", "pathological", "quantity-skew"]),
    clients=st.integers(2, 20),
    seed=st.integers(0, 10_000),
)
def test_every_sample_assigned_exactly_once(name, clients, seed):
    k = 10 if name == "pathological" and clients < 5 else 2  # k * clients must cover the 10 classes
    parts = partition(name, LABELS, clients, seed=seed, alpha=0.5, classes_per_client=k, min_size=1)
    assert len(parts) == clients
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS)
    assert np.array_equal(np.sort(joined), np.arange(len(LABELS)))


@pytest.mark.parametrize("name", ["iid", "dirichlet", "pathological", "quantity-skew"])
def test_same_seed_same_partition_other_seed_differs(name):
    a = partition(name, LABELS, 10, seed=3, min_size=5)
    b = partition(name, LABELS, 10, seed=3, min_size=5)
    c = partition(name, LABELS, 10, seed=4, min_size=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _mean_label_entropy(parts):
    ent = []
    for p in parts:
        freq = np.bincount(LABELS[p], minlength=10) / len(p)
        freq = freq[freq > 0]
        ent.append(-(freq * np.log(freq)).sum())
    return float(np.mean(ent))


def test_dirichlet_skew_grows_as_alpha_falls():
    entropies = [
        np.mean(
            [_mean_label_entropy(partition("dirichlet", LABELS, 10, seed=s, alpha=a, min_size=1)) for s in range(5)]
        )
        for a in (100.0, 1.0, 0.1)
    ]
    assert entropies[0] > entropies[1] > entropies[2]
    assert entropies[0] > 2.2  # near uniform over 10 classes (log 10 = 2.30)


def test_pathological_gives_k_classes_per_client():
    parts = partition("pathological", LABELS, 10, seed=0, classes_per_client=2)
    assert all(len(np.unique(LABELS[p])) == 2 for p in parts)


def test_quantity_skew_keeps_label_mix_but_varies_size():
    parts = partition("quantity-skew", LABELS, 10, seed=0, quantity_alpha=0.5, min_size=10)
    sizes = [len(p) for p in parts]
    assert max(sizes) > 2 * min(sizes)


def test_impossible_requests_are_config_errors():
    with pytest.raises(ConfigError, match="raise dirichlet-alpha"):
        partition("dirichlet", LABELS, 100, seed=0, alpha=0.01, min_size=15)
    with pytest.raises(ConfigError, match="cannot cover"):
        partition("pathological", LABELS, 2, seed=0, classes_per_client=2)
    with pytest.raises(ConfigError, match=r"partitioner='random' is unknown; choose one of iid"):
        partition("random", LABELS, 2, seed=0)
