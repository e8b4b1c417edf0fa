"""End to end: the panels in JupyterLab and in Jupyter Notebook 7, in headless Chromium, against a real nats-server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import CHROMIUM, JupyterLab, chromium_page, run_all_cells, run_command, visible_notebook
from polling import wait_until

import naq_ipy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"),
]

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "scheduled-jobs-panel.png"
BAD_TEXTS = ("Loading widget", "Error displaying widget", "Traceback", "model not found")

NOTEBOOK = [
    "import naq_ipy\n"
    "from naq_ipy.ipython.panels import ScheduledJobsPanel\n"
    "URL = {url!r}\n"
    "q = naq_ipy.Queue('reports', URL)\n",
    "def build_report(month):\n"
    "    return f'report for {{month}}'\n"
    "\n"
    "q.schedule_sync(build_report, 'daily', cron='0 6 * * *', tz='Europe/Berlin', name='daily-report')\n"
    "q.schedule_sync(build_report, 'hourly', cron='15 * * * *', name='hourly-sync', repeat=24)\n"
    "q.schedule_sync(build_report, 'tick', interval='90s', name='heartbeat')\n"
    "naq_ipy.Queue('mail', URL).schedule_sync(build_report, 'news', cron='0 9 * * MON', name='newsletter',\n"
    "                                          paused=True)\n",
    "panel = ScheduledJobsPanel(url=URL)\n"
    "panel",
    "print('watching:', panel._watch.running)",
    "from naq_ipy.ipython.panels import QueueMonitor\n"
    "q.enqueue_sync(build_report, 'now')\n"
    "QueueMonitor(url=URL, refresh_s=0.5)",
]


@pytest.fixture(params=["jupyterlab", "notebook"], ids=["jupyterlab", "notebook7"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JupyterLab]:
    with JupyterLab(tmp_path, app=request.param) as server:
        yield server


def test_panel_pauses_shows_changes_and_stops_when_cleared(nats_url: str, lab: JupyterLab) -> None:
    """The same in JupyterLab and in Notebook 7: renders, acts, updates live, stops watching when cleared."""
    lab.write_notebook("x.ipynb", [cell.format(url=nats_url) for cell in NOTEBOOK])
    with chromium_page() as page:
        page.goto(lab.notebook_url("x.ipynb"))
        run_all_cells(page)
        notebook = visible_notebook(page)
        panel = notebook.locator(".naq-panel").first
        row = panel.locator(".naq-slot", has_text="hourly-sync")
        try:
            row.wait_for(state="visible", timeout=90_000)
        except Exception as e:
            raise AssertionError(f"panel did not render: {notebook.inner_text()[-2000:]}\n{lab.log_tail()}") from e
        assert panel.locator(".naq-slot:visible").count() == 4
        monitor = notebook.locator(".naq-panel").nth(1)
        monitor.locator("td", has_text="reports").wait_for(timeout=30_000)
        assert "no live workers" in monitor.inner_text()

        row.locator("input[type=checkbox]").check()
        panel.get_by_role("button", name="Pause", exact=True).click()
        wait_until(lambda: naq_ipy.get_scheduled_job_sync("hourly-sync", nats_url=nats_url).paused, 15, "paused in KV")
        assert not naq_ipy.get_scheduled_job_sync("daily-report", nats_url=nats_url).paused
        row.filter(has_text="paused").wait_for(timeout=10_000)

        naq_ipy.modify_scheduled_job_sync("heartbeat", nats_url=nats_url, interval="45s")
        started = time.monotonic()
        panel.locator(".naq-slot", has_text="heartbeat").filter(has_text="every 45 s").wait_for(timeout=10_000)
        latency_s = time.monotonic() - started

        page.mouse.move(0, 0)
        if lab.app == "jupyterlab":
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            panel.screenshot(path=str(SCREENSHOT))
        text = notebook.inner_text()
        for bad in BAD_TEXTS:
            assert bad not in text, f"page shows {bad!r}:\n{text[-3000:]}"
        assert "failed" not in panel.inner_text() and "watching: True" in text

        run_command(page, "notebook:clear-all-cell-outputs")
        notebook.locator(".naq-panel").first.wait_for(state="detached", timeout=10_000)
        page.evaluate("() => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = 3; }")
        run_command(page, "notebook:run-cell")
        notebook.get_by_text("watching: False").wait_for(timeout=15_000)
    assert latency_s < 5.0
