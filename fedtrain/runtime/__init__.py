"""Runtimes that drive the ServerApp and ClientApp: in-process, and `flwr run` (Simulation Engine)."""

from fedtrain.runtime.grid import InProcessGrid
from fedtrain.runtime.inprocess import run_inprocess

__all__ = ["InProcessGrid", "run_inprocess"]
