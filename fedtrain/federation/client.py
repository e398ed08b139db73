"""What a ClientApp does with a train or evaluate message: pure functions over Flower types.

``fedtrain.federation.apps`` registers these handlers; keeping them here makes them testable
without a Flower runtime. The train config's ``phase`` names the client task
(:data:`~fedtrain.federation.client_tasks.CLIENT_TASKS`): ``pretrain`` trains hidden layer ``layer``
unsupervised on all local records, ``finetune`` the whole network on the labelled ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from fedtrain import wire
from fedtrain.config import RunConfig
from fedtrain.data import ClientData, data_source, received_spec
from fedtrain.federation.call_seed import call_seed
from fedtrain.federation.client_tasks import LocalCall, client_task, config_number
from fedtrain.federation.context import config_from_run_config
from fedtrain.federation.dp_plan import planned_segments
from fedtrain.federation.exchange.held_arrays import held_record
from fedtrain.federation.secagg_client import as_fitres, from_fitins, is_secagg
from fedtrain.logging import get_logger
from fedtrain.models import build_model
from fedtrain.pretrain import AUX_PREFIX
from fedtrain.privacy.accountant import ClientAccountant
from fedtrain.privacy.client_privacy import load_accountant, round_budget, save_accountant
from fedtrain.privacy.dp_sgd import DPPlan
from fedtrain.privacy.unaccounted import train_loss_shared
from fedtrain.train import evaluate

__all__ = ["handle_evaluate", "handle_train"]

log = get_logger()


@dataclass
class _Local:
    """One message's local state: config, this node's records and the received model."""

    cfg: RunConfig
    client: ClientData
    pid: int
    model: nn.Module
    aux: dict[str, torch.Tensor]
    config: ConfigRecord | None  # the message's train or evaluate config
    pool_key: tuple[Any, ...] | None = None  # set when ``model`` came from (and goes back to) the idle pool


# Idle models of this process, one per (model config, input shape, classes). A fine-tuning call without DP-SGD
# takes one and puts it back once its reply holds copies of the weights: building a model per message was a
# third of an in-process client's overhead (the plain loop reuses one model too). Opacus hooks the module it
# wraps, and pretraining wraps the layers, so those calls build their own. ``dict.pop`` hands a model to one
# caller only.
_IDLE: dict[tuple[Any, ...], nn.Module] = {}


def _model(
    cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, pool_key: tuple[Any, ...] | None
) -> nn.Module:
    """The idle model under ``pool_key`` when one is free (trainable again, no gradients), else a new one."""
    model = _IDLE.pop(pool_key, None) if pool_key is not None else None
    if model is None:
        return build_model(cfg.model, input_shape, num_classes)
    for p in model.parameters():
        p.requires_grad_(True)  # freeze-depth froze some for the call that used it
        p.grad = None
    return model


def _config(content: RecordDict) -> ConfigRecord | None:
    """The train config (looked up directly: ``RecordDict.config_records`` builds a new dict per call)."""
    record = content.get(wire.CONFIG)
    return record if isinstance(record, ConfigRecord) else None


def _local_model(content: RecordDict, context: Context, *, training: bool = False) -> _Local:
    cfg = config_from_run_config(context.run_config)
    torch.set_num_threads(cfg.runtime.torch_threads)
    source = data_source(cfg, context.node_config)  # a data-path file, or the simulated partition
    # Classes, input shape and normaliser are the federation's, sent by the server with every message.
    config = _config(content)
    spec = received_spec(cfg, config)
    client = source.client_data(spec)
    phase = str(config.get(wire.PHASE, "finetune")) if config is not None else "finetune"
    shape, classes = tuple(spec.input_shape), len(spec.classes)
    pooled = training and not cfg.sample_dp and phase == "finetune"
    pool_key = (cfg.model, shape, classes) if pooled else None
    model = _model(cfg, shape, classes, pool_key)  # the received weights replace its own
    received = content[wire.ARRAYS]
    if not isinstance(received, ArrayRecord):
        raise TypeError(f"record {wire.ARRAYS!r} of a message is a {type(received).__name__}, not an ArrayRecord")
    arrays = received.to_torch_state_dict()
    model.load_state_dict({k: v for k, v in arrays.items() if not k.startswith(AUX_PREFIX)})
    aux = {k: v for k, v in arrays.items() if k.startswith(AUX_PREFIX)}
    return _Local(cfg, client, source.partition_id, model, aux, config, pool_key)


def handle_train(msg: Message, context: Context) -> Message:
    """Run this round's local work for the message's phase and reply with the new weights.

    Under SecAgg+ the request and reply use Flower's legacy layout and the reply carries the update. This is the
    torch runtime; :func:`fedtrain.federation.handlers.runtime_handlers` sends an ``onnx`` node's messages
    to :mod:`fedtrain.federation.onnx_client` instead (same layout).
    """
    if is_secagg(msg):
        return Message(as_fitres(msg.content, train(from_fitins(msg.content), context)), reply_to=msg)
    return Message(train(msg.content, context), reply_to=msg)


def train(content: RecordDict, context: Context) -> RecordDict:
    """The local work of one train request: fedtrain's layout in and out."""
    local = _local_model(content, context, training=True)
    cfg, client, pid, model, aux, config = local.cfg, local.client, local.pid, local.model, local.aux, local.config
    if config is None:
        raise TypeError(f"a train message without its {wire.CONFIG!r} ConfigRecord: run server and clients alike")
    task = client_task(str(config.get(wire.PHASE, "finetune")))
    global_round = int(config_number(config, wire.GLOBAL_ROUND, config_number(config, wire.SERVER_ROUND, 1)))
    seed = call_seed(cfg.runtime.seed, global_round, pid)
    data = task.records(client)
    metrics: dict[str, Any] = {wire.PARTITION_ID: pid}
    if cfg.user_dp:
        metrics[wire.USER_DP_WEIGHT] = 1.0
    sigma: float | None = None
    acc: ClientAccountant | None = None
    plan = task.dp_plan(cfg, len(data.y))
    if cfg.sample_dp:
        sigma, report, acc = _budget(context, config, cfg, client, pid, plan)
        metrics.update(report)
        if report[wire.DP_DECLINED]:
            metrics[wire.NUM_EXAMPLES] = 0
            if train_loss_shared(cfg):
                metrics[wire.TRAIN_LOSS] = 0.0
            return _reply({**model.state_dict(), **aux}, metrics, acc)
    mu = config_number(config, wire.PROXIMAL_MU, 0.0)
    lr = config_number(config, wire.LR)
    call = LocalCall(cfg, model, aux, config, lr=lr, proximal_mu=mu, seed=seed, noise_multiplier=sigma)
    arrays, result = task.train(call, data)
    if acc is not None and sigma is not None:
        acc.record(sigma, plan.sample_rate, plan.steps_per_call)
        save_accountant(context, acc)
        metrics[wire.DP_STEPS] = acc.steps
    metrics[wire.NUM_EXAMPLES] = result.num_examples
    if train_loss_shared(cfg):  # under DP an unnoised loss of private records stays on the client
        metrics[wire.TRAIN_LOSS] = result.loss
    if local.pool_key is None:
        return _reply(arrays, metrics, acc)
    reply = _reply(arrays, metrics, acc, copy=True)  # the arrays are the model's, which the next call trains
    _IDLE[local.pool_key] = model
    return reply


