"""Regenerate docs/img/report.png, the report shown in the README's tour: `python docs/make_screenshots.py`.

It runs a short private federation (pretraining, sample-level DP fine-tuning, export) and photographs the top of
its report.html in headless Chromium (Debian's `chromium`, driven by Playwright), so the picture always shows
what the current code writes.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OVERRIDES = {
    "plan": "pretrain,finetune,export", "dp-level": "sample", "num-rounds": 10, "pretrain-rounds": 3,
    "export-formats": "fp32,int8-static", "export-ort": False, "export-latency-calls": 200, "progress": False,
}  # fmt: skip
_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


def main() -> None:
    from playwright.sync_api import sync_playwright

    from fedtrain.config import load_config
    from fedtrain.runtime import run_inprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: no Chromium; install Debian's chromium package")
    with tempfile.TemporaryDirectory() as tmp:
        run = run_inprocess(load_config(overrides={**OVERRIDES, "out-dir": tmp}))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 1250})
            page.goto((run / "report.html").as_uri())
            out = ROOT / "docs" / "img" / "report.png"
            page.screenshot(path=str(out))  # the top of the page: headline, privacy statement, provenance
            browser.close()
    print(out)


if __name__ == "__main__":
    main()
