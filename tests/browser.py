"""Headless Chromium driven by Playwright: what the browser tests and docs/make_screenshots.py share."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "no Chromium: install Debian's chromium package"
# Flags a sandboxed CI machine needs (no network, no GPU, often root).
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]  # fmt: skip
IMAGES_JS = "els => els.map(e => [e.alt, e.complete && e.naturalWidth])"  # [alt, loaded width] of every <img>


@contextmanager
def open_page(path: Path, width: int, height: int) -> Iterator[tuple[Any, list[str]]]:
    """``path`` opened in headless Chromium; yields the page and the list its console errors collect in."""
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        raise RuntimeError(NO_CHROMIUM)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            yield page, errors
        finally:
            browser.close()
