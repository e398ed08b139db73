"""Run folder, metrics log, checkpoints, plots and the HTML report."""

from fedtrain.results.plots import plot_curves, plot_export, plot_filters, plot_label_distribution
from fedtrain.results.report import write_report
from fedtrain.results.run_folder import CHECKPOINT_FORMAT, RunFolder, load_checkpoint_file

__all__ = [
    "CHECKPOINT_FORMAT",
    "RunFolder",
    "load_checkpoint_file",
    "plot_curves",
    "plot_export",
    "plot_filters",
    "plot_label_distribution",
    "write_report",
]
