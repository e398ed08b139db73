"""Central evaluation: the server scores each new global model on the data it holds itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from fedtrain.data import ArrayDataset
from fedtrain.pretrain import AUX_PREFIX
from fedtrain.train import EvalResult

__all__ = ["CentralEvaluator", "CentralScores", "score_split"]

_BATCH = 1024  # fedtrain.train.evaluate's batch size: the same batches, so the same sums


@torch.no_grad()
def score_split(model: nn.Module, data: ArrayDataset, batch_size: int = _BATCH) -> EvalResult:
    """What :func:`fedtrain.train.evaluate` returns, bit for bit (the same batches in the same order).

    The batches are sliced straight from the arrays: the DataLoader indexes and re-stacks every record,
    milliseconds per split and round.
    """
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct = 0.0, 0
    for start in range(0, len(data.y), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(data.x[start : start + batch_size]))
        y = torch.from_numpy(np.ascontiguousarray(data.y[start : start + batch_size]))
        logits = model(x)
        loss += criterion(logits, y).item()
        correct += int((logits.argmax(1) == y).sum())
    n = len(data.y)
    return EvalResult(loss=loss / n, accuracy=correct / n, num_examples=n)


@dataclass(frozen=True)
class CentralScores:
    """Scores of one global model; None where the server holds no such split."""

    test: EvalResult | None
    val: EvalResult | None


class CentralEvaluator:
    """Evaluates global arrays on the server's test and validation splits.

    ``val`` is None without a validation split: the test split is then never used to select a model.
    ``test`` is None when the server holds no data at all (deployment without a server-side test file).
    """

    def __init__(
        self, build_model: Callable[[], nn.Module], test: ArrayDataset | None, val: ArrayDataset | None
    ) -> None:
        self.model = build_model()
        self.test, self.val = test, val

    @property
    def has_val(self) -> bool:
        return self.val is not None

    def load(self, arrays: ArrayRecord) -> nn.Module:
        """The server's model holding ``arrays`` (without a pretraining decoder)."""
        weights = arrays.to_torch_state_dict()
        self.model.load_state_dict({k: v for k, v in weights.items() if not k.startswith(AUX_PREFIX)})
        return self.model

    def score(self, arrays: ArrayRecord) -> CentralScores:
        if self.test is None and self.val is None:
            return CentralScores(None, None)
        model = self.load(arrays)
        return CentralScores(
            test=score_split(model, self.test) if self.test is not None else None,
            val=score_split(model, self.val) if self.val is not None else None,
        )
