"""A self-contained ``report.html``: summary, plots (embedded) and the resolved config."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from fedtrain.config.presets import MAIN_JOB, MAIN_JOB_PRETRAINING_EFFECT

__all__ = ["SELECTED_BY_LAST_ROUND", "SELECTED_BY_VALIDATION", "best_round_label", "png_data_uri", "write_report"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;margin:.5em 0}.grid{display:flex;flex-wrap:wrap;gap:1em}
.notice{border:2px solid #c62828;background:#fdecea;padding:.4em 1em;margin:1em 0}
.notice h2{margin:.3em 0;color:#c62828}
.headline{display:flex;flex-wrap:wrap;gap:1.5em;border:1px solid #ccc;padding:.6em 1em;margin:1em 0}
.headline div{min-width:9em}.headline b{display:block;font-size:1.5em}
.statement{border-left:4px solid #1565c0;padding:.2em 1em;margin:1em 0}
details summary{cursor:pointer;margin:.5em 0}
@media print{body{max-width:none;margin:0;font-size:10pt}img{max-width:48%;page-break-inside:avoid}
 h2{page-break-after:avoid}table{page-break-inside:avoid}details{display:block}details>*{display:block}
 .grid{display:block}}
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


def _headline(summary: dict[str, Any]) -> str:
    """Test accuracy, ε and δ per DP level, model size per exported format: what the run comes to."""
    final, privacy = summary.get("final", {}), summary.get("privacy", {})
    cells = [("final test accuracy", f"{final.get('accuracy', float('nan')):.4f}")]
    if "sample" in privacy:
        s = privacy["sample"]
        cells.append(("sample-level DP", f"ε {s['epsilon_max']:.2f}, δ {s['delta']:g}"))
    if "user" in privacy:
        u = privacy["user"]
        cells.append(("user-level DP", f"ε {u['epsilon']:.2f}, δ {u['delta']:g}"))
    if privacy.get("level", "none") == "none":
        cells.append(("differential privacy", "none"))
    if summary.get("secure_aggregation"):
        cells.append(("aggregation", "SecAgg+"))
    for row in (summary.get("export") or {}).get("rows", []):
        if row["written"] and not row["format"].endswith("(.ort)"):
            cells.append((f"{row['format']} ONNX", f"{row['bytes'] / 1000:.1f} kB"))
    body = "".join(f"<div>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in cells)
    return f'<div class="headline">{body}</div>'


def _pretraining_note(summary: dict[str, Any]) -> str:
    """What pretraining cost in privacy and, for the main preset, what it was measured to buy."""
    pre = summary.get("pretraining")
    if not pre:
        return ""
    text = f"{pre['rounds']} pretraining rounds over {pre['layers']} hidden layer(s)."
    if "epsilon_after" in pre:
        eps = summary.get("privacy", {}).get("sample", {}).get("epsilon_max", float("nan"))
        text += (
            f" Under sample-level DP they took {pre['steps_after']} of {pre['steps_total']} DP-SGD steps per client "
            f"and the accountant stood at ε = {pre['epsilon_after']:.2f} after them, of ε = {eps:.2f} for the run."
        )
    config = summary.get("config", {})
    if all(config.get(k) == v for k, v in MAIN_JOB.items()):  # measured for exactly this recipe
        text += f" {MAIN_JOB_PRETRAINING_EFFECT}"
    return f"<p>{html.escape(text)}</p>"


def _spread(values: list[float], spec: str) -> str:
    if not values:
        return "n/a"
    low, high = min(values), max(values)
    return format(low, spec) if format(low, spec) == format(high, spec) else f"{low:{spec}} to {high:{spec}}"


def _privacy_statement(summary: dict[str, Any]) -> str:
    """What the run's DP guarantee is and is not, in sentences and a per-client table."""
    privacy = summary.get("privacy", {})
    config = summary.get("config", {})
    level = privacy.get("level", "none")
    if level == "none":
        return (
            '<div class="statement"><p><b>No differential privacy.</b> This run trained without DP '
            "(<code>dp-level = none</code>): the global model and every client update may reveal individual "
            "training records. Nothing in this report bounds what can be learnt about them.</p></div>"
        )
    parts = []
    if "sample" in privacy:
        s = privacy["sample"]
        per_client = s.get("per_client", {})
        segments = [seg for c in per_client.values() for seg in c.get("segments", [])]
        sigmas = _spread([float(seg[0]) for seg in segments], ".3f")
        rates = _spread([float(seg[1]) for seg in segments], ".4g")
        parts.append(
            f"<p><b>Sample-level DP</b> (DP-SGD, Opacus): each client's records are protected by "
            f"(ε = {s['epsilon_max']:.3f}, δ = {s['delta']:g}) at most over the whole run (mean ε "
            f"{s['epsilon_mean']:.3f}, min {s['epsilon_min']:.3f}), accountant "
            f"<code>{html.escape(str(s['accountant']))}</code>, per-sample clipping norm C = {s.get('max_grad_norm')}, "
            f"noise multiplier σ = {sigmas}, sampling rate q = {rates} (over clients and stages), "
            f"{len(per_client)} clients. Each client's full history is in <code>privacy.json</code>, from which "
            "every ε can be recomputed (docs/privacy.md).</p>"
        )
        rows = "".join(
            f"<tr><td>{html.escape(pid)}</td><td>{float(c.get('epsilon', 0)):.3f}</td><td>{int(c.get('steps', 0))}"
            f"</td><td>{len(c.get('segments', []))}</td></tr>"
            for pid, c in per_client.items()
        )
        if rows:
            parts.append(
                "<details><summary>per-client spread (ε, steps, history segments)</summary><table><tr><th>client"
                f"</th><th>ε</th><th>steps</th><th>segments</th></tr>{rows}</table></details>"
            )
    if "user" in privacy:
        u = privacy["user"]
        parts.append(
            f"<p><b>User-level DP</b> (Flower's DP wrappers): each client's whole data is protected by "
            f"(ε = {u['epsilon']:.3f}, δ = {u['delta']:g}) after {u['rounds']} releases, {u['clipping']} clipping "
            f"at norm {u.get('clipping_norm')}, noise multiplier {u.get('noise_multiplier')}, accountant "
            f"{html.escape(str(u.get('accountant')))}.</p>"
        )
    outside = privacy.get("outside_budget", [])
    norm = config.get("normalize", "?")
    inside = not any("normalize" in str(o) for o in outside)
    parts.append(
        f"<p><b>Normalisation</b> (<code>normalize = {html.escape(str(norm))}</code>): its statistics are "
        + (
            "read from no private data, or inside the budget."
            if inside
            else "<b>outside the budget</b>: see the red box below."
        )
        + "</p>"
    )
    parts.append(
        "<p><b>Randomness:</b> Opacus' <code>secure_mode</code> is off (it needs torchcsprng): the DP noise comes "
        "from torch's pseudo-random generator, seeded per client and round. The guarantee holds against anyone "
        "who cannot predict that generator; a party that knows the seeds could remove the noise. "
        f"<code>dp-noise-seed = {html.escape(str(config.get('dp-noise-seed', '?')))}</code> (docs/privacy.md).</p>"
    )
    secagg = summary.get("secure_aggregation")
    parts.append(
        "<p><b>Secure aggregation:</b> "
        + (
            f"SecAgg+ with {secagg.get('shares')} shares and threshold {secagg.get('threshold')}: the server saw only "
            "each round's aggregate of the clients' updates (table below)."
            if secagg
            else "none: the server saw every client's update."
        )
        + "</p>"
    )
    return f'<div class="statement">{"".join(parts)}</div>'