def _budget(
    context: Context, config: ConfigRecord, cfg: RunConfig, client: ClientData, pid: int, plan: DPPlan
) -> tuple[float | None, dict[str, Any], ClientAccountant]:
    """Sigma for this call and the privacy metrics; declines when the call would pass the budget."""
    pc = cfg.privacy
    acc = load_accountant(context, config, pid, pc.dp_accountant, cfg)  # cfg: releases before training
    sigma, projected, allowed = round_budget(cfg, acc, plan, planned_segments(cfg, client))
    report: dict[str, Any] = {wire.DP_SIGMA: sigma, wire.DP_SAMPLE_RATE: plan.sample_rate, wire.DP_STEPS: acc.steps}
    if not allowed:
        log.warning("client %d declines: the round would spend (ε = %.3f, δ = %g)", pid, projected, pc.dp_delta)
        report.update({wire.DP_DECLINED: 1, wire.DP_EPSILON: acc.epsilon(pc.dp_delta)})
        return None, report, acc
    report.update({wire.DP_DECLINED: 0, wire.DP_EPSILON: projected})
    return sigma, report, acc


def _reply(
    arrays: dict[str, torch.Tensor], metrics: dict[str, Any], acc: ClientAccountant | None = None, *, copy: bool = False
) -> RecordDict:
    # Arrays that keep their numpy value: the same bytes and object id as Flower's, read back without parsing.
    content = RecordDict({wire.ARRAYS: held_record(arrays, copy=copy), wire.METRICS: MetricRecord(metrics)})
    if acc is not None:  # the whole history, so the server's ledger can rebuild and audit every epsilon
        content[wire.DP_HISTORY] = ConfigRecord(acc.state_dict())
    return content


def handle_evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this client's local evaluation share (the torch runtime)."""
    local = _local_model(msg.content, context)
    client = local.client
    # A client without an evaluation share reports on its training data with weight 0.
    data = client.eval if client.eval is not None else client.train
    result = evaluate(local.model, data)
    n = result.num_examples if client.eval is not None else 0
    metrics = MetricRecord({wire.EVAL_LOSS: result.loss, wire.EVAL_ACCURACY: result.accuracy, wire.NUM_EXAMPLES: n})
    if local.cfg.user_dp:
        metrics[wire.USER_DP_WEIGHT] = 1.0
    return Message(RecordDict({wire.METRICS: metrics}), reply_to=msg)
