"""What a client does in each kind of federated stage: the client half of the stage seam.

A :class:`FederatedStage` names its client work in every train config (``phase``, the stage's
``name``); the ClientApp looks the task up in :data:`CLIENT_TASKS`. A task says which local records
it trains on, how many DP-SGD steps one call takes (the accountant plans the whole run from it), and
how it trains. A new federated stage registers its task next to itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedtrain import wire
from fedtrain.config import RunConfig
from fedtrain.data import ArrayDataset, ClientData
from fedtrain.errors import ConfigError, ModelError
from fedtrain.federation.config_values import config_number
from fedtrain.models import MLP
from fedtrain.pretrain import pretrain_local
from fedtrain.privacy.dp_sgd import DPPlan, dp_train_local, plan_steps
from fedtrain.registry import Registry
from fedtrain.train import TrainResult, train_local

__all__ = ["CLIENT_TASKS", "ClientTask", "FinetuneTask", "LocalCall", "PretrainTask", "client_task", "config_number"]


@dataclass
class LocalCall:
    """One train message's local work: the model received, its extra arrays, and the round's settings."""

    cfg: RunConfig
    model: nn.Module
    aux: dict[str, torch.Tensor]  # arrays that travel beside the model (a pretraining decoder)
    config: Mapping[str, Any]  # the server's train config
    lr: float
    proximal_mu: float
    seed: int
    noise_multiplier: float | None  # DP-SGD on when set


class ClientTask(ABC):
    """The local work of one kind of federated stage."""

    @abstractmethod
    def records(self, client: ClientData) -> ArrayDataset:
        """The local records this task trains on."""

    @abstractmethod
    def dp_plan(self, cfg: RunConfig, num_records: int) -> DPPlan:
        """Sampling rate and DP-SGD steps of one local call on ``num_records`` records."""

    @abstractmethod
    def train(self, call: LocalCall, data: ArrayDataset) -> tuple[dict[str, torch.Tensor], TrainResult]:
        """Train; return the arrays to send back (model and aux) and the result."""


CLIENT_TASKS: Registry[ClientTask] = Registry("phase")


def client_task(phase: str) -> ClientTask:
    """The task of ``phase``; an unknown one is an error (never a silent fine-tuning)."""
    if phase not in CLIENT_TASKS:
        raise ConfigError(
            f"the server asks for phase {phase!r}, which this client does not know (it knows "
            f"{', '.join(CLIENT_TASKS)}); register a ClientTask for it, in the same version on server and clients"
        )
    return CLIENT_TASKS.get(phase)


class PretrainTask(ClientTask):
    """Layer-wise pretraining of hidden layer ``layer``, unsupervised, on every local record."""

    def records(self, client: ClientData) -> ArrayDataset:
        return client.train

    def dp_plan(self, cfg: RunConfig, num_records: int) -> DPPlan:
        p = cfg.pretrain
        return plan_steps(num_records, p.pretrain_batch_size, p.pretrain_epochs)

    def train(self, call: LocalCall, data: ArrayDataset) -> tuple[dict[str, torch.Tensor], TrainResult]:
        if not isinstance(call.model, MLP):  # the loader refuses such a plan; a server of another version may not
            raise ModelError(f"layer-wise pretraining needs model='mlp', got {type(call.model).__name__}")
        layer = int(config_number(call.config, wire.LAYER, 0))
        return pretrain_local(
            call.model, layer, call.aux, data, call.cfg, seed=call.seed, lr=call.lr,
            noise_multiplier=call.noise_multiplier, proximal_mu=call.proximal_mu,
        )  # fmt: skip


class FinetuneTask(ClientTask):
    """Supervised training of the whole network on the labelled records; ``freeze-depth`` layers kept."""

    def records(self, client: ClientData) -> ArrayDataset:
        return client.labeled

    def dp_plan(self, cfg: RunConfig, num_records: int) -> DPPlan:
        return plan_steps(num_records, cfg.train.batch_size, cfg.train.local_epochs)

    def train(self, call: LocalCall, data: ArrayDataset) -> tuple[dict[str, torch.Tensor], TrainResult]:
        model, depth = call.model, int(config_number(call.config, wire.FREEZE_DEPTH, 0))
        hidden: list[nn.Module] = list(model.hidden) if isinstance(model, MLP) else []
        for block in hidden[:depth]:  # linear probe: pretrained layers stay as they are
            for p in block.parameters():
                p.requires_grad_(False)
        if call.noise_multiplier is not None:
            model, result, _ = dp_train_local(
                model, data, call.cfg, lr=call.lr, seed=call.seed, noise_multiplier=call.noise_multiplier,
                proximal_mu=call.proximal_mu,
            )  # fmt: skip
        else:
            result = train_local(model, data, call.cfg.train, lr=call.lr, seed=call.seed, proximal_mu=call.proximal_mu)
        return model.state_dict(), result


CLIENT_TASKS.register("pretrain", PretrainTask())
CLIENT_TASKS.register("finetune", FinetuneTask())
