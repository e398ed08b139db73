"""What a ClientApp does with a train or evaluate message: pure functions over Flower types.

``clients/client_app.py`` only registers these handlers; keeping them here makes them
testable without a Flower runtime.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedtrain.federation import keys
from fedtrain.federation.context import config_from_run_config, federated_data, partition_id
from fedtrain.logging import get_logger
from fedtrain.models import build_model
from fedtrain.privacy.client_privacy import load_accountant, round_budget, save_accountant
from fedtrain.privacy.dp_sgd import dp_train_local, plan_steps
from fedtrain.train import evaluate, train_local

__all__ = ["handle_evaluate", "handle_train"]

log = get_logger()


def _local_model(msg: Message, context: Context):
    cfg = config_from_run_config(context.run_config)
    torch.set_num_threads(cfg.runtime.torch_threads)
    data = federated_data(cfg)
    pid = partition_id(context.node_config, cfg)
    model = build_model(cfg.model, data.input_shape, len(data.classes))
    model.load_state_dict(msg.content[keys.ARRAYS].to_torch_state_dict())
    return cfg, data.clients[pid], pid, model


def handle_train(msg: Message, context: Context) -> Message:
    """Train the received global model on this client's partition and reply with the new weights."""
    cfg, client, pid, model = _local_model(msg, context)
    config = msg.content[keys.CONFIG]
    global_round = int(config.get(keys.GLOBAL_ROUND, config.get(keys.SERVER_ROUND, 1)))
    seed = cfg.runtime.seed * 1_000_003 + global_round * 1_009 + pid
    lr, mu = float(config[keys.LR]), float(config.get(keys.PROXIMAL_MU, 0.0))
    metrics: dict = {keys.PARTITION_ID: pid}
    if cfg.user_dp:
        metrics[keys.USER_DP_WEIGHT] = 1.0
    if cfg.sample_dp:
        model, result, dp = _private_round(msg, context, cfg, client.train, pid, model, lr=lr, seed=seed, mu=mu)
        metrics.update(dp)
        if dp[keys.DP_DECLINED]:
            metrics.update({keys.TRAIN_LOSS: 0.0, keys.NUM_EXAMPLES: 0})
            return _reply(msg, model, metrics)
    else:
        result = train_local(model, client.train, cfg.train, lr=lr, seed=seed, proximal_mu=mu)
    metrics.update({keys.TRAIN_LOSS: result.loss, keys.NUM_EXAMPLES: result.num_examples})
    return _reply(msg, model, metrics)


def _reply(msg: Message, model: torch.nn.Module, metrics: dict) -> Message:
    content = RecordDict({keys.ARRAYS: ArrayRecord(model.state_dict()), keys.METRICS: MetricRecord(metrics)})
    return Message(content, reply_to=msg)


def _private_round(msg, context, cfg, data, pid, model, *, lr: float, seed: int, mu: float):
    """DP-SGD for one round under the whole-run budget; declines (model unchanged) past the budget."""
    pc = cfg.privacy
    acc = load_accountant(context, msg.content[keys.CONFIG], pid, pc.dp_accountant)
    plan = plan_steps(len(data.y), cfg.train.batch_size, cfg.train.local_epochs)
    sigma, projected, allowed = round_budget(cfg, acc, plan)
    report = {keys.DP_SIGMA: sigma, keys.DP_SAMPLE_RATE: plan.sample_rate}
    if not allowed:
        log.warning("client %d declines: the round would spend (ε = %.3f, δ = %g)", pid, projected, pc.dp_delta)
        report.update({keys.DP_DECLINED: 1, keys.DP_EPSILON: acc.epsilon(pc.dp_delta), keys.DP_STEPS: acc.steps})
        return model, None, report
    model, result, _ = dp_train_local(model, data, cfg, lr=lr, seed=seed, noise_multiplier=sigma, proximal_mu=mu)
    acc.record(sigma, plan.sample_rate, plan.steps_per_call)
    save_accountant(context, acc)
    report.update({keys.DP_DECLINED: 0, keys.DP_EPSILON: projected, keys.DP_STEPS: acc.steps})
    return model, result, report


def handle_evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this client's local evaluation share."""
    _cfg, client, _pid, model = _local_model(msg, context)
    # A client without an evaluation share reports on its training data with weight 0.
    data = client.eval if client.eval is not None else client.train
    result = evaluate(model, data)
    n = result.num_examples if client.eval is not None else 0
    metrics = MetricRecord({keys.EVAL_LOSS: result.loss, keys.EVAL_ACCURACY: result.accuracy, keys.NUM_EXAMPLES: n})
    if _cfg.user_dp:
        metrics[keys.USER_DP_WEIGHT] = 1.0
    return Message(RecordDict({keys.METRICS: metrics}), reply_to=msg)
