"""fedtrain's optimizers run torch.optim's update rules without torch.optim's dispatch: results bit-identical."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from fedtrain.config import load_config
from fedtrain.data import ArrayDataset
from fedtrain.errors import ConfigError
from fedtrain.train.optimizers import OPTIMIZERS, EagerOptimizer, build_optimizer

ROOT = Path(__file__).resolve().parents[1]

# What each name meant when it was torch.optim itself (fedtrain before the eager classes).
TORCH: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda ps, lr, m, wd: torch.optim.SGD(ps, lr=lr, weight_decay=wd),
    "momentum": lambda ps, lr, m, wd: torch.optim.SGD(ps, lr=lr, momentum=m, weight_decay=wd),
    "nesterov": lambda ps, lr, m, wd: torch.optim.SGD(ps, lr=lr, momentum=m, nesterov=True, weight_decay=wd),
    "adagrad": lambda ps, lr, m, wd: torch.optim.Adagrad(ps, lr=lr, weight_decay=wd),
    "rmsprop": lambda ps, lr, m, wd: torch.optim.RMSprop(ps, lr=lr, momentum=m, weight_decay=wd),
    "adam": lambda ps, lr, m, wd: torch.optim.Adam(ps, lr=lr, weight_decay=wd),
    "adamw": lambda ps, lr, m, wd: torch.optim.AdamW(ps, lr=lr, weight_decay=wd),
}


def _net() -> nn.Module:
    torch.random.default_generator.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(3 * 6 * 6, 5), nn.Tanh(), nn.Linear(5, 3))


def test_every_registered_name_has_a_torch_reference():
    assert set(OPTIMIZERS) == set(TORCH)


@pytest.mark.parametrize("name", sorted(TORCH))
@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.9, 0.0), (0.5, 1e-2)])
def test_each_optimizer_is_bit_identical_to_torch_optim(name, momentum, weight_decay):
    ours_net, ref_net = _net(), _net()
    cfg = load_config(overrides={"optimizer": name, "momentum": momentum, "weight-decay": weight_decay}).train
    ours = build_optimizer(list(ours_net.parameters()), cfg, 0.05)
    ref = TORCH[name](list(ref_net.parameters()), 0.05, momentum, weight_decay)
    assert isinstance(ours, EagerOptimizer) and isinstance(ours, torch.optim.Optimizer)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        x, y = torch.randn(4, 1, 8, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen)
        for net, opt in ((ours_net, ours), (ref_net, ref)):
            opt.zero_grad(set_to_none=step % 2 == 0)  # both forms of zero_grad
            nn.functional.cross_entropy(net(x), y).backward()
            if step in (2, 3):  # a parameter without a gradient is left alone, its state too
                net[4].bias.grad = None
            opt.step()
        for a, b in zip(ours_net.parameters(), ref_net.parameters(), strict=True):
            assert torch.equal(a, b), (name, step)
    # Same state, and a state dict that torch.optim loads (a checkpoint of one reads into the other).
    sd_ours, sd_ref = ours.state_dict(), ref.state_dict()
    assert sd_ours["param_groups"] == sd_ref["param_groups"]
    assert sd_ours["state"].keys() == sd_ref["state"].keys()
    for i, s in sd_ref["state"].items():
        assert s.keys() == sd_ours["state"][i].keys()
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sd_ours["state"][i][k])), (name, i, k)
    TORCH[name](list(_net().parameters()), 0.05, momentum, weight_decay).load_state_dict(sd_ours)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_dp_sgd_through_opacus_is_bit_identical_to_torch_optim(name, monkeypatch):
    from fedtrain.models import build_model
    from fedtrain.privacy.dp_sgd import dp_train_local

    cfg = load_config(overrides={"dp-level": "sample", "optimizer": name, "local-epochs": 2, "batch-size": 8})
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(40, 1, 8, 8, generator=gen).numpy(), torch.randint(0, 10, (40,), generator=gen).numpy()
    data = ArrayDataset(x, y, tuple(str(c) for c in range(10)))
    torch.random.default_generator.manual_seed(0)
    start = build_model(cfg.model, (1, 8, 8), 10)

    def train() -> dict[str, torch.Tensor]:
        model, _, _ = dp_train_local(copy.deepcopy(start), data, cfg, lr=0.1, seed=3, noise_multiplier=1.0)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    ours = train()
    tc = cfg.train
    monkeypatch.setitem(OPTIMIZERS._entries, name, lambda ps, lr, c: TORCH[name](ps, lr, tc.momentum, tc.weight_decay))
    ref = train()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ours)


def test_a_bad_setting_is_refused_with_the_value_named():
    cfg = load_config().train
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        build_optimizer(p, cfg, -1.0)
    with pytest.raises(ValueError, match="empty parameter list"):
        build_optimizer([], cfg, 0.1)
    with pytest.raises(ValueError, match="more than once"):
        build_optimizer(p + p, cfg, 0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        build_optimizer([p[0] * 2], cfg, 0.1)
    with pytest.raises(ConfigError, match="momentum > 0"):
        OPTIMIZERS.get("nesterov")(p, 0.1, dataclasses.replace(cfg, momentum=0.0))
    with pytest.raises(NotImplementedError, match="step hooks"):
        build_optimizer(p, cfg, 0.1).register_step_pre_hook(lambda *a: None)


def test_building_and_stepping_an_optimizer_does_not_import_torch_dynamo():
    code = (
        "import sys, torch\n"
        "from fedtrain.config import load_config\n"
        "from fedtrain.train.optimizers import OPTIMIZERS, build_optimizer\n"
        "for name in OPTIMIZERS:\n"
        "    p = torch.nn.Parameter(torch.ones(3))\n"
        "    opt = build_optimizer([p], load_config(overrides={'optimizer': name}).train, 0.1)\n"
        "    p.sum().backward(); opt.step(); opt.zero_grad()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
