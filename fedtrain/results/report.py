"""A self-contained ``report.html``: summary, plots (embedded) and the resolved config."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

__all__ = ["SELECTED_BY_LAST_ROUND", "SELECTED_BY_VALIDATION", "best_round_label", "png_data_uri", "write_report"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;margin:.5em 0}.grid{display:flex;flex-wrap:wrap;gap:1em}
.notice{border:2px solid #c62828;background:#fdecea;padding:.4em 1em;margin:1em 0}
.notice h2{margin:.3em 0;color:#c62828}
"""

SELECTED_BY_VALIDATION = "validation"  # summary["best"]["selected_by"] (docs/results.md)
SELECTED_BY_LAST_ROUND = "last round (no validation split)"
# summary["best"]["selected_by"] -> the row label that says how the "best" round was chosen
_BEST_LABELS = {
    SELECTED_BY_VALIDATION: "best round (by validation)",
    SELECTED_BY_LAST_ROUND: "best round (last round: no validation split)",
}


def best_round_label(best: dict[str, Any]) -> str:
    """How ``summary["best"]`` was chosen, as a row label (summaries before ``selected_by`` were by validation)."""
    selected_by = best.get("selected_by", SELECTED_BY_VALIDATION)
    return _BEST_LABELS.get(selected_by, f"best round (selected by {selected_by})")


def _notice(title: str, items: list[str], intro: str = "") -> str:
    """A red box listing ``items``; empty when there are none."""
    if not items:
        return ""
    lis = "".join(f"<li>{html.escape(str(i))}</li>" for i in items)
    text = f"<p>{html.escape(intro)}</p>" if intro else ""
    return f'<div class="notice"><h2>{html.escape(title)}</h2>{text}<ul>{lis}</ul></div>'


def _privacy_rows(privacy: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("DP level", privacy.get("level", "none"))]
    if "sample" in privacy:
        s = privacy["sample"]
        text = f"ε max {s['epsilon_max']:.3f} (mean {s['epsilon_mean']:.3f}), δ = {s['delta']:g}, {s['accountant']}"
        rows.append(("sample-level DP", f"{text}, target {s['target_epsilon']}"))
    if "user" in privacy:
        u = privacy["user"]
        text = f"ε = {u['epsilon']:.3f}, δ = {u['delta']:g}, {u['rounds']} rounds, {u['clipping']} clipping"
        rows.append(("user-level DP", text))
    return rows


def _secagg_rows(secagg: dict[str, Any]) -> list[tuple[str, Any]]:
    halted = secagg.get("halted_rounds", [])
    return [
        ("protocol", "SecAgg+ (Flower), updates masked; the server sees only each round's weighted mean"),
        ("shares / reconstruction threshold", f"{secagg.get('shares')} / {secagg.get('threshold')}"),
        ("clipping range (last round)", secagg.get("clipping_range")),
        (
            "values clipped",
            f"{secagg.get('clipped', 0)} (at most {secagg.get('max_clipped_fraction', 0):.3%} of a round)",
        ),
        ("rounds retried", secagg.get("retried_rounds", 0)),
        ("rounds halted", ", ".join(f"{r['phase']} {r['round']}: {'; '.join(r['stages'])}" for r in halted) or "none"),
    ]


def _number(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _export_html(export: dict[str, Any]) -> str:
    """The export section: one row per file (format, size, accuracy, drop, agreement, Δlogit, latency)."""
    head = "".join(f"<th>{h}</th>" for h in ("format", "file", "size (kB)", "test accuracy", "drop (points)",
                   "argmax agreement", "max |Δlogit|", "latency (µs, 1 thread)"))  # fmt: skip
    body = ""
    for r in export.get("rows", []):
        cells = (r["format"], r["file"] or "refused", _number(r["bytes"] / 1000, ".1f"), _number(r["accuracy"], ".4f"),
                 _number(r["accuracy_drop_points"], ".2f"), _number(r["agreement"], ".4f"),
                 _number(r["max_abs_logit_diff"], ".2g"), _number(r["latency_us"], ".1f"))  # fmt: skip
        body += "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
    calibration = export.get("calibration") or {}
    notes = [
        ("weights exported", f"{export.get('checkpoint')} checkpoint (global round {export.get('rounds')})"),
        ("torch eager latency (µs, 1 thread)", _number(export.get("torch_latency_us"), ".1f")),
        ("int8-static calibration", calibration.get("source", "not used")),
    ]
    refused = _notice("Export: formats not written or forced", export.get("refused", []))
    return f"<h2>Export</h2>{_table(notes)}<table><tr>{head}</tr>{body}</table>{refused}"


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def png_data_uri(img: Path) -> str:
    """A PNG file as a ``data:`` URI, so a page is one self-contained file."""
    return "data:image/png;base64," + base64.b64encode(img.read_bytes()).decode()


def write_report(path: Path, summary: dict[str, Any], images: list[Path]) -> Path:
    """Write the report for ``summary`` with ``images`` embedded as data URIs.

    Warnings (e.g. a diverging training loss) and private statistics read outside the DP
    accountant (``privacy.outside_budget``) are shown in red boxes, so they are not missed.
    """
    final, best = summary.get("final", {}), summary.get("best", {})
    overview = [
        ("status", summary.get("status")),
        ("rounds", summary.get("rounds")),
        ("clients", summary.get("num_clients")),
        ("final test accuracy", f"{final.get('accuracy', float('nan')):.4f}"),
        ("final test loss", f"{final.get('loss', float('nan')):.4f}"),
        (best_round_label(best), best.get("round")),
        ("test accuracy at best round", f"{best.get('accuracy', float('nan')):.4f}"),
        ("wall time (s)", f"{summary.get('wall_seconds', 0):.1f}"),
    ]
    if summary.get("participants"):
        took_part = ", ".join(f"{pid} ({n} rounds)" for pid, n in summary["participants"].items())
        overview.append(("clients that took part (partition id: rounds aggregated)", took_part))
    if summary.get("reason"):
        overview.insert(1, ("reason", summary["reason"]))
    warnings = _notice("Warnings", summary.get("warnings", []))
    privacy = summary.get("privacy", {})
    outside = _notice(
        "Outside the privacy budget",
        privacy.get("outside_budget", []),
        "These private statistics were read outside the DP accountant; the ε above does not cover them.",
    )
    phases = "".join(
        f"<tr><td>{html.escape(p['name'])}</td><td>{p['rounds']}</td><td>{html.escape(p['status'])}</td></tr>"
        for p in summary.get("phases", [])
    )
    secagg = summary.get("secure_aggregation")
    secagg_html = f"<h2>Secure aggregation</h2>{_table(_secagg_rows(secagg))}" if secagg else ""
    export_html = _export_html(summary["export"]) if summary.get("export") else ""
    figs = "".join(
        f'<figure><img alt="{img.stem}" src="{png_data_uri(img)}"></figure>' for img in images if img.is_file()
    )
    name = html.escape(path.parent.name)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fedtrain run {name}</title>
<style>{_STYLE}</style></head><body>
<h1>fedtrain run <code>{name}</code></h1>{warnings}
<h2>Summary</h2>{_table(overview)}
<h2>Privacy</h2>{_table(_privacy_rows(privacy))}{outside}{secagg_html}
<h2>Phases</h2><table><tr><th>phase</th><th>rounds</th><th>status</th></tr>{phases}</table>{export_html}
<h2>Plots</h2><div class="grid">{figs}</div>
<h2>Configuration</h2>{_table(sorted(summary.get("config", {}).items()))}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
