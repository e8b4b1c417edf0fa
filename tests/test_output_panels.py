"""A job's output in the widgets: the live Job display's tail, the monitor's failed jobs, a schedule's recent runs."""

from __future__ import annotations

import asyncio
import threading

import pytest
from monitors import monitor_and_worker
from polling import wait_until

from naq_ipy.client.queue import Queue
from naq_ipy.ipython.livejob import SHOW_ALL, SHOW_TAIL, LiveJob
from naq_ipy.ipython.schedules_panel import ScheduledJobsPanel
from naq_ipy.status.results import FAILED, JobStatus, write_status
from naq_ipy.wire.connection import close_all, get_connection
from naq_ipy.wire.names import LOGS_STREAM_NAME, OUTPUT_STREAM_HEADER, logs_subject
from naq_ipy.worker.consumer import Worker

pytestmark = pytest.mark.timeout(60)


def loud_failure(x: int) -> int:
    print("working on", x)
    raise ValueError(f"broken {x}")


def add(a: int, b: int) -> int:
    return a + b


def test_the_queue_monitor_shows_a_failed_jobs_output(nats_url: str) -> None:
    with monitor_and_worker(nats_url, concurrency=2) as running:
        monitor = running.monitor
        failed = Queue("default", nats_url).enqueue_sync(loud_failure, 3)
        wait_until(lambda: monitor.failed_keys[0] == failed.job_id, 10, "failed row")
        wait_until(lambda: "working on 3" in monitor.controls.failed[0].line.value, 5, "output")
        assert "ValueError: broken 3" in monitor.controls.failed[0].line.value


def test_recent_runs_show_each_runs_output(nats_url: str) -> None:
    async def record_runs() -> None:
        conn = await get_connection(nats_url)
        await write_status(conn, JobStatus(job_id="tick.2000", status=FAILED, schedule_key="tick", error="boom"))
        await conn.ensure_stream(LOGS_STREAM_NAME)
        for text in ("first line\n", "tick said <hi>\n"):
            await conn.js.publish(logs_subject("tick.2000"), text.encode(), headers={OUTPUT_STREAM_HEADER: "stdout"})
        await close_all()

    Queue("default", nats_url).schedule_sync(add, 1, 2, interval=3600, name="tick")
    asyncio.run(record_runs())
    panel = ScheduledJobsPanel(url=nats_url)
    try:
        assert panel.wait_loaded(5) and panel.widget is not None
        panel.select_keys(["tick"])
        panel.controls.runs.click()
        wait_until(lambda: "tick said" in panel.controls.runs_table.value, 10, "the run's output")
        table = panel.controls.runs_table.value
        assert "<summary>2 lines</summary>" in table and "first line\ntick said &lt;hi&gt;\n" in table
    finally:
        panel.close()


def fifteen_lines() -> int:
    for i in range(15):
        print("row", i)
    return 15


def test_the_live_job_display_shows_the_last_lines_and_all_on_demand(nats_url: str) -> None:
    worker = Worker("default", url=nats_url, heartbeat_s=0.2, concurrency=2)
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    thread.start()
    view = LiveJob(Queue("default", nats_url).enqueue_sync(fifteen_lines))
    try:
        assert view.wait_loaded(5) and view.widget is not None
        parts = view.parts
        wait_until(lambda: "row 14" in parts.output.value, 10, "the output's last line")
        assert "row 4\n" not in parts.output.value and "row 5\n" in parts.output.value
        assert parts.output_toggle.layout.display is None and parts.output_toggle.description == SHOW_ALL
        parts.output_toggle.click()
        assert "row 0\n" in parts.output.value and parts.output_toggle.description == SHOW_TAIL
        parts.output_toggle.click()
        assert "row 0\n" not in parts.output.value
    finally:
        view.close()
        worker.request_stop()
        thread.join(10)
