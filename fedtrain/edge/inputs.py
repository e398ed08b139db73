"""Readers of the inputs ``fedtrain predict`` takes: ``.npz``, CSV, an image, a folder of images.

Each gives raw features shaped for the model (the normalisation is in the graph), a name per sample and,
where the file has one, the ground-truth label of each sample (as a label string of the model).
"""

from __future__ import annotations

import csv
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedtrain.edge.errors import EdgeInputError

__all__ = ["IMAGE_SUFFIXES", "Samples", "read_input"]

# The suffixes fedtrain's image-folder loader reads.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".tif", ".tiff"})


@dataclass
class Samples:
    """Raw features ``x`` (one row per sample), a name per sample, and the true labels where known."""

    x: np.ndarray
    names: list[str]
    truth: list[str] | None = None


def read_input(
    path: str | Path, input_shape: Sequence[int], labels: Sequence[str], *, label_column: str = "label"
) -> Samples:
    """Read ``path`` (by its suffix, or as a folder of images) for a model of this input shape and labels.

    Raises
    ------
    EdgeInputError
        When the file is missing or unreadable, or its contents do not fit the model.
    """
    path = Path(path)
    shape = tuple(int(d) for d in input_shape)
    if not path.exists():
        raise EdgeInputError(f"{path}: input not found; pass a .npz, a .csv, an image or a folder of images")
    if path.is_dir():
        return _read_folder(path, shape, labels)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path, shape, labels)
    if suffix == ".csv":
        return _read_csv(path, shape, labels, label_column)
    if suffix in IMAGE_SUFFIXES:
        return Samples(_read_image(path, shape)[None], [path.name])
    raise EdgeInputError(
        f"{path}: cannot tell the input format from suffix {suffix!r}; use .npz, .csv or an image "
        f"({', '.join(sorted(IMAGE_SUFFIXES))})"
    )


def _truth(path: Path, values: np.ndarray, labels: Sequence[str], where: str) -> list[str]:
    """Ground truth as model labels.

    Values are the labels themselves (training names classes ``str(value)``), or else integer indices into them.
    """
    names = [str(v).strip() for v in values.tolist()]
    known = set(labels)
    if all(n in known for n in names):
        return names
    try:
        idx = [int(n) for n in names]
    except ValueError:
        idx = []
    if idx and all(0 <= i < len(labels) for i in idx):
        return [labels[i] for i in idx]
    unknown = sorted({n for n in names if n not in known})[:5]
    raise EdgeInputError(
        f"{path}: {where} holds labels the model does not know: {unknown}; the model's labels are {list(labels)[:10]}"
    )


