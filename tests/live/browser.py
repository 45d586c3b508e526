"""Headless Chromium (Debian's, at /usr/bin/chromium or on the PATH), driven by Playwright; never a
downloaded browser."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("MOECOMM_REQUIRE_BROWSER") == "1":  # CI installs it: never skip there
            pytest.fail("Chromium is required (apt-get install chromium) and was not found")
        pytest.skip("Chromium is not installed (apt-get install chromium); CI runs this test")
    return found


def screenshot(url: str, path: Path, *, cookies: list[dict] | None = None, wait_for_text: str | None = None,
               size: tuple[int, int] = (1400, 900), timeout_s: float = 60) -> str:
    """Open `url`, wait until `wait_for_text` shows (if given), save a screenshot to `path`; return
    the page's visible text."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=FLAGS, timeout=timeout_s * 1000)
        try:
            context = browser.new_context(viewport={"width": size[0], "height": size[1]})
            if cookies:
                context.add_cookies(cookies)
            page = context.new_page()
            page.goto(url, wait_until="networkidle", timeout=timeout_s * 1000)
            if wait_for_text:
                page.get_by_text(wait_for_text).first.wait_for(timeout=timeout_s * 1000)
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path))
            return page.inner_text("body")
        finally:
            browser.close()
