"""The nightly report, opened in a real headless browser (Debian's Chromium, driven by
Playwright): every image must load; a screenshot is kept as a test artifact
(`MOECOMM_TEST_ARTIFACTS`, default `test-artifacts/` at the repository root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moecomm_tasks import alerts, report
from moecomm_tasks.cli import main
from moecomm_tasks.errors import MoecommError
from live.browser import chromium

pytestmark = pytest.mark.integration
ARTIFACTS = Path(os.environ.get("MOECOMM_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))


def _open(page_path: Path, screenshot: Path) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"], timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(page_path.resolve().as_uri(), wait_until="load", timeout=60_000)
            images = page.evaluate("Array.from(document.images).map(i => ({src: i.getAttribute('src'), "
                                   "ok: i.complete && i.naturalWidth > 0}))")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            return {"title": page.title(), "images": images, "text": page.inner_text("body")}
        finally:
            browser.close()


def test_report_opens_in_a_browser_with_every_image(engine, weeks_of_nights, tmp_path):
    raised = alerts.run_detection(engine)
    assert any(a.op == "combine" and a.local_batch_size == 1024 for a in raised)
    last = weeks_of_nights[-1]
    index = report.write_report(engine, tmp_path / "report")
    seen = _open(index, ARTIFACTS / "report.png")
    assert seen["title"] == f"moecomm nightly report: {last}"
    # 8 history plots (2 profiles x 2 backends x 2 ops), the alerts' plots, 4 backend comparisons.
    sources = [i["src"] for i in seen["images"]]
    assert all(i["ok"] for i in seen["images"]), [i for i in seen["images"] if not i["ok"]]
    assert sum(s.startswith("history_") for s in sources) == 8
    assert sum(s.startswith("backends_") for s in sources) == 4
    assert sum(s.startswith("alert_") for s in sources) >= 1
    assert "TORCH_ALLTOALL" in seen["text"] and "+12" in seen["text"]  # the regressed series leads the table
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_report_of_an_earlier_run_and_errors(engine, weeks_of_nights, tmp_path, database_url, monkeypatch):
    index = report.write_report(engine, tmp_path / "early", weeks_of_nights[3])
    assert weeks_of_nights[3] in index.read_text() and "None." in index.read_text()  # no alerts yet
    with pytest.raises(MoecommError, match="no run"):
        report.write_report(engine, tmp_path / "x", "no-such-run")
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    assert main(["report", "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "index.html").exists()
