"""report.html in a real browser: headless Chromium (Debian's package) driven by Playwright.

Skipped, with the reason, where Chromium or Playwright is missing; `.ci/run` installs Chromium.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import CHROMIUM, IMAGES_JS, NO_CHROMIUM, open_page

from fedtrain.runtime import run_inprocess

pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory) -> Path:
    from fedtrain.config import load_config

    cfg = load_config(
        overrides={
            "num-clients": 3,
            "min-clients": 2,
            "num-rounds": 2,
            "pretrain-rounds": 1,
            "hidden-sizes": "32",
            "local-epochs": 1,
            "dp-level": "sample",
            "plan": "pretrain,finetune,export",
            "export-formats": "fp32,int8-static",
            "export-ort": False,
            "export-latency-calls": 10,
            "progress": False,
            "out-dir": str(tmp_path_factory.mktemp("runs")),
        }
    )
    return run_inprocess(cfg)


def test_report_renders_with_every_image_and_no_console_error(dp_run):
    with open_page(dp_run / "report.html", 1100, 1400) as (page, errors):
        assert page.title() == f"fedtrain run {dp_run.name}"
        images = page.eval_on_selector_all("img", IMAGES_JS)
        headline = page.inner_text(".headline")
        statement = page.inner_text(".statement")
        page.screenshot(path=str(dp_run / "report.png"), full_page=True)
    assert errors == []
    names = {alt for alt, _ in images}
    assert {"reconstruction", "filters", "accuracy", "loss", "epsilon", "export_size_accuracy"} <= names
    assert all(width and width > 0 for _, width in images), images
    assert "final test accuracy" in headline and "ε" in headline and "int8-static ONNX" in headline
    assert "Sample-level DP" in statement and "secure_mode" in statement
    assert (dp_run / "report.png").stat().st_size > 10_000
