"""The ``export`` stage: write the run's model as validated ONNX files for devices (see docs/export.md)."""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedtrain.config import RunConfig
from fedtrain.federation.run_context import RunContext
from fedtrain.federation.stages.base import STAGES, OneShotStage, Stage
from fedtrain.logging import get_logger

__all__ = ["ExportStage"]

log = get_logger()


class ExportStage(OneShotStage):
    """Exports the model selected by ``export-checkpoint`` into ``<run>/export/``; the arrays pass on unchanged.

    A compressed format that loses more accuracy than allowed is not written, and the run gets a warning that
    gives the measured drop. The export section of the report comes from ``export/export.json``.
    """

    name = "export"

    def summary(self) -> str:
        return f"export ({self.cfg.export.export_formats}{', .ort' if self.cfg.export.export_ort else ''})"

    def apply(self, ctx: RunContext) -> ArrayRecord:
        # Here, not at the top: clients read the plan (for their DP spend) and must not pay for ONNX on each message
        from fedtrain.export import EXPORT_DIR, export_model, subject_for_run

        which = self.cfg.export.export_checkpoint
        arrays, rounds = ctx.arrays, ctx.state.global_round
        if which == "best" and ctx.folder.best_checkpoint.is_file():
            arrays, rounds = ArrayRecord(ctx.folder.load_checkpoint("best")["arrays"]), ctx.state.best.round
        subject = subject_for_run(
            self.cfg, ctx.model_with(arrays), ctx.normalizer, ctx.classes, ctx.input_shape,
            test=ctx.evaluator.test, val=ctx.evaluator.val, run_id=ctx.folder.path.name, rounds=rounds,
            checkpoint=which, privacy=ctx.privacy.summary(),
        )  # fmt: skip
        report = export_model(subject, self.cfg.export, ctx.folder.path / EXPORT_DIR)
        for problem in report.refused:
            ctx.warn(f"export {problem}")
        written = [r["file"] for r in report.rows if r["written"]]
        log.info("Exported %s to %s", ", ".join(written), ctx.folder.path / EXPORT_DIR)
        return ctx.arrays


@STAGES.register("export")
def _export_stage(cfg: RunConfig) -> list[Stage]:
    return [ExportStage(cfg)]
