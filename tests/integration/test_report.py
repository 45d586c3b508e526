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
                                   "ok: i.complete && i.naturalWidth > 0, top: i.getBoundingClientRect().top, "
                                   "width: i.getBoundingClientRect().width}))")
            layout = page.evaluate("({page: document.documentElement.clientWidth, "
                                   "scroll: document.documentElement.scrollWidth, "
                                   "table: document.querySelector('table').getBoundingClientRect().width})")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            return {"title": page.title(), "images": images, "text": page.inner_text("body"), "layout": layout}
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
    # The page's width is used: the table spans it, plots sit side by side, nothing scrolls sideways.
    layout = seen["layout"]
    assert layout["table"] > 0.9 * layout["page"] and layout["scroll"] <= layout["page"], layout
    history = [i for i in seen["images"] if i["src"].startswith("history_")]
    assert history[0]["top"] == history[1]["top"] and history[0]["width"] > 500, history[:2]
    # Each value with its spread; four nights after the step every baseline has caught up: nothing marked.
    assert "±" in seen["text"]
    assert not [line for line in seen["text"].splitlines() if line.rstrip().endswith("%*")]


def test_report_plots_label_token_axes_with_the_sizes_and_fit_their_titles():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    ax.plot([32, 64, 128], [1.0, 2.0, 3.0])
    report._token_axis(ax, [64, 32, 128, 64])
    long_name = "NVLINK_TWO_SIDED_WITH_A_VERY_LONG_BACKEND_NAME [cuda_graph_kernel_spans graph pdl pr piw lpc]"
    report._title(ax, f"deepseek_v3 EP16 {long_name} combine: backends on scheduled__2026-12-01T02:00:00+00:00")
    fig.tight_layout()
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "64", "128"]
    title = ax.title.get_window_extent(fig.canvas.get_renderer())
    figure = fig.bbox
    assert title.x0 >= figure.x0 and title.x1 <= figure.x1 and title.y1 <= figure.y1, (title, figure)
    plt.close(fig)
    # Sizes that crowd the right of a log axis (128, 256, ..., 2048) are labelled sparsely.
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    report._token_axis(ax, [128 * i for i in range(1, 17)])
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:3] == ["128", "256", "384"] and len(labels) <= 9, labels
    boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in ax.get_xticklabels()]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), "tick labels overlap"
    plt.close(fig)


def test_report_of_an_earlier_run_and_errors(engine, weeks_of_nights, tmp_path, database_url, monkeypatch):
    index = report.write_report(engine, tmp_path / "early", weeks_of_nights[3])
    assert weeks_of_nights[3] in index.read_text() and "None." in index.read_text()  # no alerts yet
    # The first slower night: only the regressed series moved beyond its spreads, and is marked.
    page = report.write_report(engine, tmp_path / "step", weeks_of_nights[23]).read_text()
    marked = [row for row in page.splitlines() if row.startswith("<tr class=moved>")]
    assert len(marked) == 1 and "TORCH_ALLTOALL" in marked[0] and "<td>1024</td><td>combine</td>" in marked[0], marked
    assert "%*</td>" in marked[0] and page.count("%*</td>") == 1
    with pytest.raises(MoecommError, match="no run"):
        report.write_report(engine, tmp_path / "x", "no-such-run")
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    assert main(["report", "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "index.html").exists()


def test_plots_drawn_by_worker_processes_are_those_drawn_in_process(engine, weeks_of_nights, tmp_path, monkeypatch):
    # A year's matrix has about a hundred plots: they are drawn by worker processes. The same
    # report drawn in this process and by two workers has the same plots, byte for byte, and
    # the same page; a bad setting is a clear error.
    pages = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("MOECOMM_REPORT_WORKERS", workers)
        pages[workers] = report.write_report(engine, tmp_path / workers, weeks_of_nights[-1]).read_text()
    assert pages["1"] == pages["2"]
    drawn = sorted(p.name for p in (tmp_path / "1").glob("*.svg"))
    assert drawn == sorted(p.name for p in (tmp_path / "2").glob("*.svg")) and len(drawn) >= 12
    for name in drawn:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name
    assert "Token counts in the plots below:" in pages["1"] and "&#9632;</span> 1024" in pages["1"]
    assert "Backends in the plots below:" in pages["1"] and "&#9632;</span> TORCH_ALLTOALL [" in pages["1"]
    monkeypatch.setenv("MOECOMM_REPORT_WORKERS", "many")
    with pytest.raises(MoecommError, match="MOECOMM_REPORT_WORKERS"):
        report.write_report(engine, tmp_path / "bad", weeks_of_nights[-1])
