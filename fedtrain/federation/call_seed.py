"""The seed of one client's local call, the same in every client runtime.

The torch ClientApp, the vectorised exchange and the ONNX client all derive it this way, so that one run gives
the same batches, sampling masks and noise on any of them (tests/test_vectorised.py, tests/test_edge_*.py).
Standard library only: the ONNX client imports it on devices without torch.
"""

from __future__ import annotations

__all__ = ["call_seed"]


def call_seed(run_seed: int, global_round: int, partition_id: int) -> int:
    """Seed of partition ``partition_id``'s call in ``global_round`` (counted over all phases) of a run."""
    return run_seed * 1_000_003 + global_round * 1_009 + partition_id
