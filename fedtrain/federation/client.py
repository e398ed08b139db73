"""What a ClientApp does with a train or evaluate message: pure functions over Flower types.

``clients/client_app.py`` only registers these handlers; keeping them here makes them
testable without a Flower runtime.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedtrain.federation import keys
from fedtrain.federation.context import config_from_run_config, federated_data, partition_id
from fedtrain.models import build_model
from fedtrain.train import evaluate, train_local

__all__ = ["handle_evaluate", "handle_train"]


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
    result = train_local(
        model,
        client.train,
        cfg.train,
        lr=float(config[keys.LR]),
        seed=(cfg.runtime.seed * 1_000_003 + global_round * 1_009 + pid),
        proximal_mu=float(config.get(keys.PROXIMAL_MU, 0.0)),
    )
    metrics = MetricRecord({keys.TRAIN_LOSS: result.loss, keys.NUM_EXAMPLES: result.num_examples})
    content = RecordDict({keys.ARRAYS: ArrayRecord(model.state_dict()), keys.METRICS: metrics})
    return Message(content, reply_to=msg)


def handle_evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this client's local evaluation share."""
    _cfg, client, _pid, model = _local_model(msg, context)
    # A client without an evaluation share reports on its training data with weight 0.
    data = client.eval if client.eval is not None else client.train
    result = evaluate(model, data)
    n = result.num_examples if client.eval is not None else 0
    metrics = MetricRecord({keys.EVAL_LOSS: result.loss, keys.EVAL_ACCURACY: result.accuracy, keys.NUM_EXAMPLES: n})
    return Message(RecordDict({keys.METRICS: metrics}), reply_to=msg)
