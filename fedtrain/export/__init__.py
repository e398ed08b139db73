"""Export a trained model as compressed ONNX files a device can run without fedtrain or torch."""

from fedtrain.export.exporter import EXPORT_FORMAT, ExportReport, ExportSubject, export_model
from fedtrain.export.run_export import EXPORT_DIR, export_run, subject_for_run

__all__ = [
    "EXPORT_DIR",
    "EXPORT_FORMAT",
    "ExportReport",
    "ExportSubject",
    "export_model",
    "export_run",
    "subject_for_run",
]
