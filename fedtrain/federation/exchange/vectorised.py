"""The vectorised round exchange: a round's clients trained together, in one process, in one batched call.

:class:`VectorisedExchange` is the plain Message exchange with one change: on an in-process grid, a
round's fine-tuning messages are not handed to the ClientApp one by one but trained together by
:func:`fedtrain.train.batched.train_clients`. Each client still gets its own data, seed, budget check
and accountant (``Context.state``), and each gets the reply message its ClientApp would have sent
(same arrays up to float rounding, same metrics and DP history), so the strategy, the privacy ledger
and the run folder see no difference. What the batched trainer does not cover falls back to the
ClientApp, with one log line saying why (:func:`refusal`): an allow-list of settings, so a key added
later runs sequentially until someone teaches this module about it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, cast
from uuid import uuid4

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from torch import nn

from fedtrain import wire
from fedtrain.config import RunConfig
from fedtrain.data import data_source, received_spec
from fedtrain.federation.call_seed import call_seed
from fedtrain.federation.client_tasks import client_task, config_number
from fedtrain.federation.context import config_from_run_config
from fedtrain.federation.exchange.base import EXCHANGES, RoundRequest, TrainReplies
from fedtrain.federation.exchange.held_arrays import held_record
from fedtrain.federation.exchange.message import MessageExchange
from fedtrain.federation.records import record_of
from fedtrain.logging import get_logger
from fedtrain.models import MLP, build_model
from fedtrain.pretrain import AUX_PREFIX
from fedtrain.privacy.accountant import ClientAccountant
from fedtrain.privacy.client_privacy import save_accountant
from fedtrain.privacy.dp_sgd import DPPlan, noise_seed
from fedtrain.privacy.unaccounted import train_loss_shared
from fedtrain.train.batched import ClientJob, DPSettings, train_clients
from fedtrain.train.losses import class_weight_vector

__all__ = ["HANDLED", "VectorisedExchange", "refusal", "train_batch"]

log = get_logger()

# Keys whose every value the batched trainer reproduces (or that never reach a client's training). A key not
# listed here, at a value other than its default, sends the run down the sequential path.
HANDLED = frozenset(
    # data and partition: the records come from the same DataSource call as the ClientApp's
    "dataset data-path data-format label-column test-fraction val-fraction label-noise class-keep "
    "data-source server-data-path input-shape classes input-max normalize-local normalize-dp-share normalize-dp-clip "
    "num-clients partitioner dirichlet-alpha classes-per-client quantity-alpha min-partition-size "
    "labeled-fraction client-eval-fraction "
    "model hidden-sizes activation dropout residual init cnn-channels cnn-groups "
    "local-epochs batch-size optimizer learning-rate momentum weight-decay l1 lr-schedule lr-step-rounds lr-gamma "
    "warmup-rounds clip-grad-norm clip-grad-value label-smoothing loss gce-q class-weights "
    # pretraining rounds run on the ClientApp; freeze-rounds reaches fine-tuning as freeze-depth
    "plan pretrain-method pretrain-rounds pretrain-epochs pretrain-optimizer pretrain-learning-rate "
    "pretrain-batch-size corruption rbm-k rbm-visible freeze-rounds "
    "dp-level dp-defaults dp-defaults-applied dp-allow-unaccounted-statistics dp-noise-seed dp-target-epsilon "
    "dp-noise-multiplier dp-delta dp-max-grad-norm dp-accountant dp-grad-sample-mode dp-fix-model "
    "dp-user-clipping dp-user-noise-multiplier dp-user-clipping-norm dp-user-delta dp-user-max-epsilon "
    # the server's side: strategies, evaluation, stopping, outputs, export
    "round-exchange strategy num-rounds fraction-train fraction-evaluate min-clients proximal-mu "
    "server-learning-rate server-momentum server-eta server-tau trimmed-beta krum-malicious "
    "server-averaging server-ema-decay server-averaging-start "
    "early-stopping-patience early-stopping-min-delta runtime seed torch-threads round-timeout inprocess-workers "
    "out-dir run-name resume-dir progress report "
    "secagg-num-shares secagg-reconstruction-threshold secagg-clipping-range secagg-quantization-range "
    "secagg-modulus-range secagg-max-weight secagg-timeout secagg-halt-policy secagg-clipped-warning "
    "export-formats export-ort export-checkpoint export-calibration export-calibration-samples "
    "export-max-accuracy-drop export-force export-latency-calls".split()
)
_VALUES = {  # handled keys that are handled at some values only
    "sampler": ("uniform",),
    # dp-standard: the same DataSource call normalises, and the same budget function composes its release
    "normalize": ("standard", "minmax", "range", "none", "dp-standard"),
    "dp-level": ("none", "sample"),
    "model": ("mlp", "cnn", "linear"),
    "loss": ("cross-entropy", "gce"),
    "data-source": ("partition",),
    "runtime": ("inprocess",),
}


def refusal(cfg: RunConfig) -> str:
    """Why ``cfg`` cannot run on the batched trainer ('' when it can)."""
    flat, defaults = cfg.to_flat(), RunConfig().to_flat()
    unknown = sorted(k for k, v in flat.items() if v != defaults.get(k) and k not in HANDLED and k not in _VALUES)
    if unknown:
        return f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not covered by the vectorised trainer"
    for key, allowed in _VALUES.items():
        if flat.get(key, allowed[0]) not in allowed:
            return f"{key}={flat[key]!r} is not covered by the vectorised trainer (it covers {', '.join(allowed)})"
    if cfg.secagg.secure_aggregation:
        return "secure aggregation runs its own protocol"
    if cfg.model.dropout > 0:
        return "dropout draws per-client randomness the batched forward does not reproduce"
    if cfg.sample_dp and cfg.privacy.dp_max_physical_batch_size > 0:
        return "dp-max-physical-batch-size splits batches the way only Opacus does"
    if cfg.sample_dp and cfg.train.class_weights != "none":
        return "class-weights under DP-SGD: Opacus' per-sample scaling of a weighted mean is not reproduced"
    return ""


class LocalGrid(Protocol):
    """A grid whose nodes run in this process (fedtrain.runtime.InProcessGrid): their contexts are at hand."""

    contexts: dict[int, Context]
    vectorisable: bool  # runs fedtrain's own ClientApp (a test's wrapped ClientApp must run as itself)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]: ...


class VectorisedExchange(MessageExchange):
    """Fine-tuning rounds trained for all clients at once; everything else as :class:`MessageExchange`."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self._logged: set[str] = set()

    def train(self, request: RoundRequest) -> TrainReplies:
        why = refusal(self.cfg)
        grid = request.grid
        if not why and not getattr(grid, "vectorisable", False):
            why = "the grid is not fedtrain's in-process grid running fedtrain's own ClientApp"
        if not why:
            local = cast(LocalGrid, grid)
            return super().train(dataclasses.replace(request, grid=_BatchGrid(grid, local, self._once)))
        self._once(f"round-exchange=vectorised: {why}; this run trains its clients one by one")
        return super().train(request)

    def _once(self, line: str) -> None:
        if line not in self._logged:
            self._logged.add(line)
            log.info("%s", line)


