"""The vectorised exchange returns the replies the ClientApp would have returned, for the same messages.

Each case sends the same train messages once to the real ClientApp (one by one, as the in-process grid
does) and once to :func:`train_batch` (all clients in one batched call), each side with its own node
contexts, and compares the replies: arrays within ``ATOL`` (float rounding of a batched matmul over a
few dozen steps; measured at most ~3e-7 here), metrics equal (losses within ``ATOL``) and the DP
accountant left in each ``Context.state`` identical.
"""

from __future__ import annotations

import copy

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedtrain.config import load_config
from fedtrain.data import build_federated_data
from fedtrain.data.federated import normalize_noise_of
from fedtrain.federation.apps import build_client_app
from fedtrain.federation.exchange.vectorised import refusal, train_batch
from fedtrain.models import build_model
from fedtrain.privacy.client_privacy import STATE_KEY
from fedtrain.runtime import InProcessGrid
from fedtrain.train.optimizers import OPTIMIZERS

ATOL = 1e-5
RTOL = 1e-6
ADAPTIVE_LR = {"adagrad": 0.01, "rmsprop": 0.002, "adam": 0.002, "adamw": 0.002}  # stable rates: no chaos to amplify
BASE = {"num-clients": 4, "hidden-sizes": "16", "local-epochs": 2, "batch-size": 32, "min-clients": 2,
        "progress": False, "report": False}  # fmt: skip
DP = {"dp-level": "sample", "dp-noise-multiplier": 1.0, "dp-target-epsilon": 1000.0, "dp-grad-sample-mode": "hooks"}


def _replies(overrides: dict, config: dict | None = None, rounds: int = 1, lr: float = 0.05) -> tuple[list, list]:
    """(ClientApp replies, batched replies) per round, for every client of ``overrides``' federation."""
    cfg = load_config(overrides={**BASE, **overrides})
    app = build_client_app()
    n = cfg.partition.num_clients
    grids = [InProcessGrid(app, n, cfg.to_flat(), vectorisable=True) for _ in range(2)]
    data = build_federated_data(cfg.data, cfg.partition, cfg.runtime.seed, normalize_noise_of(cfg))
    start = build_model(cfg.model, data.input_shape, len(data.classes), seed=3).state_dict()
    sequential, batched = [], []
    for r in range(1, rounds + 1):
        settings = ConfigRecord({"lr": lr, "global-round": r, "phase": "finetune", **(config or {})})
        messages = [
            grids[0].create_message(RecordDict({"arrays": ArrayRecord(start), "config": settings}), "train", node, "1")
            for node in grids[0].contexts
        ]
        seq = []
        for m in messages:
            sent = copy.deepcopy(m)
            sent.metadata.__dict__["_message_id"] = f"m{m.metadata.dst_node_id}"
            seq.append(app(sent, grids[0].contexts[m.metadata.dst_node_id]))
        sequential.append(seq)
        batched.append(train_batch([copy.deepcopy(m) for m in messages], grids[1].contexts))
    states = [[dict(c.state.config_records.get(STATE_KEY, {})) for c in g.contexts.values()] for g in grids]
    assert states[0] == states[1]  # every client's accountant, as the ClientApp leaves it
    return sequential, batched


def _assert_same(sequential: list[list[Message]], batched: list[list[Message]], weights_atol: float = ATOL) -> float:
    worst = 0.0
    for seq_round, vec_round in zip(sequential, batched, strict=True):
        for a, b in zip(seq_round, vec_round, strict=True):
            assert not a.has_error(), a.error.reason
            assert list(a.content.keys()) == list(b.content.keys())  # the ClientApp's records, in its order
            wa, wb = a.content["arrays"].to_torch_state_dict(), b.content["arrays"].to_torch_state_dict()
            assert list(wa) == list(wb)
            for k in wa:
                worst = max(worst, float((wa[k] - wb[k]).abs().max()))
            ma, mb = dict(a.content["metrics"]), dict(b.content["metrics"])
            assert ma.keys() == mb.keys()
            for k in ma:
                assert ma[k] == pytest.approx(mb[k], rel=RTOL, abs=ATOL), k
            ha, hb = a.content.config_records.get("dp-history"), b.content.config_records.get("dp-history")
            assert (dict(ha) if ha else None) == (dict(hb) if hb else None)
            assert b.metadata.reply_to_message_id and b.metadata.dst_node_id == a.metadata.dst_node_id
    assert worst <= weights_atol, worst
    return worst


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_every_optimizer_matches_the_client_app(optimizer):
    extra = {"weight-decay": 0.01, "momentum": 0.9}
    _assert_same(*_replies({"optimizer": optimizer, **extra}, lr=ADAPTIVE_LR.get(optimizer, 0.05)))


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_every_optimizer_matches_under_dp_sgd(optimizer):
    seq, vec = _replies({"optimizer": optimizer, "momentum": 0.9, **DP}, rounds=2, lr=ADAPTIVE_LR.get(optimizer, 0.05))
    _assert_same(seq, vec)
    eps = [[m.content["metrics"]["dp-epsilon"] for m in r] for r in seq]
    assert eps == [[m.content["metrics"]["dp-epsilon"] for m in r] for r in vec]


