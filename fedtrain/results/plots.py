"""PNG plots of a run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["plot_curves", "plot_export", "plot_filters", "plot_label_distribution", "pyplot", "save_figure"]


def save_figure(fig: Any, path: Path) -> None:
    """PNG bytes first, then one atomic write: a killed run never leaves half an image."""
    import io

    from fedtrain.results.run_folder import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())


def pyplot() -> ModuleType:
    """Matplotlib's pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers, CI or devices
    import matplotlib.pyplot as plt

    return plt


def _save_line_plot(plt, fig, ax, path: Path, ylabel: str, title: str, xlabel: str = "round (all phases)") -> Path:
    """Label, grid, legend and save a line plot (integer round ticks); close the figure."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def _series(records: list[dict[str, Any]], key: str) -> list[float] | None:
    """``key`` per record, missing, null and non-finite values as NaN (gaps); None when no value is finite."""
    ys = [float(y) if isinstance(y := r.get(key), int | float) and np.isfinite(y) else np.nan for r in records]
    return ys if any(np.isfinite(ys)) else None


def plot_curves(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``accuracy.png`` and ``loss.png`` against global round, one line per source."""
    plt = pyplot()
    rounds = list(range(1, len(records) + 1))
    written = []
    for metric, title in (("accuracy", "Accuracy"), ("loss", "Loss")):
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        for source, label in (
            ("test", "central test"),
            ("val", "central validation"),
            ("client_eval", "client evaluation"),
            ("train", "client training"),
        ):
            ys = _series(records, f"{source}_{metric}")
            if ys is not None:  # e.g. no validation split: every val_* is null, and there is no line
                ax.plot(rounds, ys, marker=".", label=label)
        written.append(
            _save_line_plot(plt, fig, ax, out_dir / f"{metric}.png", title.lower(), f"{title} against round")
        )
    if any("epsilon_max" in r or "user_epsilon" in r for r in records):
        written.append(_plot_epsilon(plt, records, rounds, out_dir))
    if any("recon_error" in r for r in records):
        written.append(_plot_reconstruction(plt, records, out_dir))
    return written


def _plot_reconstruction(plt, records: list[dict[str, Any]], out_dir: Path) -> Path:
    """``reconstruction.png``: central reconstruction error against round, one line per layer."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for layer in sorted({r["layer"] for r in records if "recon_error" in r}):
        rows = [r for r in records if r.get("layer") == layer and "recon_error" in r]
        ax.plot([r["round"] for r in rows], [r["recon_error"] for r in rows], marker=".", label=f"layer {layer}")
    return _save_line_plot(
        plt, fig, ax, out_dir / "reconstruction.png", "reconstruction error (test)", "Layer-wise pretraining",
        xlabel="pretraining round of the layer",
    )  # fmt: skip


def plot_filters(weight: np.ndarray, image_shape: tuple[int, int], out_dir: Path, max_filters: int = 64) -> Path:
    """``filters.png``: rows of the first layer's weight drawn as images (e.g. 8x8 for digits)."""
    plt = pyplot()
    n = min(len(weight), max_filters)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8), dpi=100, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            w = weight[i].reshape(image_shape)
            lim = float(np.abs(w).max()) or 1.0
            ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.suptitle("First-layer filters after pretraining", fontsize=9)
    fig.tight_layout()
    path = out_dir / "filters.png"
    save_figure(fig, path)
    plt.close(fig)
    return path


def _plot_epsilon(plt, records: list[dict[str, Any]], rounds: list[int], out_dir: Path) -> Path:
    """``epsilon.png``: privacy spent against round (sample-level max/mean/min, user-level)."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for key, label in (("epsilon_max", "sample-level, max over clients"), ("epsilon_mean", "sample-level, mean"),
                       ("epsilon_min", "sample-level, min"), ("user_epsilon", "user-level")):  # fmt: skip
        ys = _series(records, key)
        if ys is not None:
            ax.plot(rounds, ys, marker=".", label=label)
    return _save_line_plot(plt, fig, ax, out_dir / "epsilon.png", "epsilon spent", "Privacy spent against round")


def plot_label_distribution(counts: np.ndarray, classes: tuple[str, ...], out_dir: Path) -> Path:
    """Stacked bars: training samples per class for each client."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=100)
    bottom = np.zeros(counts.shape[0])
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for k, name in enumerate(classes):
        ax.bar(range(counts.shape[0]), counts[:, k], bottom=bottom, color=cmap(k % cmap.N), label=name)
        bottom += counts[:, k]
    ax.set_xlabel("client")
    ax.set_ylabel("training samples")
    ax.set_title("Label distribution per client")
    if len(classes) <= 20:
        ax.legend(title="class", fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    path = out_dir / "label_distribution.png"
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_export(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """``export_size_accuracy.png``: file size against test accuracy, one point per exported file."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        if row.get("accuracy") is None:
            continue
        marker = "s" if row["format"].endswith("(.ort)") else "o"
        ax.scatter(row["bytes"] / 1000, 100 * row["accuracy"], marker=marker, alpha=0.8 if row["written"] else 0.3)
        label = row["format"] + ("" if row["written"] else " (refused)")
        point = (row["bytes"] / 1000, 100 * row["accuracy"])
        ax.annotate(label, point, fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("file size (kB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Exported models: size against accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "export_size_accuracy.png"
    save_figure(fig, path)
    plt.close(fig)
    return path
