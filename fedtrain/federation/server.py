"""The ServerApp's main: build the run's context, run the plan of stages, write the run folder.

After every round the metrics line, the latest checkpoint (and the best one: by central
validation accuracy, or the latest without a validation split) are written, while the next round
trains, so a crash loses at most the round in flight and the one whose files were being written,
and ``--resume`` continues from there. Summary, plots and report are
written however the run ends (completed, stopped early, or failed).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedtrain.aggregation import build_strategy
from fedtrain.config import RunConfig, dp_default_changes, format_dp_default_changes
from fedtrain.data import server_data, spec_to_config
from fedtrain.errors import CheckpointError, FedtrainError
from fedtrain.federation.context import config_from_run_config
from fedtrain.federation.dp_plan import planned_segments
from fedtrain.federation.exchange import build_exchange
from fedtrain.federation.exchange.faults import one_line
from fedtrain.federation.outputs import summary, write_outputs, write_privacy
from fedtrain.federation.progress import RoundProgress
from fedtrain.federation.run_context import RunContext
from fedtrain.federation.stages import Stage, build_plan
from fedtrain.federation.tracking import (
    CentralEvaluator,
    Checkpointer,
    RoundBookkeeper,
    RunWarnings,
    open_run,
    seed_generators,
)
from fedtrain.logging import get_logger, quiet_flower
from fedtrain.models import build_model
from fedtrain.pretrain import AUX_PREFIX
from fedtrain.privacy.ledger import PrivacyLedger
from fedtrain.privacy.preflight import check_privacy_plan, warn_weak_user_dp
from fedtrain.privacy.user_level import wrap_user_dp
from fedtrain.results import RunFolder

__all__ = ["RUN_DIR_STATE_KEY", "run_server"]

RUN_DIR_STATE_KEY = "fedtrain"
log = get_logger()


def run_server(grid: Grid, context: Context) -> Path:
    """Run the whole plan on ``grid``; return the run folder (also left in ``context.state``)."""
    t_start = time.perf_counter()
    cfg = config_from_run_config(context.run_config)
    changes = dp_default_changes(cfg)
    if changes and not cfg.output.resume_dir:
        log.info("%s", format_dp_default_changes(changes))
    torch.set_num_threads(cfg.runtime.torch_threads)
    seed_generators(cfg)  # Flower samples clients with `random`, its DP wrappers draw noise from numpy
    data = server_data(cfg)  # bad data, a bad federation size or DP plan fail before any folder exists
    _check_nodes(grid, cfg)
    if data.federated is not None:  # node mode: client sizes are unknown here; each client's budget guard refuses
        check_privacy_plan(cfg, data.federated, lambda client: planned_segments(cfg, client))
    classes, input_shape = data.classes, data.input_shape

    def new_model() -> nn.Module:
        return build_model(cfg.model, input_shape, len(classes))

    initial = build_model(cfg.model, input_shape, len(classes), seed=cfg.runtime.seed)
    start = open_run(cfg)
    folder, state = start.folder, start.state
    if start.arrays is not None:  # before config.toml is overwritten: a mismatch must leave the folder as it was
        check_architecture(start.arrays, initial, folder.path)
    start.begin()
    context.state[RUN_DIR_STATE_KEY] = ConfigRecord({"run-dir": str(folder.path.resolve())})
    folder.write_config(cfg)
    warnings = RunWarnings(state)
    privacy = PrivacyLedger(cfg, state.privacy)
    evaluator = CentralEvaluator(new_model, data.test, data.val if cfg.data.val_fraction > 0 else None)
    checkpointer = Checkpointer(
        cfg, folder, state, privacy, data.normalizer, classes, input_shape, session_start=t_start
    )
    bookkeeper = RoundBookkeeper(cfg, folder, state, evaluator, checkpointer, privacy, warnings)
    weak = warn_weak_user_dp(cfg, sum(p.numel() for p in initial.parameters()))
    if weak:
        warnings.warn(weak)

    def make_strategy() -> Strategy:
        strategy = build_strategy(cfg)
        if privacy.user_accountant is None:
            return strategy
        return wrap_user_dp(strategy, cfg, privacy.user_accountant, privacy.state)

    ctx = RunContext(
        cfg=cfg, grid=grid, folder=folder, arrays=start.arrays or ArrayRecord(initial.state_dict()),
        normalizer=data.normalizer, classes=classes, input_shape=input_shape, privacy=privacy, state=state,
        build_model=new_model, make_strategy=make_strategy, exchange=build_exchange(cfg, cfg.exchange),
        evaluator=evaluator, checkpointer=checkpointer, bookkeeper=bookkeeper, warnings=warnings,
        data_config=spec_to_config(data.spec),
    )  # fmt: skip
    if cfg.sample_dp:
        # Sent every round: a client may lose its Context.state at any time (resume, a restarted SuperNode). One
        # config goes to all, so each client also sees the others' (public) DP parameters.
        ctx.extra_train_config = privacy.restore_config
    plan = build_plan(cfg)
    log.info("fedtrain run %s: %s", folder.path, "; ".join(s.summary() for s in plan))

    def finish(status: str, reason: str) -> None:
        checkpointer.persist_privacy()  # also the wall time: a resume goes on from this session's total
        payload = summary(cfg, state, bookkeeper.last or _last_record(folder), status, reason, privacy,
                          has_val=evaluator.has_val)  # fmt: skip
        write_privacy(folder, cfg, privacy)
        label_counts = data.federated.label_counts() if data.federated is not None else None
        write_outputs(folder, cfg, payload, label_counts, classes)
        if status != "failed":
            log.info("Run %s %s: final test accuracy %.4f", folder.path.name, status, payload["final"]["accuracy"])

    try:
        total = sum(s.num_rounds for s in plan)
        with (
            quiet_flower(cfg.output.progress),
            RoundProgress(total, state.global_round, enabled=cfg.output.progress) as bar,
        ):
            bookkeeper.progress = bar
            status, reason = run_plan(plan, ctx)
    except KeyboardInterrupt:  # Ctrl-C: every finished round is kept, and --resume goes on from the last
        try:
            finish("stopped", "interrupted")
        finally:
            checkpointer.close()
        raise
    except BaseException as err:
        try:
            finish("failed", failure_reason(err))
        finally:
            checkpointer.close()
        raise
    try:
        finish(status, reason)
    finally:
        checkpointer.close()  # the round files' writer thread
    return folder.path


def failure_reason(err: BaseException) -> str:
    """The one line of a failure that matters, for summary.json (no traceback, no ANSI colours)."""
    text = str(err) if isinstance(err, FedtrainError) else f"{type(err).__name__}: {err}"
    return one_line(text) or type(err).__name__


def run_plan(plan: list[Stage], ctx: RunContext) -> tuple[str, str]:
    """Run the plan from the saved position; return the run's status and reason.

    A stage that ends the run (failure, spent budget) gives the run its status. One that stopped early
    (early stopping) lets the plan go on, and the run reports ``stopped`` with its reason.
    """
    start = ctx.state.stage_index
    ctx.round_offset = sum(s.num_rounds for s in plan[:start])
    early: tuple[str, str] | None = None
    for index in range(start, len(plan)):
        stage = plan[index]
        ctx.stage_index = index
        result = stage.run(ctx)
        if result.ends_run:
            return result.status, result.reason
        if result.status != "completed" and early is None:
            early = (result.status, result.reason)
        ctx.round_offset += stage.num_rounds
    if early is None:  # a resumed run may have stopped early in an earlier session
        early = next(((r.status, r.reason) for r in ctx.state.stages if r.status != "completed"), None)
    return early or ("completed", "")


def check_architecture(arrays: ArrayRecord, model: nn.Module, folder: Path) -> None:
    """Refuse to resume a checkpoint whose arrays do not fit this config's model (changed sizes or layers)."""
    saved = {k: tuple(v.shape) for k, v in arrays.to_torch_state_dict().items() if not k.startswith(AUX_PREFIX)}
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if saved != wanted:
        differ = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        raise CheckpointError(
            f"the checkpoint in {str(folder)!r} holds another model than this config builds ({', '.join(differ[:4])}"
            f"{', ...' if len(differ) > 4 else ''} differ); resume without changing model, hidden-sizes, "
            "activation or cnn-channels"
        )


def _last_record(folder: RunFolder) -> dict[str, Any]:
    records = folder.read_metrics()
    return records[-1] if records else {}


def _check_nodes(grid: Grid, cfg: RunConfig) -> None:
    """Fail fast when the federation's size differs from the config's."""
    nodes = len(list(grid.get_node_ids()))
    # Fewer nodes may still be connecting (deployment); more can never match the partitions.
    if nodes > cfg.partition.num_clients:
        raise FedtrainError(
            f"the federation has {nodes} SuperNodes but num-clients={cfg.partition.num_clients}; pass "
            f'--federation-config "num-supernodes={cfg.partition.num_clients}" to flwr run or set num-clients={nodes}'
        )
