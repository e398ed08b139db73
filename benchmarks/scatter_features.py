"""Issue 17: fixed scattering-like features in front of the linear DP model, against raw pixels, on validation.

Tramer & Boneh (2021, "Differentially private learning needs better features") found that a linear model on fixed
ScatterNet features beats end-to-end networks under DP-SGD on MNIST and CIFAR-10. This registers a model
``scatter`` for the run: Morlet filters at ``L`` orientations (one scale, real and imaginary parts), their modulus
and a low-pass channel, average pooling, a per-sample group norm (no privacy cost: it reads one sample), then the
linear head. The features have no trainable parameters and read no data. Each variant runs the linear DP recipe's
keys (``linear_dp_defaults``) with that model, on the tuning seeds, and the mean validation accuracy ranks it
(test is never looked at here).

    python benchmarks/scatter_features.py --epsilon 1 --seeds 100-107
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (model, scatter options, run keys over the recipe's)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "linear (the recipe)": ("linear", {}, {}),
    "scatter L8 5x5": ("scatter", {}, {}),
    "scatter L8 5x5 lr0.3": ("scatter", {}, {"learning-rate": 0.3}),
    "scatter L8 3x3 lr0.3": ("scatter", {"size": 3, "sigma": 0.6}, {"learning-rate": 0.3}),
    "scatter L4 5x5 lr0.3": ("scatter", {"orientations": 4}, {"learning-rate": 0.3}),
}


def morlet(size: int, sigma: float, xi: float, theta: float) -> torch.Tensor:
    """A zero-mean complex Morlet filter of ``size`` x ``size`` at angle ``theta`` (L1-normalised)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    envelope = torch.exp(-(x**2 + y**2) / (2 * sigma**2))
    wave = torch.exp(1j * xi * (x * math.cos(theta) + y * math.sin(theta)))
    psi = envelope * (wave - (envelope * wave).sum() / envelope.sum())
    return psi / psi.abs().sum()


class ScatterLinear(nn.Module):
    """Fixed first-order scattering features (modulus of oriented Morlet responses, low-pass), then a linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, orientations: int = 8, size: int = 5,
                 sigma: float = 0.8, pool: int = 2) -> None:  # fmt: skip
        super().__init__()
        filters = [morlet(size, sigma, 3 * math.pi / 4, k * math.pi / orientations) for k in range(orientations)]
        bank = torch.stack([f.real for f in filters] + [f.imag for f in filters]).float().unsqueeze(1)
        self.register_buffer("bank", bank)
        r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        low = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (1.5 * sigma) ** 2))
        self.register_buffer("low", (low / low.sum())[None, None])
        self.orientations, self.pool = orientations, pool
        channels, height, width = input_shape
        self.head = nn.Linear(channels * (orientations + 1) * (height // pool) * (width // pool), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        planes = x.reshape(n * c, 1, *x.shape[2:])
        z = functional.conv2d(planes, self.bank, padding=self.bank.shape[-1] // 2)
        modulus = torch.sqrt(z[:, : self.orientations] ** 2 + z[:, self.orientations :] ** 2 + 1e-6)
        low = functional.conv2d(planes, self.low, padding=self.low.shape[-1] // 2)
        features = functional.avg_pool2d(torch.cat([low, modulus], 1), self.pool).reshape(n, 1, -1)
        return self.head(functional.group_norm(features, 1).reshape(n, -1))


_OPTIONS: dict[str, Any] = {}


def _register() -> None:
    from fedtrain.models.zoo import MODELS

    @MODELS.register("scatter")
    def _scatter(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return ScatterLinear(input_shape, num_classes, **_OPTIONS)


def run(model: str, keys: dict[str, Any], epsilon: float, seed: int, out: Path) -> float:
    """Final validation accuracy of one run of the linear recipe with ``model``."""
    from fedtrain.config import load_config
    from fedtrain.config.dp_defaults import linear_dp_defaults
    from fedtrain.runtime import run_inprocess

    flat = {"dp-level": "sample", "dp-target-epsilon": epsilon, "progress": False, "report": False,
            "val-fraction": 0.1, "client-eval-fraction": 0, "fraction-evaluate": 0, "seed": seed,
            "out-dir": str(out), **linear_dp_defaults(epsilon), "model": model, "dp-defaults": False,
            **keys}  # fmt: skip
    run_dir = run_inprocess(load_config(overrides=flat))
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return float(lines[-1]["val_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--seeds", default="100-107", help="tuning seeds, FIRST-LAST (never the reporting 0-2)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/scatter-features"))
    args = parser.parse_args()
    first, last = (int(v) for v in args.seeds.split("-"))
    for logger in ("flwr", "fedtrain"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    _register()
    print(f"epsilon {args.epsilon}, seeds {args.seeds}: mean validation accuracy +- std")
    for name, (model, options, keys) in VARIANTS.items():
        _OPTIONS.clear()
        _OPTIONS.update(options)
        t0 = time.perf_counter()
        vals = [run(model, keys, args.epsilon, seed, args.out) for seed in range(first, last + 1)]
        print(f"| {name} | {statistics.mean(vals):.3f} +- {statistics.stdev(vals):.3f} | "
              f"{time.perf_counter() - t0:.0f} s |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
