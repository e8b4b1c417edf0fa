"""The queue monitor panel against a real server and worker: counts, failed jobs, requeue, purge, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from monitors import monitor_and_worker
from polling import wait_until

from naq_ipy.client.queue import Queue
from naq_ipy.ipython.monitor_panel import QueueMonitor
from naq_ipy.wire.server import NatsServer

pytestmark = pytest.mark.timeout(60)


def work(x: int) -> int:
    return x


def broken(x: int) -> int:
    raise ValueError(f"broken {x}")


def test_queue_monitor_counts_requeues_and_purges(nats_url: str) -> None:
    queue = Queue("default", nats_url)
    with monitor_and_worker(nats_url, concurrency=2) as running:
        monitor = running.monitor
        for i in range(3):
            queue.enqueue_sync(work, i)
        failed = queue.enqueue_sync(broken, 1)
        wait_until(lambda: [s.cells() for s in monitor.queue_stats()] == [("default", "0", "0", "0", "3", "1")],
                   10, "counts")
        wait_until(lambda: running.worker.worker_id in monitor.controls.workers.value, 5, "worker row")
        wait_until(lambda: monitor.failed_keys[0] == failed.job_id, 5, "failed row")
        assert "ValueError: broken 1" in monitor.controls.failed[0].line.value
        wait_until(lambda: "Traceback" in monitor.controls.failed[0].line.value, 5, "traceback")
        assert "broken" in monitor.controls.recent.value
        running.stop_worker()
        monitor.controls.failed[0].requeue.click()
        wait_until(lambda: monitor.status_text == f"requeued {failed.job_id}", 5, "requeued")
        wait_until(lambda: monitor.poll.pending.get("default") == 1, 5, "requeued job waiting")
        assert monitor.controls.purge_queue.value == "default"
        monitor.controls.purge.click()
        assert "Remove all 1 waiting job(s) of default?" in monitor.controls.purge_text.value
        monitor.controls.purge_yes.click()
        wait_until(lambda: monitor.status_text == "purged 1 job(s) from default", 5, "purged")
        assert "default" in repr(monitor) and "<table" in monitor._repr_html_()


def test_queue_monitor_reports_a_lost_server_and_recovers(nats_server_factory: Callable[..., NatsServer]) -> None:
    server = nats_server_factory()
    monitor = QueueMonitor(url=server.url, refresh_s=0.2)
    try:
        assert monitor.wait_loaded(5) and monitor.widget is not None and monitor.problem is None
        server.stop()
        wait_until(lambda: monitor.problem and "queue figures:" in monitor.problem, 15, "problem shown")
        assert "queue figures:" in monitor.status_html
        server.start()
        wait_until(lambda: monitor.problem is None, 20, "recovered")
    finally:
        monitor.close()


@pytest.mark.slow
def test_queue_monitor_cancel_buttons_on_running_and_pending_jobs(nats_url: str, tmp_path: Any) -> None:
    """The running list's Cancel stops a busy thread job; the pending list's Cancel drops a queued one."""
    import jobs

    from naq_ipy.status.results import fetch_status

    queue = Queue("default", nats_url)
    evidence = str(tmp_path / "spin")
    spinning = queue.enqueue_sync(jobs.busy_loop, evidence)
    waiting = queue.enqueue_sync(jobs.touch, str(tmp_path / "waiting"))
    with monitor_and_worker(nats_url, concurrency=1) as worker_beside:
        monitor = worker_beside.monitor
        running, pending = monitor.job_lists["running"], monitor.job_lists["pending"]
        wait_until(lambda: running.shown[0] == spinning.job_id, 15, "the running row")
        wait_until(lambda: pending.shown[0] == waiting.job_id, 5, "the pending row")
        assert "jobs.touch" in pending.rows[0][1].value and "jobs.busy_loop" in running.rows[0][1].value
        pending.rows[0][2].click()
        wait_until(lambda: monitor.status_text == f"cancel {waiting.job_id}: cancelled", 5, "pending cancelled")
        running.rows[0][2].click()
        wait_until(lambda: monitor.status_text == f"cancel {spinning.job_id}: cancelled", 5, "running cancelled")
        wait_until(lambda: running.shown[0] is None and pending.shown[0] is None, 15, "both lists empty")
        for job in (spinning, waiting):
            assert asyncio.run(fetch_status(job.job_id, nats_url)).status == "cancelled"  # type: ignore[union-attr]
        assert not (tmp_path / "waiting").exists()


