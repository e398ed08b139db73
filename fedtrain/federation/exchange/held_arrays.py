"""Reply arrays that keep their numpy value: the vectorised exchange's replies, read back without parsing.

A Flower :class:`~flwr.app.Array` holds ``np.save`` bytes, and every ``numpy()`` call parses them again
(``np.load``: a ``literal_eval`` of the header, ~0.1 ms per array); the server reads each reply twice
(screening, aggregation). A :class:`HeldArray` carries the very same bytes (written without ``np.save``:
a cached header plus the raw buffer) and answers ``numpy()`` with a copy of the array it was made from.
It deflates as the plain Array it equals, so its object id is that Array's and it inflates as one.
"""

from __future__ import annotations

import functools
from io import BytesIO
from typing import Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType
from numpy.typing import NDArray

__all__ = ["HeldArray", "held_record", "read_only_values"]


@functools.lru_cache(maxsize=256)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """``np.save``'s header for a C-contiguous array of ``dtype`` and ``shape``."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    buffer = BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype[Any]) -> str:
    """``str(dtype)`` as Flower stores it, cached: numpy computes it anew each time (tens of us)."""
    return str(dtype)


class HeldArray(Array):
    """An :class:`Array` whose ``numpy()`` returns (a copy of) the array it holds, not a parse of its bytes.

    Its ``data`` (the ``np.save`` bytes) is written the first time something reads it.
    """

    @classmethod
    def of(cls, values: NDArray[Any]) -> HeldArray:
        values = np.ascontiguousarray(values)
        array = cls.__new__(cls)  # Array.__init__ would parse its arguments and want the bytes now
        dtype = _dtype_name(values.dtype)
        array.__dict__.update(dtype=dtype, shape=tuple(values.shape), stype=SType.NUMPY, _held=values)
        return array

    @property
    def data(self) -> bytes:
        if "_data" not in self.__dict__:
            values = self.__dict__["_held"]
            self.__dict__["_data"] = _npy_header(values.dtype.str, tuple(values.shape)) + values.tobytes()
        return cast(bytes, self.__dict__["_data"])

    @data.setter
    def data(self, value: bytes) -> None:  # new bytes: what was held no longer says what the array is
        self.__dict__["_data"] = value
        self.__dict__.pop("_held", None)

    def numpy(self) -> NDArray[Any]:
        held = self.__dict__.get("_held")
        return cast(NDArray[Any], held.copy()) if held is not None else super().numpy()

    def deflate(self) -> bytes:
        """Deflated as the plain Array it equals (same object id; inflates as a plain Array)."""
        return Array(dtype=self.dtype, shape=tuple(self.shape), stype=self.stype, data=self.data).deflate()


def read_only_values(array: Array) -> NDArray[Any]:
    """The array's values to read, not to keep: a held array's own memory (no copy), else a parse of its bytes."""
    held = array.__dict__.get("_held") if isinstance(array, HeldArray) else None
    return cast(NDArray[Any], held) if held is not None else array.numpy()


def held_record(state: dict[str, torch.Tensor], *, copy: bool = False) -> ArrayRecord:
    """An :class:`ArrayRecord` of ``state`` (a state dict) made of :class:`HeldArray` s.

    Without ``copy`` the record shares the tensors' memory: pass ``copy=True`` when they will change afterwards.
    """
    arrays: dict[str, Array] = {}
    for k, v in state.items():
        values = v.detach().cpu().numpy()
        if copy:
            values = values.copy()
        arrays[k] = HeldArray.of(values) if values.ndim else Array.from_numpy_ndarray(values)  # 0-d: as Flower does
    record = ArrayRecord()  # not ArrayRecord(array_dict=...): it would rebuild plain Arrays
    store = record.__dict__.get("_data")
    if isinstance(store, dict) and not store:  # Flower 1.42's TypedDict store: keys and values are valid by type
        store.update(arrays)
    else:
        for k, a in arrays.items():
            record[k] = a
    return record
