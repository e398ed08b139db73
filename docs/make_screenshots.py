"""Regenerate docs/img/report.png, the report shown in the README's tour: `python docs/make_screenshots.py`.

It runs the main job (`fedtrain run`'s preset `main`: pretraining, sample-level DP fine-tuning, SecAgg+, export)
and photographs the top of its report.html in headless Chromium (Debian's `chromium`, driven by Playwright), so
the picture always shows what the current code writes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/browser.py: Chromium and its flags, shared with the browser tests

OVERRIDES = {"export-ort": False, "export-latency-calls": 200, "progress": False}  # what the picture does not show


def main() -> None:
    from browser import CHROMIUM, NO_CHROMIUM, open_page

    from fedtrain.config import load_config
    from fedtrain.config.presets import preset
    from fedtrain.runtime import run_inprocess

    if CHROMIUM is None:
        sys.exit(f"error: {NO_CHROMIUM}")
    out = ROOT / "docs" / "img" / "report.png"
    with tempfile.TemporaryDirectory() as tmp:
        run = run_inprocess(load_config(preset=preset("main"), overrides={**OVERRIDES, "out-dir": tmp}))
        with open_page(run / "report.html", 1000, 1250) as (page, _):
            page.screenshot(path=str(out))  # the top of the page: headline, privacy statement, provenance
    print(out)


if __name__ == "__main__":
    main()
