"""Where int8-static's activation ranges come from, and why the default spends no privacy.

Calibrating on clients' private records would read them outside the DP accountant. The default, ``server``,
uses the server's own validation split: in a simulation the central split no client trains on, in a deployment
the server's own file (``server-data-path``). ``input-range`` draws samples uniformly from the declared raw input
range and reads no data at all. Ranges computed by the federation under DP are not offered yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedtrain.errors import ExportError

if TYPE_CHECKING:
    from fedtrain.export.exporter import ExportSubject

__all__ = ["CALIBRATION_SOURCES", "Calibration"]

CALIBRATION_SOURCES = {
    "server": "the server's own validation split (no client data)",
    "input-range": "uniform samples over the declared raw input range (no data)",
}


class Calibration:
    """The calibration samples (raw inputs) for ``subject``, drawn on first use."""

    def __init__(self, subject: ExportSubject, raw_val: np.ndarray | None, how: str, max_samples: int) -> None:
        self.subject, self.raw_val, self.how, self.max_samples = subject, raw_val, how, max_samples
        self._samples: np.ndarray | None = None

    @property
    def source(self) -> str:
        return f"{self.how}: {CALIBRATION_SOURCES[self.how]}"

    def samples(self) -> np.ndarray:
        if self._samples is None:
            self._samples = self._draw()
        return self._samples

    def _draw(self) -> np.ndarray:
        rng = np.random.default_rng(self.subject.seed)
        if self.how == "input-range":
            bounds = self.subject.input_range
            if bounds is None:
                raise ExportError(
                    "export-calibration=input-range needs a bounded raw input range, and this data declares none; "
                    "set input-max (e.g. 255 for pixels), or use export-calibration=server"
                )
            shape = (self.max_samples, *self.subject.input_shape)
            return rng.uniform(bounds[0], bounds[1], size=shape).astype(np.float32)
        if self.raw_val is None:
            raise ExportError(
                "export-calibration=server needs the server's validation split, and this run has none (val-fraction=0, "
                "or no server-data-path in a deployment); the test split is not used, since it then measures the "
                "model. Set val-fraction > 0, or use export-calibration=input-range"
            )
        take = rng.permutation(len(self.raw_val))[: self.max_samples]
        return self.raw_val[np.sort(take)]
