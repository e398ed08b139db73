"""Checks of the data-source keys (``data-source``, ``server-data-path``, ``classes``, ``input-shape``, ...).

They read only config values, so they live with the config and the loader runs them with every
other cross-check; :mod:`fedtrain.data.source` uses the parsers.
"""

from __future__ import annotations

from fedtrain.config.schema import RunConfig
from fedtrain.errors import ConfigError

__all__ = ["check_data_source", "fitted_on_server_file", "parse_classes", "parse_input_shape"]


def fitted_on_server_file(cfg: RunConfig) -> bool:
    """Whether ``standard``/``minmax`` are fitted on the server's own file rather than on client records.

    With ``data-source=node`` the server fits them on ``server-data-path`` (:func:`check_data_source` requires
    one, and refuses ``normalize-local`` under DP), so they read no client record and cost no privacy.
    """
    return cfg.data.data_source == "node"


def parse_classes(text: str) -> tuple[str, ...]:
    """``"cat,dog"`` -> ``("cat", "dog")``; empty text gives ``()``."""
    return tuple(c.strip() for c in text.split(",")) if text.strip() else ()


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"1,8,8"`` -> ``(1, 8, 8)``; empty text gives ``()``."""
    if not text.strip():
        return ()
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"input-shape={text!r} must be positive integers separated by commas, e.g. '1,8,8'") from None
    if not shape or min(shape) < 1:
        raise ConfigError(f"input-shape={text!r} must be positive integers separated by commas, e.g. '1,8,8'")
    return shape


def check_data_source(cfg: RunConfig) -> list[str]:
    """Problems of the data-source keys, for the config loader (each names the keys to fix)."""
    d = cfg.data
    problems: list[str] = []
    if d.data_source == "partition":
        node_only = {
            "server-data-path": d.server_data_path,
            "input-shape": d.input_shape,
            "classes": d.classes,
            "input-max": d.input_max,
            "normalize-local": d.normalize_local,
        }
        for key, value in node_only.items():
            if value:
                problems.append(
                    f"{key} applies to data-source=node only (with data-source=partition the server derives classes, "
                    "input shape and normaliser from the federation's data); set data-source=node or drop it"
                )
        return problems
    try:
        parse_input_shape(d.input_shape)
    except ConfigError as err:
        problems.extend(err.problems)
    classes = parse_classes(d.classes)
    if classes and (len(classes) < 2 or len(set(classes)) != len(classes) or "" in classes):
        problems.append(f"classes={d.classes!r} must name at least 2 distinct, non-empty classes, e.g. 'cat,dog'")
    if not d.server_data_path:
        why = "data-source=node without server-data-path (a file of the server's own) reads no data at the server"
        if not classes:
            problems.append(f"{why}: set classes='name,name,...' (the class names in label order)")
        if not d.input_shape:
            problems.append(f"{why}: set input-shape (the model's input, e.g. '1,8,8')")
        if d.normalize == "range" and d.input_max <= 0:
            problems.append(f"{why}: normalize='range' needs input-max (16 for digits, 255 for 8-bit images)")
        if d.normalize in ("standard", "minmax") and not d.normalize_local:
            problems.append(
                f"normalize={d.normalize!r} is fitted on data, and with data-source=node the server fits it on "
                "server-data-path; give one, or use normalize='range' (with input-max) or 'none', or let each node "
                "fit its own (normalize-local=true)"
            )
    if d.normalize_local and cfg.privacy.dp_level != "none":
        problems.append(
            f"normalize-local=true is refused under dp-level={cfg.privacy.dp_level!r}: each node's scaling would "
            "depend on all its records, which DP-SGD does not account; use normalize='range' (reads no data) or "
            "'none' and let the server send the normaliser"
        )
    return problems