@pytest.mark.parametrize(
    "overrides",
    [
        {"clip-grad-norm": 0.5, "l1": 0.001, "label-smoothing": 0.1, "class-weights": "balanced"},
        {"clip-grad-value": 0.01, "loss": "gce", "batch-size": 0},
        {"loss": "gce", "label-smoothing": 0.2, "class-weights": "balanced", "batch-size": 1, "local-epochs": 1},
    ],
    ids=["clip-norm-l1-smoothing-weights", "clip-value-gce-full-batch", "gce-smoothing-weights-single-sample"],
)
def test_penalties_clipping_and_losses_match(overrides):
    # Single-sample momentum SGD at lr 0.05 diverges (weights ~1e4), and chaos amplifies rounding: a stable rate.
    _assert_same(*_replies(overrides, lr=0.005 if overrides.get("batch-size") == 1 else 0.05))


def test_fedprox_term_and_frozen_layers_match():
    _assert_same(*_replies({"hidden-sizes": "16,16"}, {"proximal-mu": 0.5, "freeze-depth": 1}))


def test_dp_with_penalties_and_fedprox_matches():
    _assert_same(*_replies({**DP, "l1": 0.001, "weight-decay": 0.01}, {"proximal-mu": 0.3}))


@pytest.mark.parametrize("dp", [False, True])
def test_linear_model_matches_with_and_without_dp(dp):
    _assert_same(*_replies({"model": "linear", **(DP if dp else {})}, rounds=2, lr=0.5))


def test_the_small_budget_recipe_matches_dp_standard_release_included():
    # The DP defaults at epsilon 1 (linear model, dp-standard inputs; model=linear since BASE's hidden-sizes would
    # choose the MLP): the normaliser's release is in every client's accountant on both sides (_replies compares
    # the accountants left in the contexts).
    recipe = {"model": "linear", "dp-level": "sample", "dp-target-epsilon": 1.0, "dp-grad-sample-mode": "hooks"}
    cfg = load_config(overrides={**BASE, **recipe})
    assert (cfg.model.model, cfg.data.normalize) == ("linear", "dp-standard")
    assert refusal(cfg) == ""
    sequential, batched = _replies(recipe, rounds=2, lr=1.0)
    _assert_same(sequential, batched)


def test_cnn_matches_with_and_without_dp():
    cnn = {"model": "cnn", "cnn-channels": "4", "cnn-groups": 2}
    _assert_same(*_replies(cnn))
    _assert_same(*_replies({**cnn, **DP}))


def test_a_declined_client_replies_the_global_model_as_the_client_app():
    seq, vec = _replies({**DP, "dp-target-epsilon": 2.0, "dp-noise-multiplier": 0.8}, rounds=3)
    _assert_same(seq, vec)
    assert any(m.content["metrics"]["dp-declined"] for r in vec for m in r)


def test_history_in_the_reply_is_the_clients_whole_history():
    seq, vec = _replies(DP, rounds=2)
    for a, b in zip(seq[-1], vec[-1], strict=True):  # the accountant's state dict: sigma, q and steps of both rounds
        history = dict(b.content["dp-history"])
        assert history == dict(a.content["dp-history"])
        assert len(history["steps"]) >= 1 and sum(history["steps"]) > 0 and all(q > 0 for q in history["q"])


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_matches_when_poisson_batches_are_empty(optimizer):
    # At batch 2 many Poisson batches are empty: each is still a step (noise alone, as Opacus steps on it), so the
    # noise, the masks and Adam's bias corrections (each client's own step count) must stay in step with Opacus.
    seq, vec = _replies({**DP, "optimizer": optimizer, "batch-size": 2, "learning-rate": 0.01})
    # 262-424 Adam steps a client (37-58 on empty batches) of float32 rounding: 2.1e-5 measured
    _assert_same(seq, vec, weights_atol=1e-4)


