"""report.html in a real browser: headless Chromium (Debian's package) driven by Playwright.

Skipped, with the reason, where Chromium or Playwright is missing; `.ci/run` installs Chromium.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedtrain.runtime import run_inprocess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: install Debian's chromium package")
# Flags a sandboxed CI machine needs (no network, no GPU, often root).
_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


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
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((dp_run / "report.html").as_uri())
            assert page.title() == f"fedtrain run {dp_run.name}"
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth])")
            headline = page.inner_text(".headline")
            statement = page.inner_text(".statement")
            page.screenshot(path=str(dp_run / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    names = {alt for alt, _ in images}
    assert {"reconstruction", "filters", "accuracy", "loss", "epsilon", "export_size_accuracy"} <= names
    assert all(width and width > 0 for _, width in images), images
    assert "final test accuracy" in headline and "ε" in headline and "int8-static ONNX" in headline
    assert "Sample-level DP" in statement and "secure_mode" in statement
    assert (dp_run / "report.png").stat().st_size > 10_000