def _provenance_rows(prov: dict[str, Any]) -> list[tuple[str, Any]]:
    versions = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())
    return [
        ("versions", f"{versions}, Python {prov.get('python', '?')}"),
        ("git commit", prov.get("git_commit") or "not a git checkout"),
        ("date", prov.get("date")),
        ("host", f"{prov.get('host')} ({prov.get('platform')})"),
        ("command line", prov.get("command")),
    ]


def _config_html(config: dict[str, Any]) -> str:
    """The keys that differ from the defaults first, then the whole table folded."""
    from fedtrain.config import RunConfig  # the defaults

    defaults = RunConfig().to_flat()
    changed = sorted((k, v) for k, v in config.items() if k in defaults and defaults[k] != v)
    first = _table(changed) if changed else "<p>Every key has its default value.</p>"
    return (f"<h3>Keys that differ from the defaults</h3>{first}<details><summary>every key ({len(config)})"
            f"</summary>{_table(sorted(config.items()))}</details>")  # fmt: skip


def _figures(images: list[Path], stems: tuple[str, ...]) -> str:
    return "".join(
        f'<figure><img alt="{img.stem}" src="{png_data_uri(img)}"></figure>'
        for img in images
        if img.is_file() and img.stem in stems
    )


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
    sections = [
        ("Data", ("label_distribution",)),
        ("Pretraining", ("reconstruction", "filters")),
        ("Training", ("accuracy", "loss", "epsilon")),
    ]
    known = {stem for _, stems in sections for stem in stems} | {"export_size_accuracy"}
    plots = ""
    for title, stems in sections:
        figs = _figures(images, stems)
        if figs:
            note = _pretraining_note(summary) if title == "Pretraining" else ""
            plots += f'<h2>{title}</h2>{note}<div class="grid">{figs}</div>'
    others = _figures(images, tuple(img.stem for img in images if img.stem not in known))
    if others:
        plots += f'<h2>Other plots</h2><div class="grid">{others}</div>'
    if export_html:
        export_html += f'<div class="grid">{_figures(images, ("export_size_accuracy",))}</div>'
    provenance = summary.get("provenance")
    provenance_html = f"<h2>Provenance</h2>{_table(_provenance_rows(provenance))}" if provenance else ""
    name = html.escape(path.parent.name)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fedtrain run {name}</title>
<style>{_STYLE}</style></head><body>
<h1>fedtrain run <code>{name}</code></h1>{_headline(summary)}{warnings}
<h2>Privacy statement</h2>{_privacy_statement(summary)}{_table(_privacy_rows(privacy))}{outside}
{provenance_html}
<h2>Summary</h2>{_table(overview)}
<h2>Phases</h2><table><tr><th>phase</th><th>rounds</th><th>status</th></tr>{phases}</table>
{plots}{secagg_html}{export_html}
<h2>Configuration</h2>{_config_html(summary.get("config", {}))}
</body></html>
"""
    from fedtrain.results.run_folder import atomic_write

    atomic_write(path, page.encode("utf-8"))
    return path
