"""A progress bar over rounds (rich), showing the current test and validation accuracy."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["RoundProgress"]


class RoundProgress:
    """Context manager; a no-op when disabled."""

    def __init__(self, total: int, completed: int = 0, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]rounds"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("test acc {task.fields[acc]}  val acc {task.fields[val]}{task.fields[eps]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
            disable=not enabled,
        )
        self._task = self._progress.add_task("rounds", total=total, completed=completed, acc="-", val="-", eps="")

    def __enter__(self) -> RoundProgress:
        if self.enabled:
            self._progress.start()
        return self

    def advance(self, accuracy: float | None, val_accuracy: float | None, epsilon: float | None = None) -> None:
        """One round done; an accuracy is None where the server holds no such split."""
        eps = "" if epsilon is None else f"  ε max {epsilon:.2f}"
        val = "-" if val_accuracy is None else f"{val_accuracy:.4f}"
        acc = "-" if accuracy is None else f"{accuracy:.4f}"
        self._progress.update(self._task, advance=1, acc=acc, val=val, eps=eps)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled:
            self._progress.stop()