def _read_npz(path: Path, shape: tuple[int, ...], labels: Sequence[str]) -> Samples:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise EdgeInputError(f"{path}: not a readable .npz file ({err})") from None
    if "x" in arrays:
        x = arrays["x"]
    elif len(arrays) == 1:
        x = next(iter(arrays.values()))
    else:
        raise EdgeInputError(f"{path}: name the features 'x' (or store one array only); it has {sorted(arrays)}")
    if x.shape == shape:
        x = x[None]
    elif x.ndim == len(shape) and (1, *x.shape[1:]) == shape:  # (N, H, W) grey images, as the data loader takes
        x = x[:, None]
    truth = None
    if "y" in arrays and ("x" in arrays):
        y = np.asarray(arrays["y"]).reshape(-1)
        if len(y) != len(x):
            raise EdgeInputError(f"{path}: 'x' has {len(x)} samples but 'y' has {len(y)}")
        if "classes" in arrays:  # written by `fedtrain split`: y indexes the run's class names
            classes = [str(c) for c in arrays["classes"].tolist()]
            if not np.issubdtype(y.dtype, np.integer) or (len(y) and (y.min() < 0 or y.max() >= len(classes))):
                raise EdgeInputError(f"{path}: with a 'classes' array, 'y' must hold integers in 0..{len(classes) - 1}")
            y = np.array([classes[i] for i in y])
        truth = _truth(path, y, labels, "'y'")
    return Samples(x, [str(i) for i in range(len(x))], truth)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path, shape: tuple[int, ...], labels: Sequence[str], label_column: str) -> Samples:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r]
    except (OSError, UnicodeDecodeError) as err:
        raise EdgeInputError(f"{path}: cannot read CSV ({err})") from None
    if not rows:
        raise EdgeInputError(f"{path}: the CSV is empty")
    # A first row that is all numbers is data: a CSV without a header.
    header = None if all(_is_number(v) for v in rows[0]) else [h.strip() for h in rows[0]]
    body = rows if header is None else rows[1:]
    if not body:
        raise EdgeInputError(f"{path}: the CSV has a header but no data rows")
    width = len(rows[0])
    bad = next((i for i, r in enumerate(body) if len(r) != width), None)
    if bad is not None:
        line = bad + (1 if header is None else 2)
        raise EdgeInputError(f"{path}: line {line} has {len(body[bad])} fields, the first row has {width}")
    li = header.index(label_column) if header is not None and label_column in header else None
    try:
        x = np.array([[float(v) for j, v in enumerate(r) if j != li] for r in body], dtype=np.float64)
    except ValueError as err:
        raise EdgeInputError(
            f"{path}: feature columns must be numeric ({err}); name a label column {label_column!r} to keep it apart"
        ) from None
    per_sample = math.prod(shape)
    if x.shape[1] != per_sample:
        raise EdgeInputError(
            f"{path}: rows have {x.shape[1]} feature columns; the model takes {per_sample} (shape {shape})"
        )
    truth = None
    if li is not None:
        truth = _truth(path, np.array([r[li] for r in body]), labels, f"column {label_column!r}")
    return Samples(x.reshape(len(x), *shape), [str(i) for i in range(len(x))], truth)


def _image_layout(path: Path, shape: tuple[int, ...]) -> tuple[str, int, int]:
    """Pillow mode and (height, width) for a model of ``shape``: ``(C, H, W)`` with C 1 or 3, or ``(H, W)``."""
    if len(shape) == 3 and shape[0] in (1, 3):
        return ("L" if shape[0] == 1 else "RGB"), shape[1], shape[2]
    if len(shape) == 2:
        return "L", shape[0], shape[1]
    raise EdgeInputError(
        f"{path}: the model takes inputs of shape {shape}, not images (channels, height, width) with 1 or 3 channels"
    )


def _read_image(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Raw pixel values 0..255 as float32, as fedtrain's image-folder loader reads them for training."""
    mode, height, width = _image_layout(path, shape)
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise EdgeInputError(f"{path}: reading images needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as src:
            img = src.convert(mode)
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            arr: Any = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise EdgeInputError(f"{path}: not a readable image ({err})") from None
    if mode == "RGB":
        arr = arr.transpose(2, 0, 1)  # HWC -> CHW, the layout the models take
    elif len(shape) == 3:
        arr = arr[None]
    return np.ascontiguousarray(arr)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_folder(path: Path, shape: tuple[int, ...], labels: Sequence[str]) -> Samples:
    """Images directly in ``path`` (no ground truth), or ``path/<label>/<image>`` (the subfolder is the truth)."""
    direct = _images_in(path)
    if direct:
        return Samples(np.stack([_read_image(p, shape) for p in direct]), [p.name for p in direct])
    files: list[Path] = []
    truth: list[str] = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        found = _images_in(sub)
        files += found
        truth += [sub.name] * len(found)
    if not files:
        raise EdgeInputError(
            f"{path}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))} in it and in its subfolders)"
        )
    unknown = sorted(set(truth) - set(labels))
    if unknown:
        raise EdgeInputError(
            f"{path}: subfolders {unknown[:5]} are not labels of the model ({list(labels)[:10]}); name each "
            "subfolder after its class, or put the images directly in the folder"
        )
    x = np.stack([_read_image(p, shape) for p in files])
    return Samples(x, [f"{p.parent.name}/{p.name}" for p in files], truth)
