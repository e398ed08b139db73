"""A self-contained ``report.html``: summary, plots (embedded) and the resolved config."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

__all__ = ["png_data_uri", "write_report"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;margin:.5em 0}.grid{display:flex;flex-wrap:wrap;gap:1em}
"""


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def png_data_uri(img: Path) -> str:
    """A PNG file as a ``data:`` URI, so a page is one self-contained file."""
    return "data:image/png;base64," + base64.b64encode(img.read_bytes()).decode()


def write_report(path: Path, summary: dict[str, Any], images: list[Path]) -> Path:
    """Write the report for ``summary`` with ``images`` embedded as data URIs."""
    final, best = summary.get("final", {}), summary.get("best", {})
    overview = [
        ("status", summary.get("status")),
        ("rounds", summary.get("rounds")),
        ("clients", summary.get("num_clients")),
        ("final test accuracy", f"{final.get('accuracy', float('nan')):.4f}"),
        ("final test loss", f"{final.get('loss', float('nan')):.4f}"),
        ("best round (validation)", best.get("round")),
        ("test accuracy at best round", f"{best.get('accuracy', float('nan')):.4f}"),
        ("wall time (s)", f"{summary.get('wall_seconds', 0):.1f}"),
    ]
    if summary.get("reason"):
        overview.insert(1, ("reason", summary["reason"]))
    privacy = summary.get("privacy", {})
    if "sample" in privacy:
        s = privacy["sample"]
        text = f"ε max {s['epsilon_max']:.3f} (mean {s['epsilon_mean']:.3f}), δ = {s['delta']:g}, {s['accountant']}"
        overview.append(("sample-level DP", f"{text}, target {s['target_epsilon']}"))
    if "user" in privacy:
        u = privacy["user"]
        text = f"ε = {u['epsilon']:.3f}, δ = {u['delta']:g}, {u['rounds']} rounds, {u['clipping']} clipping"
        overview.append(("user-level DP", text))
    phases = "".join(
        f"<tr><td>{html.escape(p['name'])}</td><td>{p['rounds']}</td><td>{html.escape(p['status'])}</td></tr>"
        for p in summary.get("phases", [])
    )
    figs = "".join(
        f'<figure><img alt="{img.stem}" src="{png_data_uri(img)}"></figure>' for img in images if img.is_file()
    )
    name = html.escape(path.parent.name)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fedtrain run {name}</title>
<style>{_STYLE}</style></head><body>
<h1>fedtrain run <code>{name}</code></h1>
<h2>Summary</h2>{_table(overview)}
<h2>Phases</h2><table><tr><th>phase</th><th>rounds</th><th>status</th></tr>{phases}</table>
<h2>Plots</h2><div class="grid">{figs}</div>
<h2>Configuration</h2>{_table(sorted(summary.get("config", {}).items()))}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
