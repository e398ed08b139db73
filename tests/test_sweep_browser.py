"""sweep.html in a real browser: headless Chromium (Debian's package) driven by Playwright.

A tiny sweep (two epsilons, one seed) is opened as a file; the page must render, every image load, no console
error appear, every link to a run report resolve to a file in the sweep folder, and no "std 0" be shown.
Skipped, with the reason, where Chromium or Playwright is missing; `.ci/run` installs Chromium.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from fedtrain.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: install Debian's chromium package")
# Flags a sandboxed CI machine needs (no network, no GPU, often root); as in test_report_browser.py.
_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def sweep_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweeps")
    code = main([
        "sweep", "--epsilons", "1,inf", "--seeds", "1", "--jobs", "1", "--out", str(out),
        "--run-config", "num-clients=3 min-clients=2 num-rounds=1 hidden-sizes=8 local-epochs=1 plan=finetune",
    ])  # fmt: skip
    assert code == 0
    (folder,) = out.glob("sweep-*")
    return folder


def test_sweep_page_renders_links_every_report_and_shows_no_zero_std(sweep_folder):
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((sweep_folder / "sweep.html").as_uri())
            title = page.title()
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth])")
            # The resolved href of every table link and image-map area (the browser resolves the relative URL).
            table_links = page.eval_on_selector_all("table a", "els => els.map(e => e.href)")
            area_links = page.eval_on_selector_all("map area", "els => els.map(e => e.href)")
            text = page.inner_text("body")
            page.screenshot(path=str(sweep_folder / "sweep.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert title == "fedtrain privacy sweep"
    assert images and all(width and width > 0 for _, width in images), images
    # One run per epsilon: one link per table row and one clickable dot per run, each to a report that exists.
    assert len(table_links) == 2 and len(area_links) == 2, (table_links, area_links)
    for href in table_links + area_links:
        url = urlparse(href)
        target = Path(unquote(url.path))
        assert url.scheme == "file" and target.name == "report.html" and target.is_file(), href
        assert target.is_relative_to(sweep_folder)
    assert sorted(table_links) == sorted(area_links)
    assert "std 0" not in text and "± 0.000" not in text and "n=1" in text
    assert (sweep_folder / "sweep.png").stat().st_size > 10_000
