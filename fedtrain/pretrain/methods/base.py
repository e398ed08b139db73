"""What a pretraining method is: the trainable head beside one hidden layer, and its per-sample loss."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from fedtrain.config import RunConfig
from fedtrain.models.mlp import DenseBlock
from fedtrain.registry import Registry

__all__ = ["METHODS", "PretrainMethod"]


class PretrainMethod(nn.Module, ABC):
    """How hidden layer ``layer`` (``block``) is pretrained; registered in :data:`METHODS` by name.

    A method holds the modules it trains: the block's own modules where it uses them, and
    ``head``, the parameters beside the layer (a decoder, an RBM's visible bias) whose arrays
    travel with the model during the phase and are dropped after it. Each trainable module must
    be reachable once only from the method (Opacus hooks a module once per path, so a module
    registered twice gets its per-sample gradients counted twice).

    ``v`` below is the input of the layer: the features of the frozen layers under it, ``(B, nv)``.
    Losses are per sample, shape ``(B,)``, and summed over features, not averaged: averaging
    would shrink every per-sample gradient by the feature count, and with DP-SGD's fixed
    clipping norm the noise would drown the signal.
    """

    head: nn.Module

    def __init__(self, block: DenseBlock, layer: int, cfg: RunConfig) -> None:
        super().__init__()
        # Arrays of the block are the model's, not this method's (an RBM's head shares them).
        self._block_tensors = frozenset(id(t) for t in block.state_dict(keep_vars=True).values())

    @abstractmethod
    def loss(self, v: torch.Tensor) -> torch.Tensor:
        """The per-sample training loss, ``(B,)``; gradients flow to the block and the head."""

    @abstractmethod
    def reconstruction_error(self, v: torch.Tensor) -> torch.Tensor:
        """Per-sample squared reconstruction error of clean inputs, ``(B,)`` (for monitoring)."""

    def aux_state(self) -> dict[str, torch.Tensor]:
        """The head's arrays, without those it shares with the block."""
        return {
            k: t.detach() for k, t in self.head.state_dict(keep_vars=True).items() if id(t) not in self._block_tensors
        }

    def load_aux_state(self, arrays: dict[str, torch.Tensor]) -> None:
        """Load the head's own arrays (as :meth:`aux_state` names them); absent ones keep their values."""
        if arrays:
            self.head.load_state_dict(arrays, strict=False)


METHODS = Registry[type[PretrainMethod]]("pretrain-method")
"""Pretraining methods by name; an entry is a :class:`PretrainMethod` class, built as ``cls(block, layer, cfg)``."""
