"""Checks of the export keys that a single key's range cannot express."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedtrain.config.schema import RunConfig

__all__ = ["EXPORT_FORMATS", "check_export", "parse_export_formats"]

EXPORT_FORMATS = ("fp32", "fp16", "int8-static", "int8-dynamic")


def parse_export_formats(text: str) -> list[str]:
    """The formats named in ``export-formats``, in the documented order, fp32 always first (the reference)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    return ["fp32"] + [f for f in EXPORT_FORMATS[1:] if f in names]


def check_export(cfg: RunConfig) -> list[str]:
    names = [n.strip() for n in cfg.export.export_formats.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPORT_FORMATS]
    problems = []
    if unknown or not names:
        problems.append(
            f"export-formats={cfg.export.export_formats!r} names unknown formats {unknown}; choose from "
            f"{', '.join(EXPORT_FORMATS)} (comma-separated; .ort files come with export-ort=true)"
        )
    return problems
