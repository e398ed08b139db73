"""``fedtrain predict MODEL INPUT``: classify a file of raw features, an image or a folder of images.

Registered on the ``fedtrain`` command by :func:`add_predict_parser`; ``python -m fedtrain.edge predict`` runs it
on its own. Either way it imports only numpy and onnxruntime (and Pillow for images).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from fedtrain.edge.errors import EdgeInputError
from fedtrain.edge.inputs import read_input
from fedtrain.edge.runtime import EdgeModel

__all__ = ["add_fetch_parser", "add_predict_parser", "cmd_fetch", "cmd_predict"]


def add_fetch_parser(subparsers: Any) -> None:
    """Register ``fetch`` (copy a run's published models, verified) and ``verify`` (check a folder of them)."""
    p = subparsers.add_parser(
        "fetch",
        help="copy a run's published models (a folder or its http(s) URL) to this device, checked against the manifest",
    )
    p.add_argument("source", metavar="SOURCE", help="the run's export/ folder, or its URL (served over http(s))")
    p.add_argument("dest", metavar="DEST", help="folder on this device for the models and the manifest")
    p.add_argument("--formats", default="", help="comma-separated variants to keep, e.g. int8-static (default all)")
    p.set_defaults(func=cmd_fetch)
    v = subparsers.add_parser("verify", help="check every model of a folder against its manifest.json")
    v.add_argument("folder", metavar="FOLDER", help="a folder with manifest.json (an export/ or a fetched copy)")
    v.set_defaults(func=cmd_verify)


def cmd_fetch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedtrain.edge.manifest import fetch

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    for path in fetch(args.source, Path(args.dest), formats):
        print(f"verified {path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedtrain.edge.manifest import verify

    for path in verify(Path(args.folder)):
        print(f"verified {path}")
    return 0


def add_predict_parser(subparsers: Any) -> None:
    """Register the ``predict`` subcommand on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser(
        "predict",
        help="classify raw inputs with an exported model (.onnx/.ort), on numpy and onnxruntime only",
        description="Classify raw inputs with an exported fedtrain model; prints the top-k labels of each sample "
        "and, where the input has ground truth, the accuracy.",
    )
    p.add_argument("model", metavar="MODEL", help="an exported model, .onnx or .ort")
    p.add_argument(
        "input",
        metavar="INPUT",
        help="a .npz (array 'x' or its only array; optional 'y'), a .csv (numeric columns; a 'label' column is the "
        "ground truth), an image, or a folder of images (in <label>/ subfolders: the ground truth)",
    )
    p.add_argument("--top-k", type=int, default=1, metavar="K", help="labels to print per sample (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    p.add_argument("--label-column", default="label", help="the CSV's ground-truth column (default 'label')")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1: low power)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``predict``; input errors raise :class:`fedtrain.edge.EdgeError` (a ``FedtrainError``)."""
    if args.top_k < 1:
        raise EdgeInputError(f"--top-k must be >= 1, got {args.top_k}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = EdgeModel.load(args.model, threads=args.threads)
        samples = read_input(args.input, model.input_shape, model.labels, label_column=args.label_column)
        try:
            top = model.top_k(samples.x, args.top_k)
        except EdgeInputError as err:  # the checks know the array, not the file it came from
            raise EdgeInputError(f"{Path(args.input).name}: {err}") from None
    for w in caught:  # one line each, like the errors, not Python's file:line form
        print(f"warning: {w.message}", file=sys.stderr)
    truth = samples.truth
    correct = sum(t == row[0][0] for t, row in zip(truth, top, strict=True)) if truth is not None else 0
    if args.json:
        doc: dict[str, Any] = {
            "model": str(args.model),
            "input": str(args.input),
            "variant": model.card.variant,
            "predictions": [
                {"sample": name, "top_k": [{"label": lab, "probability": p} for lab, p in row]}
                | ({"true": truth[i]} if truth is not None else {})
                for i, (name, row) in enumerate(zip(samples.names, top, strict=True))
            ],
        }
        if truth is not None:
            doc |= {"accuracy": correct / len(truth), "correct": correct, "samples": len(truth)}
        print(json.dumps(doc, indent=2))
        return 0
    width = max(len(n) for n in samples.names)
    for i, (name, row) in enumerate(zip(samples.names, top, strict=True)):
        preds = "  ".join(f"{lab} {p:.4f}" for lab, p in row)
        mark = "" if truth is None else f"  true {truth[i]}" + ("" if truth[i] == row[0][0] else "  (wrong)")
        print(f"{name:<{width}}  {preds}{mark}")
    if truth is not None:
        print(f"accuracy {correct / len(truth):.4f} ({correct}/{len(truth)})")
    return 0
