"""The sweep page: ``accuracy_vs_epsilon.png`` and ``sweep.html`` of a sweep folder.

Every run is a dot on the plot, and the page's image map makes each dot a link to that run's
``report.html``. Links are relative to the sweep folder, so the folder can be moved or shared.
``epsilon = inf`` (no sample-level DP) has no place on a log axis: its runs sit at a separate
position right of the largest finite epsilon, ticked "∞", with a dashed reference line.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["PlotInfo", "axis_limits", "format_accuracy", "plot_sweep", "report_link", "write_sweep_html"]

_X_PAD = 1.8  # log-axis margin factor on each side: the outermost points keep room from the frame
_INF_GAP = 4.0  # the inf position sits this factor right of the largest finite epsilon
_FIGSIZE, _DPI = (7.0, 4.2), 100
Limits = tuple[float, float]


@dataclass
class Area:
    """One clickable circle of the image map, in image pixels (origin top left)."""

    x: float
    y: float
    href: str
    title: str


@dataclass
class PlotInfo:
    """What the plot drew: axis limits (data units) and the clickable areas, for the page and tests."""

    xlim: Limits
    ylim: Limits
    width: int
    height: int
    inf_x: float | None = None
    areas: list[Area] = field(default_factory=list)


def report_link(run_dir: str | Path, folder: Path) -> str | None:
    """``runs/<name>/report.html`` relative to the sweep ``folder`` (URL-quoted); None without a report."""
    report = Path(run_dir) / "report.html"
    if not report.is_file():
        return None
    try:
        rel = report.relative_to(folder)
    except ValueError:  # a run outside the sweep folder: link it absolutely rather than not at all
        return report.resolve().as_uri()
    return quote(rel.as_posix())


def format_accuracy(mean: float, std: float | None, n: int) -> str:
    """``0.8123 ± 0.0100 (n=3)``; a single run has no spread: ``0.8123 (n=1)``."""
    if n > 1 and std is not None:
        return f"{mean:.4f} ± {std:.4f} (n={n})"
    return f"{mean:.4f} (n={n})"


def axis_limits(xs: list[float], lows: list[float], highs: list[float]) -> tuple[Limits, Limits]:
    """Log-x and linear-y limits that strictly contain every point and its error bar, with margins.

    Parameters
    ----------
    xs
        Positive x positions (finite epsilons and the inf position).
    lows, highs
        The lowest and highest y each mark reaches (a mean minus / plus its std, or a single run's accuracy).
    """
    lo_y, hi_y = min(lows), max(highs)
    pad = max(0.08 * (hi_y - lo_y), 0.02)  # one value, or all equal, still gets room
    return (min(xs) / _X_PAD, max(xs) * _X_PAD), (lo_y - pad, hi_y + pad)


def plot_sweep(rows: list[dict[str, Any]], runs: list[dict[str, Any]], folder: Path, path: Path) -> PlotInfo:
    """Draw accuracy against target epsilon to ``path``; return the limits and each run's link area.

    Parameters
    ----------
    rows
        One aggregate row per target epsilon (``target_epsilon``, ``accuracy_mean``, ``accuracy_std``, ``runs``).
    runs
        Every run (``target_epsilon``, ``accuracy``, ``run_dir``, ``seed``).
    folder
        The sweep folder, which links are relative to.
    path
        Where the PNG goes.
    """
    from fedtrain.results.plots import pyplot

    plt = pyplot()
    finite = [r for r in rows if r["target_epsilon"] != "inf"]
    inf_rows = [r for r in rows if r["target_epsilon"] == "inf"]
    max_eps = max((float(r["target_epsilon"]) for r in finite), default=1.0)
    inf_x = max_eps * _INF_GAP if inf_rows else None

    def x_of(eps: float | str) -> float:
        return inf_x if eps == "inf" and inf_x is not None else float(eps)

    fig, ax = plt.subplots(figsize=_FIGSIZE, dpi=_DPI)
    if finite:
        ax.errorbar(
            [x_of(r["target_epsilon"]) for r in finite],
            [r["accuracy_mean"] for r in finite],
            yerr=[r["accuracy_std"] or 0.0 for r in finite],
            marker="o", markersize=7, capsize=3, label="sample-level DP (mean)", zorder=2,
        )  # fmt: skip
    for r in inf_rows:
        ax.axhline(r["accuracy_mean"], color="grey", linestyle="--", linewidth=1, label="no DP (ε = ∞)", zorder=1)
        ax.errorbar([inf_x], [r["accuracy_mean"]], yerr=[r["accuracy_std"] or 0.0], marker="s", markersize=7,
                    capsize=3, color="grey", zorder=2)  # fmt: skip
    run_xy = [(x_of(r["target_epsilon"]), float(r["accuracy"]), r) for r in runs]
    ax.scatter([x for x, _, _ in run_xy], [y for _, y, _ in run_xy], s=18, color="black", alpha=0.55,
               label="one run (click: its report)", zorder=3)  # fmt: skip
    run_ys = [y for _, y, _ in run_xy]
    xlim, ylim = axis_limits(
        [x_of(r["target_epsilon"]) for r in rows],
        [r["accuracy_mean"] - (r["accuracy_std"] or 0.0) for r in rows] + run_ys,
        [r["accuracy_mean"] + (r["accuracy_std"] or 0.0) for r in rows] + run_ys,
    )
    ax.set_xscale("log")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ticks = [x_of(r["target_epsilon"]) for r in rows]
    ax.set_xticks(ticks, [("∞" if r["target_epsilon"] == "inf" else f"{float(r['target_epsilon']):g}") for r in rows])
    ax.minorticks_off()
    ax.set_xlabel("target ε (per client, whole run)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against privacy budget")
    ax.grid(alpha=0.3)
    # Below the axes, never over a point (inside, "best" still covered the inf point).
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize="small", frameon=False)
    fig.tight_layout()
    fig.canvas.draw()  # the layout is final: data -> pixel transforms below match the saved image
    width, height = (round(float(v)) for v in fig.get_size_inches() * fig.dpi)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    info = PlotInfo(xlim=(x0, x1), ylim=(y0, y1), width=width, height=height, inf_x=inf_x)
    for x, y, r in run_xy:
        href = report_link(r["run_dir"], folder)
        if href is None:
            continue
        px, py = ax.transData.transform((x, y))
        eps = "∞" if r["target_epsilon"] == "inf" else f"{float(r['target_epsilon']):g}"
        info.areas.append(Area(float(px), float(height - py), href, f"ε={eps}, seed {r['seed']}: {r['accuracy']:.4f}"))
    from fedtrain.results.plots import save_figure

    save_figure(fig, path)
    plt.close(fig)
    return info


def write_sweep_html(payload: dict[str, Any], folder: Path, image: Path, info: PlotInfo) -> Path:
    """Write ``sweep.html``: the summary line, one table row per epsilon linking its runs' reports, the plot."""
    from fedtrain.results.report import png_data_uri

    esc = html.escape
    runs_by_eps: dict[str, list[dict[str, Any]]] = {}
    for r in payload["runs"]:
        runs_by_eps.setdefault(str(r["target_epsilon"]), []).append(r)
    body = []
    for row in payload["rows"]:
        links = []
        for r in runs_by_eps.get(str(row["target_epsilon"]), []):
            href = report_link(r["run_dir"], folder)
            label = f"seed {r['seed']}: {r['accuracy']:.4f}"
            links.append(f'<a href="{esc(href)}">{esc(label)}</a>' if href else esc(label))
        eps = "∞ (no DP)" if row["target_epsilon"] == "inf" else f"{float(row['target_epsilon']):g}"
        spent = "∞" if row["spent_epsilon"] == "inf" else f"{float(row['spent_epsilon']):.3g}"
        acc = format_accuracy(row["accuracy_mean"], row["accuracy_std"], row["runs"])
        body.append(
            f"<tr><td>{esc(eps)}</td><td>{esc(spent)}</td><td>{esc(acc)}</td><td>{'<br>'.join(links)}</td></tr>"
        )
    areas = "".join(
        f'<area shape="circle" coords="{a.x:.0f},{a.y:.0f},8" href="{esc(a.href)}" alt="{esc(a.title)}" '
        f'title="{esc(a.title)}">'
        for a in info.areas
    )
    (path := folder / "sweep.html").write_text(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>fedtrain privacy sweep</title>
<style>body{{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;padding:0 1em}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}table{{border-collapse:collapse}}
img{{display:block;margin-top:1.5em}}</style></head>
<body><h1>Privacy-budget sweep</h1>
<p>δ = {esc(str(payload["delta"]))}, accountant = {esc(str(payload["accountant"]))}, {payload["seeds"]} seed(s)
per ε, {payload["workers"]} parallel process(es), {payload["wall_seconds"]} s. Each run's report is one click away:
in the table, or on its dot in the plot.</p>
<table><tr><th>target ε</th><th>spent ε (max over clients)</th><th>test accuracy</th><th>runs</th></tr>
{"".join(body)}</table>
<img alt="accuracy against epsilon" src="{png_data_uri(image)}" width="{info.width}" height="{info.height}"
usemap="#points"><map name="points">{areas}</map>
</body></html>
""",
        encoding="utf-8",
    )
    return path
