"""Check an exported file: the full ONNX checker, its logits against torch, its accuracy, latency and size."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from fedtrain.errors import ExportError
from fedtrain.export.graph import INPUT_NAME

__all__ = ["Validation", "check_file", "low_power_session", "median_latency_us", "torch_latency_us", "validate"]


@dataclass
class Validation:
    """One file measured on the test split (``accuracy`` etc. None without test data)."""

    bytes: int
    accuracy: float | None
    agreement: float | None  # share of test samples whose argmax equals torch's
    max_abs_logit_diff: float | None
    latency_us: float | None  # median single-sample call, 1 thread


def check_file(path: Path) -> None:
    """``onnx.checker`` with strict shape inference, as an :class:`ExportError` naming the file."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:
        raise ExportError(f"{path.name} fails the ONNX checker: {str(err).splitlines()[0][:300]}") from None


def low_power_session(path: Path):  # -> onnxruntime.InferenceSession (untyped package)
    """One thread, no spinning: how a small device runs the model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_latency_us(call: Callable[[], object], calls: int, warmup: int = 100) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def torch_latency_us(model: nn.Module, sample: np.ndarray, calls: int) -> float:
    """Torch eager on one thread, one sample: the reference the ORT latency is compared with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.from_numpy(sample)
        with torch.inference_mode():
            return median_latency_us(lambda: model(x), calls)
    finally:
        torch.set_num_threads(threads)


def validate(
    path: Path,
    raw_x: np.ndarray | None,
    y: np.ndarray | None,
    reference: np.ndarray | None,
    *,
    sample: np.ndarray,
    latency_calls: int,
    check: bool = True,
) -> Validation:
    """Run ``path`` on the raw test inputs and compare with ``reference`` (torch's logits on the same inputs).

    ``sample`` (one raw input, batch of 1) is what the latency is timed on. ``check``: run the ONNX checker
    (not for ``.ort`` files, which it cannot read).
    """
    if check:
        check_file(path)
    session = low_power_session(path)
    accuracy = agreement = diff = None
    if raw_x is not None and y is not None and reference is not None and len(raw_x):
        batches = [session.run(None, {INPUT_NAME: raw_x[i : i + 256]})[0] for i in range(0, len(raw_x), 256)]
        logits = np.concatenate(batches)
        accuracy = float((logits.argmax(1) == y).mean())
        agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
        diff = float(np.abs(logits.astype(np.float64) - reference).max())
    latency = None
    if latency_calls > 0:
        one = {INPUT_NAME: sample}
        latency = median_latency_us(lambda: session.run(None, one), latency_calls)
    return Validation(path.stat().st_size, accuracy, agreement, diff, latency)