class _BatchGrid(Grid):
    """The in-process grid, except that a batch of fine-tuning train messages is trained in one call."""

    def __init__(self, grid: Grid, local: LocalGrid, note: Callable[[str], None]) -> None:
        self._grid, self._local, self._note = grid, local, note

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        why = _batch_refusal(messages, self._local)
        if why:
            self._note(f"round-exchange=vectorised: {why}; those rounds train on the ClientApp")
            return self._grid.send_and_receive(messages, timeout=timeout)
        return train_batch(messages, self._local.contexts)


def _batch_refusal(messages: list[Message], grid: LocalGrid) -> str:
    for m in messages:
        if m.metadata.message_type != "train":
            return f"{m.metadata.message_type} messages"
        config = record_of(m.content, wire.CONFIG, ConfigRecord)
        phase = str(config.get(wire.PHASE, "finetune")) if config is not None else "?"
        if phase != "finetune":
            return f"phase {phase!r}"
        node_config = grid.contexts[m.metadata.dst_node_id].node_config
        if node_config.get("data-path"):
            return "a node with its own data file"
        own = sorted(set(node_config) - {"partition-id", "num-partitions"})
        if own:  # e.g. a node's own client-runtime
            return f"a node with its own {', '.join(own)}"
    return ""


def _config(msg: Message) -> ConfigRecord:
    config = record_of(msg.content, wire.CONFIG, ConfigRecord)
    if config is None:  # _batch_refusal let only messages with a train config through
        raise ValueError("a train message without its config record")
    return config


BudgetFn = Callable[..., tuple[float | None, dict[str, Any], ClientAccountant]]


@dataclass
class _Prepared:
    """One message up to its training call: the client's metrics so far, its accountant and its job."""

    msg: Message
    context: Context
    cfg: RunConfig
    num_classes: int
    input_shape: tuple[int, ...]
    metrics: dict[str, Any]
    acc: ClientAccountant | None
    sigma: float | None
    plan: DPPlan
    job: ClientJob | None  # None: the client declined the round


def train_batch(messages: list[Message], contexts: dict[int, Context]) -> list[Message]:
    """Every message's reply, as the ClientApp would have sent it; the clients' training done in one call."""
    # The ClientApp's own budget check (imported here: the client module imports the stages, which import the
    # exchanges).
    from fedtrain.federation.client import _budget

    for m in messages:  # as the grid does: ids on the way in
        m.metadata.__dict__["_message_id"] = uuid4().hex
    prepared = []
    for m in messages:
        context = contexts[m.metadata.dst_node_id]
        cfg = config_from_run_config(context.run_config)
        torch.set_num_threads(cfg.runtime.torch_threads)
        prepared.append(_prepare(m, context, cfg, _budget))
    groups: dict[tuple[Any, ...], list[_Prepared]] = {}
    for p in prepared:  # a strategy sends one record and one config to all; group in case one does not
        config = _config(p.msg)
        lr, mu = config_number(config, wire.LR), config_number(config, wire.PROXIMAL_MU, 0.0)
        key = (id(p.msg.content[wire.ARRAYS]), lr, mu, int(config_number(config, wire.FREEZE_DEPTH, 0)))
        groups.setdefault(key, []).append(p)
    replies: dict[int, Message] = {}
    for (_, lr, mu, depth), group in groups.items():
        for p, reply in zip(group, _train_group(group, lr, mu, depth), strict=True):
            replies[id(p.msg)] = reply
    out = [replies[id(m)] for m in messages]
    for r in out:
        r.metadata.__dict__["_message_id"] = uuid4().hex
    return out