@pytest.mark.parametrize(("n", "batch", "epochs"), [(13, 32, 1), (70, 32, 3), (5, 1, 2), (9, 0, 2)])
def test_batch_order_is_the_shuffling_loaders(n, batch, epochs):
    from torch.utils.data import DataLoader, TensorDataset

    from fedtrain.config import TrainConfig
    from fedtrain.train.batched import ClientJob, _plain_batches

    job = ClientJob(x=torch.zeros(n, 1).numpy(), y=torch.zeros(n, dtype=torch.long).numpy(), seed=1234,
                    class_weight=torch.ones(2))  # fmt: skip
    size = n if batch == 0 else min(batch, n)
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=size, shuffle=True,
                        generator=torch.Generator().manual_seed(1234))  # fmt: skip
    expected = [b.tolist() for _ in range(epochs) for (b,) in loader]
    got = [b.tolist() for b in _plain_batches(job, TrainConfig(batch_size=batch, local_epochs=epochs))]
    assert got == expected


def test_held_arrays_equal_flowers_arrays():
    import numpy as np
    from flwr.app import Array

    from fedtrain.federation.exchange.held_arrays import HeldArray, held_record

    for values in (np.random.rand(7, 3).astype(np.float32), np.arange(4), np.zeros((0, 2), np.float32)):
        held, plain = HeldArray.of(values), Array.from_numpy_ndarray(values)
        assert held.data == plain.data and held.dtype == plain.dtype and tuple(held.shape) == tuple(plain.shape)
        assert np.array_equal(held.numpy(), values) and np.array_equal(Array.numpy(held), values)
        assert held.object_id == plain.object_id
    state = {"w": torch.randn(3, 2), "b": torch.randn(2), "n": torch.tensor(5)}
    record = held_record(state)
    assert record.object_id == ArrayRecord(state).object_id
    assert all(torch.equal(record.to_torch_state_dict()[k], v) for k, v in state.items())


def test_clients_are_chunked_by_memory_and_chunks_change_nothing():
    import numpy as np

    from fedtrain.config import TrainConfig
    from fedtrain.train.batched import MAX_CHUNK, ClientJob, DPSettings, chunk_size, train_clients

    assert chunk_size(1000, budget_bytes=10_000) == 10 and chunk_size(10**9, budget_bytes=1) == 1
    assert chunk_size(1, budget_bytes=10**9) == MAX_CHUNK
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    rng = np.random.default_rng(0)
    jobs = [
        ClientJob(
            x=rng.normal(size=(n, 4)).astype(np.float32),
            y=rng.integers(0, 3, n),
            seed=n,
            class_weight=torch.ones(3),
            noise_seed=n,
            noise_multiplier=1.0,
        )
        for n in (3, 9, 17, 40)
    ]
    cfg = TrainConfig(batch_size=8, optimizer="adam")
    for dp in (None, DPSettings(1.0)):
        whole = train_clients(model, model.state_dict(), jobs, cfg, lr=0.01, dp=dp)
        one_by_one = train_clients(model, model.state_dict(), jobs, cfg, lr=0.01, dp=dp, budget_bytes=1)
        for a, b in zip(whole, one_by_one, strict=True):
            assert a.loss == pytest.approx(b.loss, rel=1e-6)
            assert all(torch.allclose(a.state[k], b.state[k], atol=1e-6) for k in a.state)


@pytest.mark.parametrize("mode", ["ghost", "auto"])
def test_ghost_clipping_matches(mode):
    # auto picks ghost clipping for an MLP at batch-size >= 128; Opacus sums the same clipped per-sample gradients
    _assert_same(*_replies({**DP, "dp-grad-sample-mode": mode, "batch-size": 128}))


def test_poisson_masks_come_from_the_noise_seed_not_the_run_seed():
    import numpy as np

    from fedtrain.config import TrainConfig
    from fedtrain.train.batched import ClientJob, DPSettings, _poisson_batches

    job = ClientJob(x=np.zeros((50, 2), np.float32), y=np.zeros(50, np.int64), seed=1, class_weight=torch.ones(2),
                    noise_seed=987654321, noise_multiplier=1.0)  # fmt: skip
    batches, _ = _poisson_batches(job, TrainConfig(batch_size=10), {"w": torch.Size([2])}, DPSettings(1.0))
    gen = torch.Generator().manual_seed(987654321)
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    first = (torch.rand(50, generator=gen) < 0.2).nonzero().reshape(-1)
    assert torch.equal(batches[0], first)
