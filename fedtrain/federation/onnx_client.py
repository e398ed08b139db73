"""The ONNX ClientApp's handlers: what :mod:`fedtrain.federation.client` does, without torch.

A node runs them when its ``client-runtime`` is ``onnx`` (node config, else the run's key). The request and
the reply have the torch client's layout (arrays under the same names, the same metrics, the DP history),
so SecAgg+ (Flower's legacy layout, :mod:`fedtrain.federation.secagg_client`) and user-level DP work
unchanged, and one ServerApp serves torch and ONNX nodes alike. The gradient graphs come from the folder in
node config ``gradient-graphs`` (published by the server with
:func:`fedtrain.export.gradient_graph.publish_run_graphs`, each checked against its sha256 and the model
received). Imports: flwr, numpy, onnxruntime and fedtrain's torch-free modules only (no scipy, no dp-accounting).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedtrain import wire
from fedtrain.config import RunConfig, TrainConfig
from fedtrain.data import ArrayDataset, ClientData, data_source, received_spec
from fedtrain.edge.errors import EdgeModelError
from fedtrain.edge.train.accountant import EdgeAccountant, calibrate_noise
from fedtrain.edge.train.graph import MANIFEST, GradientGraph, graph_name, load_graph
from fedtrain.edge.train.optim import OPTIMIZERS
from fedtrain.edge.train.sampling import build_draws
from fedtrain.edge.train.trainer import DPSettings, LocalData, balanced_class_weight, plan, train
from fedtrain.federation.call_seed import call_seed
from fedtrain.federation.config_values import config_number
from fedtrain.federation.context import config_from_run_config
from fedtrain.federation.secagg_client import as_fitres, from_fitins, is_secagg
from fedtrain.logging import get_logger
from fedtrain.privacy.unaccounted import train_loss_shared
from fedtrain.registry import RegistryNames

__all__ = [
    "GRAPHS_KEY",
    "RUNTIME_KEY",
    "STATE_KEY",
    "check_supported",
    "device_config",
    "handle_evaluate",
    "handle_train",
    "planned_segments",
    "runtime_of",
]

log = get_logger()

RUNTIME_KEY = "client-runtime"  # node config: this node's runtime, over the run's
GRAPHS_KEY = "gradient-graphs"  # node config: the folder of the published gradient graphs
STATE_KEY = "fedtrain-dp"  # fedtrain.privacy.client_privacy.STATE_KEY (which imports torch): the same entry
AUX_PREFIX = "pretrain_aux."  # fedtrain.pretrain.AUX_PREFIX (which imports torch)
RUNTIMES = ("torch", "onnx")


def runtime_of(cfg: RunConfig, node_config: Mapping[str, Any]) -> str:
    """This node's client runtime: node config ``client-runtime``, else the run's ``client-runtime``."""
    value = str(node_config.get(RUNTIME_KEY, cfg.runtime.client_runtime)).strip()
    if value not in RUNTIMES:
        raise EdgeModelError(f"node config {RUNTIME_KEY}={value!r}: expected one of {', '.join(RUNTIMES)}")
    return value


def check_supported(cfg: RunConfig) -> None:
    """Refuse, naming the key, every setting the ONNX client would not honour exactly."""
    m, t, p = cfg.model, cfg.train, cfg.pretrain
    checks = {
        "model": (m.model == "mlp", f"model={m.model!r} (gradient graphs cover model='mlp')"),
        "dropout": (m.dropout == 0, f"dropout={m.dropout} (no random masks in a gradient graph)"),
        "activation": (m.activation != "prelu", "activation='prelu' (a learnable slope outside the linear layers)"),
        "loss": (t.loss == "cross-entropy", f"loss={t.loss!r} (the graphs compute cross-entropy)"),
        "optimizer": (t.optimizer in OPTIMIZERS, f"optimizer={t.optimizer!r} (not in the device's numpy optimizers)"),
        "pretrain-optimizer": (
            "pretrain" not in cfg.phases or p.pretrain_optimizer in OPTIMIZERS,
            f"pretrain-optimizer={p.pretrain_optimizer!r} (not in the device's numpy optimizers)",
        ),
        "sampler": (t.sampler == "uniform", f"sampler={t.sampler!r} (the ONNX client samples uniformly)"),
        "pretrain-method": (
            "pretrain" not in cfg.phases or p.pretrain_method in ("autoencoder", "denoising"),
            f"pretrain-method={p.pretrain_method!r} (an RBM's update is not the gradient of a loss)",
        ),
        "dp-accountant": (
            not cfg.sample_dp or cfg.privacy.dp_accountant == "rdp",
            f"dp-accountant={cfg.privacy.dp_accountant!r} (the device accounts with RDP only)",
        ),
        "augment": (t.augment == "none", f"augment={t.augment!r} (the graphs take the batch as it is)"),
        "normalize": (
            cfg.data.normalize != "dp-standard",
            "normalize='dp-standard' (the device's accountant does not record the release)",
        ),
    }
    refused = [why for ok, why in checks.values() if not ok]
    if refused:
        raise EdgeModelError(
            f"client-runtime='onnx' cannot train this run: {'; '.join(refused)}; change the setting or run this node "
            "with client-runtime='torch'"
        )


class _Trusted(tuple[str, ...]):
    """Choices the server validated: the registries that list them import torch."""

    def __contains__(self, name: object) -> bool:
        return True


@contextlib.contextmanager
def _server_validated_choices() -> Iterator[None]:
    """Load the run config without importing the registries of algorithm names (models, optimizers, ...).

    They import torch: absent on a device, and where it is installed, its import cost about 1.25 s of every
    message's fresh process. The server validated every name when it loaded the same run config; what the ONNX
    client can train is refused by :func:`check_supported`.
    """
    original = RegistryNames._names

    def names(self: RegistryNames) -> tuple[str, ...]:
        return _Trusted(("(validated by the server)",))

    RegistryNames._names = names  # type: ignore[method-assign]
    try:
        yield
    finally:
        RegistryNames._names = original  # type: ignore[method-assign]


def device_config(run_config: Mapping[str, Any]) -> RunConfig:
    """The run's config on a device (:func:`fedtrain.federation.context.config_from_run_config`, without torch)."""
    with _server_validated_choices():
        return config_from_run_config(run_config)


