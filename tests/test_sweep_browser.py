"""sweep.html in a real browser: headless Chromium (Debian's package) driven by Playwright.

A tiny sweep (two epsilons, one seed) is opened as a file; the page must render, every image load, no console
error appear, every link to a run report resolve to a file in the sweep folder, and no "std 0" be shown.
Skipped, with the reason, where Chromium or Playwright is missing; `.ci/run` installs Chromium.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from browser import CHROMIUM, IMAGES_JS, NO_CHROMIUM, open_page

from fedtrain.cli import main

pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)


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
    with open_page(sweep_folder / "sweep.html", 1000, 900) as (page, errors):
        title = page.title()
        images = page.eval_on_selector_all("img", IMAGES_JS)
        # The resolved href of every table link and image-map area (the browser resolves the relative URL).
        table_links = page.eval_on_selector_all("table a", "els => els.map(e => e.href)")
        area_links = page.eval_on_selector_all("map area", "els => els.map(e => e.href)")
        text = page.inner_text("body")
        page.screenshot(path=str(sweep_folder / "sweep.png"), full_page=True)
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
