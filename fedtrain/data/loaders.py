"""Load the embedded digits data or a user's files (npz, CSV, IDX, image folder).

Every loader returns an :class:`ArrayDataset` or raises :class:`DataError` saying what is
wrong with which file and what shape or layout was expected.
"""

from __future__ import annotations

import csv
import gzip
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedtrain.data.dataset import ArrayDataset
from fedtrain.errors import DataError
from fedtrain.registry import Registry

__all__ = ["DATA_FORMATS", "DataFormat", "detect_format", "load_dataset", "load_digits", "read_idx"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".tif", ".tiff"}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _labels_to_ints(raw: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map arbitrary label values to 0..K-1, keeping their sorted names."""
    values, y = np.unique(raw, return_inverse=True)
    return y.astype(np.int64), tuple(str(v) for v in values)


def _float32(x: np.ndarray) -> np.ndarray:
    """``x`` as float32; values beyond its range become inf, which :func:`load_dataset` then refuses (no warning)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(np.float32)


def load_digits() -> ArrayDataset:
    """Scikit-learn's 8x8 digits (1,797 images, 10 classes) as ``(N, 1, 8, 8)`` floats in [0, 16]."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]
    return ArrayDataset(x, bunch.target.astype(np.int64), tuple(str(c) for c in range(10)), max_value=16.0)


def load_npz(path: Path) -> ArrayDataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = set(archive.files)
            if not {"x", "y"} <= files:
                raise DataError(f"{path}: a .npz needs arrays named 'x' and 'y'; it has {sorted(files)}")
            x, y = archive["x"], archive["y"]
            # Written by `fedtrain split`: labels index `classes` (a node may hold only some of them),
            # and `max_value` keeps the format's nominal range for normalize=range.
            names = tuple(str(c) for c in archive["classes"]) if "classes" in files else None
            max_value = float(archive["max_value"]) if "max_value" in files else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{path}: 'x' must be real numbers, got dtype {x.dtype}")
    if x.ndim < 2 or y.ndim < 1:
        raise DataError(
            f"{path}: inputs must have shape (samples, features...) in 'x', labels (samples,) in 'y'; got {x.shape} "
            f"and {y.shape}"
        )
    if x.ndim == 3:  # (N, H, W) grey images
        x = x[:, None]
    if len(x) != len(y):
        raise DataError(f"{path}: 'x' has {len(x)} samples but 'y' has {len(y)}")
    if y.size != len(y):
        raise DataError(f"{path}: 'y' must hold one label per sample, shape ({len(y)},); got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        bad = int(np.count_nonzero(~np.isfinite(y)))
        raise DataError(f"{path}: 'y' holds {bad} NaN or infinite labels; remove those samples or fix their labels")
    if names is None:
        labels, classes = _labels_to_ints(np.asarray(y).reshape(len(y)))
        return ArrayDataset(_float32(x), labels, classes, max_value=max_value)
    y = np.asarray(y).reshape(len(y))
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and (y.min() < 0 or y.max() >= len(names))):
        raise DataError(f"{path}: with a 'classes' array, 'y' must hold integers in 0..{len(names) - 1}")
    return ArrayDataset(_float32(x), y.astype(np.int64), names, max_value=max_value)


def load_csv(path: Path, label_column: str) -> ArrayDataset:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read CSV ({err})") from None
    if len(rows) < 2:
        raise DataError(f"{path}: a CSV needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise DataError(f"{path}: no label column {label_column!r}; columns are {header[:10]}; set label-column")
    li = header.index(label_column)
    body = [r for r in rows[1:] if r]
    bad = next((i for i, r in enumerate(body, start=2) if len(r) != len(header)), None)
    if bad is not None:
        raise DataError(f"{path}: line {bad} has {len(body[bad - 2])} fields, the header has {len(header)}")
    if len(header) < 2:
        raise DataError(f"{path}: the CSV has only the label column {label_column!r}; it needs feature columns too")
    try:
        x = np.array([[float(v) for j, v in enumerate(r) if j != li] for r in body], dtype=np.float32)
    except ValueError as err:
        raise DataError(f"{path}: feature columns must be numeric ({err})") from None
    labels, classes = _labels_to_ints(np.array([r[li].strip() for r in body]))
    return ArrayDataset(x, labels, classes)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, a {ndim}-d header needs {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header says shape {dims} ({expected} bytes) but the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw[header:], dtype=dtype).reshape(dims)


def load_idx(path: Path) -> ArrayDataset:
    """A folder with ``*images*idx3*`` and ``*labels*idx1*`` files; train and t10k files are joined."""
    files = sorted(p for p in path.iterdir() if "idx" in p.name)
    images = [p for p in files if "idx3" in p.name]
    labels = [p for p in files if "idx1" in p.name]
    if not images or len(images) != len(labels):
        raise DataError(
            f"{path}: an IDX folder needs matching '*-images-idx3-ubyte' and '*-labels-idx1-ubyte' files; "
            f"found {[p.name for p in files]}"
        )
    xs, ys = [], []
    pixels = True  # unsigned bytes: the nominal range is 0..255
    for img, lab in zip(images, labels, strict=True):
        x, y = read_idx(img), read_idx(lab)
        pixels = pixels and x.dtype == np.uint8
        if len(x) != len(y):
            raise DataError(f"{img.name} has {len(x)} images but {lab.name} has {len(y)} labels")
        xs.append(_float32(x))
        ys.append(y.astype(np.int64))
    x = np.concatenate(xs)
    if x.ndim == 3:
        x = x[:, None]
    labels_int, classes = _labels_to_ints(np.concatenate(ys))
    return ArrayDataset(x, labels_int, classes, max_value=255.0 if pixels else None)


def load_image_folder(path: Path, min_classes: int = 2) -> ArrayDataset:
    """``root/<class>/<image>``; images are read in greyscale and must share one size."""
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in path.iterdir() if p.is_dir())
    if len(class_dirs) < min_classes:
        raise DataError(
            f"{path}: an image folder needs one subfolder per class (at least {min_classes}); found {len(class_dirs)}"
        )
    xs: list[np.ndarray] = []
    ys: list[int] = []
    size = None
    for label, cdir in enumerate(class_dirs):
        before = len(ys)
        for img_path in sorted(cdir.iterdir()):
            if img_path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(img_path) as img:
                    arr = np.asarray(img.convert("L"), dtype=np.float32)
            except (UnidentifiedImageError, OSError) as err:
                raise DataError(f"{img_path}: not a readable image ({err})") from None
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise DataError(
                    f"{img_path}: size {arr.shape[::-1]} differs from the first image's {size[::-1]}; "
                    "resize all images to one size"
                )
            xs.append(arr)
            ys.append(label)
        if len(ys) == before:  # its label would be a class the model is trained to predict but never sees
            raise DataError(f"{cdir}: class folder without images; add images or remove the folder")
    if not xs:
        raise DataError(f"{path}: no images found (looked for {sorted(_IMAGE_SUFFIXES)})")
    labels = np.array(ys, dtype=np.int64)
    return ArrayDataset(np.stack(xs)[:, None], labels, tuple(d.name for d in class_dirs), max_value=255.0)


def detect_format(path: Path) -> str:
    """Infer the format of ``path`` from its suffix or folder contents."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return "npz"
        if suffix == ".csv":
            return "csv"
        raise DataError(f"{path}: cannot tell the format from suffix {suffix!r}; set data-format")
    if any("idx" in p.name for p in path.iterdir()):
        return "idx"
    return "image-folder"


@dataclass(frozen=True)
class DataFormat:
    """How to read one format: from a file or a folder."""

    load: Callable[[Path, str, int], ArrayDataset]  # (path, label_column, min_classes)
    folder: bool


DATA_FORMATS = Registry[DataFormat]("data-format")
DATA_FORMATS.register("npz", DataFormat(lambda p, _label, _min: load_npz(p), folder=False))
DATA_FORMATS.register("csv", DataFormat(lambda p, label, _min: load_csv(p, label), folder=False))
DATA_FORMATS.register("idx", DataFormat(lambda p, _label, _min: load_idx(p), folder=True))
DATA_FORMATS.register("image-folder", DataFormat(lambda p, _label, least: load_image_folder(p, least), folder=True))


def load_dataset(
    path: str | Path, data_format: str = "auto", label_column: str = "label", *, min_classes: int = 2
) -> ArrayDataset:
    """Load a user data set from ``path``; one node's file may hold a single class (``min_classes=1``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(
            f"data-path {str(path)!r} does not exist; point data-path at a .npz, .csv, IDX folder or image folder"
        )
    fmt = detect_format(path) if data_format == "auto" else data_format
    reader = DATA_FORMATS.get(fmt)
    if reader.folder and not path.is_dir():
        raise DataError(f"data-path {str(path)!r} must be a folder for data-format={fmt!r}")
    if not reader.folder and not path.is_file():
        raise DataError(f"data-path {str(path)!r} must be a file for data-format={fmt!r}")
    try:
        ds = reader.load(path, label_column, min_classes)
    except DataError as err:
        if str(path) in str(err):
            raise
        raise DataError(f"{path}: {err}") from None  # the container's checks do not know the file
    if ds.num_classes < min_classes:
        raise DataError(
            f"{path}: found {ds.num_classes} class; classification needs at least {min_classes} (labels of "
            "another class are missing from the file)"
        )
    _check_finite(path, ds.x)
    return ds


def _check_finite(path: Path, x: np.ndarray) -> None:
    """Refuse NaN or infinite inputs: training on them runs to the end with a NaN loss in every round."""
    bad = ~np.isfinite(x)
    if bad.any():
        rows = int(np.count_nonzero(bad.reshape(len(x), -1).any(axis=1)))
        raise DataError(
            f"{path}: {int(np.count_nonzero(bad))} input values are NaN or infinite (in {rows} of {len(x)} samples; "
            "values beyond float32's range count as infinite); remove or impute them before training"
        )