# A bad entry of the server's config is a model error on a device (fedtrain.edge.errors), not a config error.
_number = functools.partial(config_number, error=EdgeModelError)


def _settings(cfg: RunConfig, phase: str) -> TrainConfig:
    """The local settings of ``phase``: pretraining's own optimizer, rate, batch and epochs (pretrain_train_config)."""
    if phase != "pretrain":
        return cfg.train
    p = cfg.pretrain
    return replace(
        cfg.train, optimizer=p.pretrain_optimizer, learning_rate=p.pretrain_learning_rate,
        batch_size=p.pretrain_batch_size, local_epochs=p.pretrain_epochs, sampler="uniform",
    )  # fmt: skip


def _records(client: ClientData, phase: str) -> ArrayDataset:
    if phase == "finetune":
        return client.labeled
    if phase == "pretrain":
        return client.train
    raise EdgeModelError(
        f"the server asks for phase {phase!r}; the ONNX client trains 'pretrain' and 'finetune' only (run this node "
        "with client-runtime='torch')"
    )


def planned_segments(cfg: RunConfig, client: ClientData) -> list[tuple[float, int]]:
    """``(q, steps)`` of the whole plan: :func:`fedtrain.federation.dp_plan.planned_segments`, without torch."""
    segments: list[tuple[float, int]] = []
    previous = ""
    for name in cfg.phases:
        if name not in ("pretrain", "finetune"):
            continue  # one-shot stages (export) train nothing
        s = _settings(cfg, name)
        q, steps = plan(len(_records(client, name).y), s.batch_size, s.local_epochs)
        rounds = cfg.pretrain.pretrain_rounds if name == "pretrain" else cfg.strategy.num_rounds
        stages = cfg.num_hidden_layers if name == "pretrain" else 1
        for _ in range(stages):
            if name == previous:
                segments[-1] = (segments[-1][0], segments[-1][1] + rounds * steps)
            else:
                segments.append((q, rounds * steps))
            previous = name
    return segments


def _graph(folder: str, name: str, threads: int) -> GradientGraph:
    """The graph ``name`` of ``folder``, loaded once per published version (a warm worker outlives runs)."""
    try:
        stamp = (Path(folder) / MANIFEST).stat().st_mtime_ns
    except OSError:
        stamp = 0  # load_graph says what is missing
    return _loaded_graph(folder, name, threads, stamp)


@functools.lru_cache(maxsize=16)
def _loaded_graph(folder: str, name: str, threads: int, stamp: int) -> GradientGraph:
    return load_graph(Path(folder), name, threads=threads)


