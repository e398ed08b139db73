"""The published models of a run: ``export/manifest.json`` (name, SHA-256, size, card) and fetching them.

The server's export writes the manifest next to the files (:func:`manifest_for`). A device copies the folder
(``scp``/``rsync``) or fetches it over HTTP(S) with :func:`fetch` (``fedtrain fetch``), which checks every file
against its checksum and its card against the manifest before keeping it. The checksum catches a damaged or
swapped file; it proves the origin only if the manifest itself comes over a trusted channel (HTTPS, scp).
Standard library only, like the rest of :mod:`fedtrain.edge`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedtrain.edge.errors import EdgeModelError

__all__ = ["MANIFEST_FORMAT", "MANIFEST_NAME", "fetch", "manifest_for", "sha256_of", "verify"]

MANIFEST_FORMAT = "fedtrain-export-manifest-v1"
MANIFEST_NAME = "manifest.json"
_CARD_FIELDS = ("variant", "class_labels", "input_shape", "test_accuracy", "privacy", "run_id")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_for(folder: Path, files: Iterable[Path], cards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest of ``files`` in ``folder``; ``cards`` maps a file name to its card's fields."""
    entries = []
    for path in files:
        card = cards.get(path.name, {})
        entries.append({"file": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size,
                        **{k: card[k] for k in _CARD_FIELDS if k in card}})  # fmt: skip
    return {"format": MANIFEST_FORMAT, "files": entries}


def _read(source: str, name: str) -> bytes:
    if source.startswith(("http://", "https://")):
        url = source.rstrip("/") + "/" + name
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data: bytes = response.read()
                return data
        except (urllib.error.URLError, OSError) as err:
            raise EdgeModelError(
                f"cannot fetch {url}: {err}; check the address and that the server is serving it"
            ) from None
    path = Path(source).expanduser() / name
    if not path.is_file():
        raise EdgeModelError(f"{path} does not exist; give the run's export/ folder (or its URL)")
    return path.read_bytes()


def verify(folder: Path, manifest: dict[str, Any] | None = None) -> list[Path]:
    """Check every file of ``folder``'s manifest (checksum, size, card); return their paths.

    Raises
    ------
    EdgeModelError
        A file is missing, damaged (checksum or size) or carries another card than the manifest says.
    """
    from fedtrain.edge.runtime import EdgeModel

    if manifest is None:
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise EdgeModelError(f"{folder} has no {MANIFEST_NAME}; export the run again (fedtrain export RUN_DIR)")
        manifest = _parse(path.read_bytes(), str(path))
    checked = []
    for entry in manifest["files"]:
        path = folder / entry["file"]
        if not path.is_file():
            raise EdgeModelError(f"{path} is listed in the manifest but missing")
        if path.stat().st_size != entry["bytes"] or sha256_of(path) != entry["sha256"]:
            raise EdgeModelError(f"{path} does not match its checksum in the manifest: damaged or replaced")
        card = EdgeModel.load(path).card
        if card is not None:
            ours = {k: getattr(card, k) for k in _CARD_FIELDS}
            differ = [k for k in _CARD_FIELDS if k in entry and entry[k] != ours[k]]
            if differ:
                raise EdgeModelError(f"{path}: its model card differs from the manifest in {', '.join(differ)}")
        checked.append(path)
    return checked


def _parse(data: bytes, where: str) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgeModelError(f"{where} is not a JSON manifest") from None
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), list):
        raise EdgeModelError(f"{where} is not a {MANIFEST_FORMAT} manifest")
    return manifest


def fetch(source: str, dest: Path, formats: Iterable[str] | None = None) -> list[Path]:
    """Copy a run's published models from ``source`` (a folder or an http(s) URL of it) into ``dest``, verified.

    ``formats`` keeps only some files (by variant, e.g. ``int8-static``). A file is written to ``dest`` only once
    its checksum matched; nothing half-fetched is left under its final name.
    """
    manifest = _parse(_read(source, MANIFEST_NAME), f"{source}/{MANIFEST_NAME}")
    wanted = set(formats or ())
    entries = [e for e in manifest["files"] if not wanted or e.get("variant") in wanted]
    if not entries:
        raise EdgeModelError(f"{source} publishes no file of format {sorted(wanted)}")
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        data = _read(source, entry["file"])
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise EdgeModelError(f"{entry['file']} from {source} does not match its checksum: not kept")
        with tempfile.NamedTemporaryFile(dir=dest, delete=False) as fh:
            fh.write(data)
        os.replace(fh.name, dest / entry["file"])
    kept = {**manifest, "files": entries}
    (dest / MANIFEST_NAME).write_text(json.dumps(kept, indent=2) + "\n", encoding="utf-8")
    return verify(dest, kept)
