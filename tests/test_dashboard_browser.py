"""End to end: `naq dashboard` (Voilà) in headless Chromium against a real nats-server, then a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM, chromium_page
from pids import descendants, environ, outlived

from naq_ipy import Queue
from naq_ipy.wire.server import free_port
from naq_ipy.worker.consumer import Worker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"),
]

NAQ = [sys.executable, "-m", "naq_ipy.cli"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "dashboard.png"
BAD_TEXTS = ("Loading widget", "Error displaying widget", "Traceback", "model not found", "Jupyter news",
             "There was an error")
ACTIONS = ("Pause", "Resume", "Run now", "Edit", "Cancel…", "Save", "Purge…", "Requeue")


def build_report(month: str) -> str:
    return f"report for {month}"


def send_mail(to: str) -> None:
    raise ConnectionRefusedError(f"no mail server for {to}")


@pytest.fixture
def worker(nats_url: str) -> Iterator[Worker]:
    """A worker on `reports` in a thread of this process, so the monitor has figures to show."""
    running = Worker("reports", url=nats_url, heartbeat_s=0.5, concurrency=2)
    thread = threading.Thread(target=lambda: asyncio.run(running.run()), daemon=True)
    thread.start()
    yield running
    running.request_stop()
    thread.join(15)


class Dashboard:
    """A running `naq dashboard` process, the address it printed, and what it started below it."""

    def __init__(self, process: subprocess.Popen[str], address: str, output: list[str]) -> None:
        self.process = process
        self.address = address
        self.output = output

    def below(self) -> dict[int, str]:
        """{pid: command} of Voilà and its kernels."""
        return descendants(self.process.pid)

    def terminate(self, signum: int = signal.SIGTERM) -> str:
        """SIGTERM as a service manager would (or SIGINT, a Ctrl-C); all the output."""
        self.process.send_signal(signum)
        rest, _ = self.process.communicate(timeout=60)
        return "".join(self.output) + rest


@pytest.fixture
def start_dashboard(tmp_path: Path, nats_url: str) -> Iterator[Callable[..., Dashboard]]:
    """Start `naq dashboard --no-browser` on `nats_url` with its own HOME and Jupyter dirs; killed at teardown."""
    env = {k: v for k, v in os.environ.items() if k not in ("NAQ_URL", "JUPYTER_PATH")}
    env.update(HOME=str(tmp_path / "home"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               IPYTHONDIR=str(tmp_path / "ipython"), PYTHONUNBUFFERED="1")
    started: list[subprocess.Popen[str]] = []

    def start(*options: str) -> Dashboard:
        process = subprocess.Popen([*NAQ, "dashboard", "--no-browser", "--url", nats_url, "--port",
                                    str(free_port()), *options], env=env, cwd=tmp_path, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started.append(process)
        output: list[str] = []
        assert process.stdout is not None
        while not (line := process.stdout.readline()).endswith("Ctrl-C stops it\n"):
            assert line, f"naq dashboard ended before serving:\n{''.join(output)}"
            output.append(line)
        output.append(line)
        address = next(line for line in output if line.startswith("naq dashboard: http"))
        return Dashboard(process, address.split(": ", 1)[1].strip(), output)

    yield start
    for process in started:  # a test that failed half way: Voilà and its kernels go too
        below = descendants(process.pid)
        if process.poll() is None:
            process.kill()
            process.wait()
        outlived(list(below), within_s=0)


def open_page(page: Any, dashboard: Dashboard, row: str) -> tuple[Any, float]:
    """Load the dashboard and wait until `row` shows in the scheduled-jobs panel; the panel and the seconds taken."""
    started = time.monotonic()
    page.goto(dashboard.address)
    panel = page.locator(".naq-panel").first
    try:
        panel.locator(".naq-slot", has_text=row).wait_for(timeout=90_000)
    except Exception as e:
        raise AssertionError(f"dashboard did not render {row!r}: {page.inner_text('body')[-2000:]}\n"
                             f"{''.join(dashboard.output)}") from e
    return panel, time.monotonic() - started


def test_dashboard_lists_shows_changes_pauses_and_stops_cleanly(nats_url: str, worker: Worker,
                                                                start_dashboard: Callable[..., Dashboard]) -> None:
    reports = Queue("reports", nats_url)
    reports.schedule_sync(build_report, "daily", cron="0 6 * * *", tz="Europe/Berlin", name="daily-report")
    reports.schedule_sync(build_report, "hourly", cron="15 * * * *", name="hourly-sync", repeat=24)
    for job in [*(reports.enqueue_sync(build_report, f"2026-{m:02d}") for m in (9, 10, 11)),
                reports.enqueue_sync(send_mail, "team", max_retries=0)]:
        with contextlib.suppress(Exception):
            job.result_sync(15)
    dashboard = start_dashboard()
    with chromium_page(width=1920, height=1000) as page:
        panel, load_s = open_page(page, dashboard, "daily-report")
        monitor = page.locator(".naq-panel").nth(1)
        monitor.locator("td", has_text="reports").first.wait_for(timeout=10_000)
        monitor.get_by_text(worker.worker_id).wait_for(timeout=10_000)
        monitor.get_by_role("button", name="Requeue").first.wait_for(timeout=10_000)

        started = time.monotonic()
        reports.schedule_sync(build_report, "tick", interval="90s", name="heartbeat")  # from this process
        panel.locator(".naq-slot", has_text="heartbeat").wait_for(timeout=2_000)
        appeared_s = time.monotonic() - started

        panel.locator(".naq-slot", has_text="hourly-sync").locator("input[type=checkbox]").check()
        panel.get_by_role("button", name="Pause", exact=True).click()
        panel.locator(".naq-slot", has_text="hourly-sync").filter(has_text="paused").wait_for(timeout=10_000)
        listed = subprocess.run([*NAQ, "list-scheduled", "--url", nats_url, "--status", "paused"],
                                capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0 and "hourly-sync" in listed.stdout, listed.stdout + listed.stderr
        assert "daily-report" not in listed.stdout and "heartbeat" not in listed.stdout
        panel.get_by_role("button", name="Cancel…", exact=True).click()  # asks first; "Keep them" keeps them
        panel.get_by_text("Cancel 1 scheduled job(s)?").wait_for(timeout=5_000)
        panel.get_by_role("button", name="Keep them").click()
        panel.get_by_text("Cancel 1 scheduled job(s)?").wait_for(state="hidden", timeout=5_000)
        assert panel.locator(".naq-slot:visible").count() == 3

        text = page.inner_text("body")
        for bad in BAD_TEXTS:
            assert bad not in text, f"page shows {bad!r}:\n{text[-3000:]}"
        for code in ("import ", "ScheduledJobsPanel", "NAQ_DASHBOARD", "os.environ"):
            assert code not in page.content(), f"the page shows code: {code!r}"
        assert page.locator(".jp-InputArea:visible, .cm-editor, .CodeMirror").count() == 0
        page.mouse.move(0, 0)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        bottom = max(box["y"] + box["height"] for box in (panel.bounding_box(), monitor.bounding_box()) if box)
        page.screenshot(path=str(SCREENSHOT), clip={"x": 0, "y": 0, "width": 1920, "height": bottom + 16})
        below = dashboard.below()
    kernels = [pid for pid, command in below.items() if "ipykernel_launcher" in command]
    assert len(kernels) == 1 and len(below) == 2, below
    kernel_env = environ(kernels[0])
    assert kernel_env["NAQ_URL"] == nats_url and "NAQ_DASHBOARD_TOKEN" not in kernel_env
    assert dashboard.address.split("?token=")[1] not in " ".join(below.values())
    out = dashboard.terminate()
    assert dashboard.process.returncode == 0, out
    assert out.rstrip().endswith("naq dashboard: stopped"), out
    assert outlived(list(below)) == [], below
    assert appeared_s < 2.0 and load_s < 60


def test_read_only_dashboard_shows_no_action_and_only_its_queue(nats_url: str,
                                                                 start_dashboard: Callable[..., Dashboard]) -> None:
    Queue("reports", nats_url).schedule_sync(build_report, "daily", cron="0 6 * * *", name="daily-report")
    Queue("mail", nats_url).schedule_sync(build_report, "news", cron="0 9 * * MON", name="newsletter")
    dashboard = start_dashboard("--read-only", "--queue", "reports")
    assert "read-only" in "".join(dashboard.output) and "queue reports" in "".join(dashboard.output)
    with chromium_page() as page:
        panel, _ = open_page(page, dashboard, "daily-report")
        page.locator(".naq-panel").nth(1).get_by_text("Workers", exact=True).wait_for(timeout=10_000)
        labels = [label.strip() for label in page.locator("button:visible").all_inner_texts()]
        assert not [label for label in labels if label in ACTIONS], labels
        assert "Recent runs" in labels
        assert panel.locator(".naq-slot:visible").count() == 1 and "newsletter" not in page.inner_text("body")
        below = dashboard.below()
    assert dashboard.terminate(signal.SIGINT).rstrip().endswith("naq dashboard: stopped")  # as Ctrl-C does
    assert dashboard.process.returncode == 0 and outlived(list(below)) == []