def _graphs_folder(context: Context) -> str:
    folder = str(context.node_config.get(GRAPHS_KEY, "")).strip()
    if not folder:
        raise EdgeModelError(
            f"client-runtime='onnx' needs node config {GRAPHS_KEY}=<folder>: the gradient graphs the server published "
            "for this run (fedtrain.export.gradient_graph.publish_run_graphs)"
        )
    return folder


@dataclass
class _Local:
    cfg: RunConfig
    client: ClientData
    pid: int
    arrays: dict[str, np.ndarray]
    input_shape: tuple[int, ...]
    num_classes: int


def _local(content: RecordDict, context: Context) -> _Local:
    cfg = device_config(context.run_config)
    check_supported(cfg)
    source = data_source(cfg, context.node_config)
    spec = received_spec(cfg, content.config_records.get(wire.CONFIG))
    record = content.array_records[wire.ARRAYS]
    arrays = {k: np.array(record[k].numpy(), dtype=np.float32) for k in record}
    return _Local(cfg, source.client_data(spec), source.partition_id, arrays, spec.input_shape, len(spec.classes))


def handle_train(msg: Message, context: Context) -> Message:
    """The torch handler's twin: this round's local work for the message's phase, the new weights in reply."""
    if is_secagg(msg):
        return Message(as_fitres(msg.content, train_content(from_fitins(msg.content), context)), reply_to=msg)
    return Message(train_content(msg.content, context), reply_to=msg)


def _load_accountant(context: Context, config: Mapping[str, Any], pid: int, mechanism: str) -> EdgeAccountant:
    """From ``Context.state``, else the server's restore entry, else new (client_privacy.load_accountant)."""
    if STATE_KEY in context.state.config_records:
        return EdgeAccountant.from_state_dict(dict(context.state.config_records[STATE_KEY]))
    acc = EdgeAccountant(mechanism)
    restore = list(config.get(wire.RESTORE_HISTORY, []))
    if pid < len(restore) and restore[pid]:
        for sigma, q, steps in json.loads(str(restore[pid])):
            acc.record(float(sigma), float(q), int(steps))
    return acc


def _over_budget(cfg: RunConfig, projected: float) -> bool:
    target = cfg.privacy.dp_target_epsilon
    return not np.isinf(target) and projected > target * (1 + 1e-9)  # client_privacy.over_budget


