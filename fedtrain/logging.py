"""fedtrain's logger, printing in Flower's format through Flower's console handler."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["get_logger", "quiet_flower"]

_NAME = "fedtrain"


def get_logger() -> logging.Logger:
    """The one fedtrain logger (``INFO :      message``, like Flower's)."""
    logger = logging.getLogger(_NAME)
    if not logger.handlers:
        from flwr.common.logger import console_handler

        logger.addHandler(console_handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


@contextlib.contextmanager
def quiet_flower(enabled: bool) -> Iterator[None]:
    """Raise Flower's and fedtrain's log level to WARNING while a progress bar is shown.

    Flower logs several lines per round; with a live progress bar they would scroll it away.
    Warnings and errors still show.
    """
    if not enabled:
        yield
        return
    loggers = [logging.getLogger("flwr"), get_logger()]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