def _train_group(group: list[_Prepared], lr: float, mu: float, depth: int) -> list[Message]:
    first = group[0]
    cfg = first.cfg
    arrays = cast(ArrayRecord, first.msg.content[wire.ARRAYS]).to_torch_state_dict()
    weights = {k: v for k, v in arrays.items() if not k.startswith(AUX_PREFIX)}
    aux = {k: v for k, v in arrays.items() if k.startswith(AUX_PREFIX)}
    module = _template(cfg.model, first.input_shape, first.num_classes)
    jobs = [p.job for p in group if p.job is not None]
    dp = DPSettings(cfg.privacy.dp_max_grad_norm) if cfg.sample_dp else None
    results = iter(
        train_clients(module, weights, jobs, cfg.train, lr=lr, proximal_mu=mu, frozen=_frozen(module, depth), dp=dp)
    )
    replies = []
    for p in group:
        if p.job is None:  # declined: the global model back, nothing trained (as the ClientApp replies)
            p.metrics[wire.NUM_EXAMPLES] = 0
            if train_loss_shared(cfg):
                p.metrics[wire.TRAIN_LOSS] = 0.0
            replies.append(Message(_content({**weights, **aux}, p.metrics, p.acc), reply_to=p.msg))
            continue
        result = next(results)
        if p.acc is not None and p.sigma is not None:
            p.acc.record(p.sigma, p.plan.sample_rate, p.plan.steps_per_call)
            save_accountant(p.context, p.acc)
            p.metrics[wire.DP_STEPS] = p.acc.steps
        p.metrics[wire.NUM_EXAMPLES] = result.num_examples
        if train_loss_shared(cfg):
            p.metrics[wire.TRAIN_LOSS] = result.loss
        replies.append(Message(_content(result.state, p.metrics, p.acc), reply_to=p.msg))
    return replies


def _content(state: dict[str, torch.Tensor], metrics: dict[str, Any], acc: ClientAccountant | None) -> RecordDict:
    """The ClientApp's reply layout, with arrays that keep their numpy value (read back twice by the server)."""
    content = RecordDict({wire.ARRAYS: held_record(state), wire.METRICS: MetricRecord(metrics)})
    if acc is not None:  # as fedtrain.federation.client._reply lays it out (the tests compare the records)
        content[wire.DP_HISTORY] = ConfigRecord(acc.state_dict())
    return content


def _prepare(msg: Message, context: Context, cfg: RunConfig, budget: BudgetFn) -> _Prepared:
    """The ClientApp's ``train`` up to the training call (fedtrain.federation.client.train, step for step)."""
    config = _config(msg)
    source = data_source(cfg, context.node_config)
    spec = received_spec(cfg, config)
    client = source.client_data(spec)
    pid = source.partition_id
    task = client_task(str(config.get(wire.PHASE, "finetune")))
    global_round = int(config_number(config, wire.GLOBAL_ROUND, config_number(config, wire.SERVER_ROUND, 1)))
    seed = call_seed(cfg.runtime.seed, global_round, pid)
    data = task.records(client)
    metrics: dict[str, Any] = {wire.PARTITION_ID: pid}
    plan = task.dp_plan(cfg, len(data.y))
    shape, classes = tuple(spec.input_shape), len(spec.classes)
    sigma: float | None = None
    acc: ClientAccountant | None = None
    if cfg.sample_dp:
        sigma, report, acc = budget(context, config, cfg, client, pid, plan)
        metrics.update(report)
        if report[wire.DP_DECLINED]:
            return _Prepared(msg, context, cfg, classes, shape, metrics, acc, None, plan, None)
    weight = class_weight_vector(cfg.train, data.y, classes)
    job = ClientJob(
        x=data.x, y=data.y, seed=seed, class_weight=weight if weight is not None else torch.ones(classes),
        noise_seed=noise_seed(cfg, seed) if sigma is not None else 0, noise_multiplier=sigma or 0.0,
    )  # fmt: skip
    return _Prepared(msg, context, cfg, classes, shape, metrics, acc, sigma, plan, job)


@functools.lru_cache(maxsize=4)
def _template(model: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return build_model(model, input_shape, num_classes)


def _frozen(module: nn.Module, depth: int) -> frozenset[str]:
    """Parameter names of the first ``depth`` hidden blocks (FinetuneTask's linear probe)."""
    if not isinstance(module, MLP) or depth <= 0:
        return frozenset()
    return frozenset(f"hidden.{i}.{n}" for i, block in enumerate(module.hidden[:depth])
                     for n, _ in block.named_parameters())  # fmt: skip


EXCHANGES.register("vectorised", VectorisedExchange)
