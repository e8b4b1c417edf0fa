"""A queue monitor beside a worker running in a thread, as the monitor tests need them; both stopped after."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from naq_ipy.ipython.monitor_panel import QueueMonitor
from naq_ipy.worker.consumer import Worker


@dataclass
class MonitoredWorker:
    """The monitor, and the worker serving queue `default` in its own thread and loop."""

    monitor: QueueMonitor
    worker: Worker
    thread: threading.Thread

    def stop_worker(self) -> None:
        """Stop the worker and wait for its thread (idempotent)."""
        self.worker.request_stop()
        self.thread.join(10)


@contextmanager
def monitor_and_worker(url: str, concurrency: int) -> Iterator[MonitoredWorker]:
    """A QueueMonitor (loaded, its widget built), then a worker started; the worker and the monitor stopped after."""
    monitor = QueueMonitor(url=url, refresh_s=0.2)
    worker = Worker("default", url=url, heartbeat_s=0.2, concurrency=concurrency)
    both = MonitoredWorker(monitor, worker, threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True))
    try:
        assert monitor.wait_loaded(5) and monitor.widget is not None
        both.thread.start()
        yield both
    finally:
        both.stop_worker()
        monitor.close()