def train_content(content: RecordDict, context: Context) -> RecordDict:
    """The local work of one train request: fedtrain's layout in and out."""
    local = _local(content, context)
    cfg, pid, arrays = local.cfg, local.pid, local.arrays
    config = content.config_records[wire.CONFIG]
    phase = str(config.get(wire.PHASE, "finetune"))
    data = _records(local.client, phase)
    settings = _settings(cfg, phase)
    global_round = int(_number(config, wire.GLOBAL_ROUND, _number(config, wire.SERVER_ROUND, 1)))
    seed = call_seed(cfg.runtime.seed, global_round, pid)
    metrics: dict[str, Any] = {wire.PARTITION_ID: pid}
    if cfg.user_dp:
        metrics[wire.USER_DP_WEIGHT] = 1.0
    q, steps = plan(len(data.y), settings.batch_size, settings.local_epochs)
    acc: EdgeAccountant | None = None
    sigma: float | None = None
    if cfg.sample_dp:
        pc = cfg.privacy
        acc = _load_accountant(context, config, pid, pc.dp_accountant)
        if pc.dp_noise_multiplier > 0:
            sigma = pc.dp_noise_multiplier
        elif acc.history:
            sigma = acc.history[-1][0]
        else:
            sigma = calibrate_noise(
                target_epsilon=pc.dp_target_epsilon, delta=pc.dp_delta, segments=planned_segments(cfg, local.client)
            )
        projected = acc.epsilon(pc.dp_delta, extra=(sigma, q, steps))
        metrics.update({wire.DP_SIGMA: sigma, wire.DP_SAMPLE_RATE: q, wire.DP_STEPS: acc.steps})
        if _over_budget(cfg, projected):
            log.warning("client %d declines: the round would spend (ε = %.3f, δ = %g)", pid, projected, pc.dp_delta)
            metrics.update({wire.DP_DECLINED: 1, wire.DP_EPSILON: acc.epsilon(pc.dp_delta), wire.NUM_EXAMPLES: 0})
            if train_loss_shared(cfg):
                metrics[wire.TRAIN_LOSS] = 0.0
            return _reply(arrays, metrics, acc)
        metrics.update({wire.DP_DECLINED: 0, wire.DP_EPSILON: projected})
    layer = int(_number(config, wire.LAYER, 0)) if phase == "pretrain" else -1
    objective = cfg.pretrain.pretrain_method if phase == "pretrain" else "finetune"
    name = graph_name(objective, layer, sigma is not None, clipped=True)  # DP: clipping inside the graph
    graph = _graph(_graphs_folder(context), name, cfg.runtime.torch_threads)
    if objective == "finetune" and graph.spec.label_smoothing != cfg.train.label_smoothing:
        raise EdgeModelError(
            f"{graph.where}: made for label-smoothing={graph.spec.label_smoothing}, the run has "
            f"{cfg.train.label_smoothing}; publish the graphs of this run again"
        )
    graph.check({k: v.shape for k, v in arrays.items()}, local.input_shape, local.num_classes)
    trainable = list(graph.spec.params)
    if phase == "finetune":
        depth = int(_number(config, wire.FREEZE_DEPTH, 0))
        frozen = tuple(f"hidden.{j}." for j in range(depth))
        trainable = [k for k in trainable if not k.startswith(frozen)]
    cw = None
    if phase == "finetune" and cfg.train.class_weights == "balanced":
        cw = balanced_class_weight(data.y, local.num_classes)
    batch = LocalData(data.x, data.y if phase == "finetune" else None, cw, corruption=cfg.pretrain.corruption)
    draws = build_draws(cfg.privacy.dp_noise_seed if sigma is not None else "run", seed)
    result = train(
        graph, arrays, batch, settings, lr=_number(config, wire.LR), draws=draws, trainable=trainable,
        dp=DPSettings(sigma, cfg.privacy.dp_max_grad_norm) if sigma is not None else None,
        proximal_mu=_number(config, wire.PROXIMAL_MU, 0.0),
    )  # fmt: skip
    if acc is not None and sigma is not None:
        acc.record(sigma, q, steps)
        context.state.config_records[STATE_KEY] = ConfigRecord(acc.state_dict())
        metrics[wire.DP_STEPS] = acc.steps
    metrics[wire.NUM_EXAMPLES] = result.num_examples
    if train_loss_shared(cfg):  # under DP an unnoised loss of private records stays on the client
        metrics[wire.TRAIN_LOSS] = result.loss
    return _reply(arrays, metrics, acc)


def _reply(arrays: dict[str, np.ndarray], metrics: dict[str, Any], acc: EdgeAccountant | None) -> RecordDict:
    record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    content = RecordDict({wire.ARRAYS: record, wire.METRICS: MetricRecord(metrics)})
    if acc is not None:  # the whole history, so the server's ledger can rebuild and audit every epsilon
        content[wire.DP_HISTORY] = ConfigRecord(acc.state_dict())
    return content


def handle_evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this client's local evaluation share (the forward graph)."""
    local = _local(msg.content, context)
    client = local.client
    data = client.eval if client.eval is not None else client.train
    graph = _graph(_graphs_folder(context), graph_name("forward", -1, False), local.cfg.runtime.torch_threads)
    model = {k: v for k, v in local.arrays.items() if not k.startswith(AUX_PREFIX)}
    graph.check({k: v.shape for k, v in model.items()}, local.input_shape, local.num_classes)
    loss, accuracy = _evaluate(graph, model, data)
    n = len(data.y) if client.eval is not None else 0
    metrics = MetricRecord({wire.EVAL_LOSS: loss, wire.EVAL_ACCURACY: accuracy, wire.NUM_EXAMPLES: n})
    if local.cfg.user_dp:
        metrics[wire.USER_DP_WEIGHT] = 1.0
    return Message(RecordDict({wire.METRICS: metrics}), reply_to=msg)


def _evaluate(graph: GradientGraph, params: Mapping[str, np.ndarray], data: ArrayDataset) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fedtrain.train.evaluate's), over batches padded to the graph's."""
    size = graph.spec.batch
    loss, correct = 0.0, 0
    for start in range(0, len(data.y), size):
        x, y = data.x[start : start + size], data.y[start : start + size]
        padded = np.zeros((size, *x.shape[1:]), dtype=np.float32)
        padded[: len(x)] = x
        (logits,) = graph.session.run(["logits"], {**params, "x": padded})
        z = logits[: len(x)].astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss += float(-logp[np.arange(len(y)), y].sum())
        correct += int((z.argmax(1) == y).sum())
    n = len(data.y)
    return loss / n, correct / n
