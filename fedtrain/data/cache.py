"""A parsed copy of a node's data file on disk, so a deployed client does not parse it for every message.

Flower's Deployment Engine starts a fresh ClientApp process per message; parsing a CSV or decoding an image
folder each time would cost seconds. The parsed records are kept as ``.npz`` under the cache folder
(``FEDTRAIN_CACHE_DIR``, default ``~/.cache/fedtrain/data``), keyed by a checksum of the file's bytes (a
folder's: its files' names, sizes and modification times) and the reading options, so a changed file is read
again. ``.npz`` files are not cached: loading them is already as fast as the cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedtrain.data.dataset import ArrayDataset
from fedtrain.logging import get_logger

__all__ = ["cache_dir", "cached", "checksum"]

log = get_logger()
_VERSION = "1"  # bump when the parsed layout changes


def cache_dir() -> Path:
    return Path(os.environ.get("FEDTRAIN_CACHE_DIR", "~/.cache/fedtrain/data")).expanduser()


def checksum(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's file names, sizes and modification times."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _save(target: Path, ds: ArrayDataset) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"x": ds.x, "y": ds.y, "classes": np.array(ds.classes, dtype=str)}
    if ds.max_value is not None:
        arrays["max_value"] = np.array(ds.max_value)
    # Write then rename: two clients of one device may fill the cache at once.
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".npz", delete=False) as fh:
        np.savez(fh, **arrays)
    os.replace(fh.name, target)


def _load(target: Path) -> ArrayDataset | None:
    try:
        with np.load(target, allow_pickle=False) as z:
            max_value = float(z["max_value"]) if "max_value" in z.files else None
            return ArrayDataset(z["x"], z["y"], tuple(str(c) for c in z["classes"]), max_value)
    except Exception:  # a damaged cache entry is read again from the source
        return None


def cached(path: Path, options: str, load: Callable[[], ArrayDataset]) -> ArrayDataset:
    """``load()``'s records for ``path`` read with ``options``, from the cache when the file is unchanged."""
    if path.suffix.lower() == ".npz" or os.environ.get("FEDTRAIN_CACHE_DIR") == "off":
        return load()
    key = hashlib.sha256(f"{_VERSION}\0{checksum(path)}\0{options}".encode()).hexdigest()
    target = cache_dir() / f"{key}.npz"
    if target.is_file():
        hit = _load(target)
        if hit is not None:
            return hit
    ds = load()
    try:
        _save(target, ds)
    except OSError as err:  # a read-only home still trains, only slower
        log.warning("could not cache the parsed data of %s in %s (%s)", path, target.parent, err)
    return ds
