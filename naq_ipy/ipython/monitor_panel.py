"""`QueueMonitor`: per-queue counts, live workers, latest jobs, failed jobs with requeue, purge with confirm.

Counts of finished/failed jobs come from one KV watch on `naq_job_status`, kept incrementally
(`monitor_table.StatusTally`); stream, consumer and worker facts are polled every `refresh_s`
on the bridge loop, and the failed-jobs list is re-read only when that stream changed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from naq_ipy.client.bridge import bridge_loop
from naq_ipy.client.shortcuts import purge_queue
from naq_ipy.ipython import monitor_table as mt
from naq_ipy.ipython.livewatch import Coalescer, LiveWatch, describe_error
from naq_ipy.ipython.panels import Panel
from naq_ipy.status.output import output_tails
from naq_ipy.status.results import JobStatus, fetch_status
from naq_ipy.status.workers import list_workers
from naq_ipy.views.tables import format_table
from naq_ipy.wire.connection import get_connection, nats_errors
from naq_ipy.wire.settings import (
    FAILED_STREAM_NAME,
    JOB_STATUS_KV_NAME,
    JOB_STREAM_NAME,
    QUEUE_SUBJECT_PREFIX,
    WORKER_DURABLE_PREFIX,
    ConnectionSettings,
)
from naq_ipy.worker.failed_store import FailedJob, list_failed, requeue_failed

FAILED_ROWS = 10


@dataclass
class Poll:
    """What one poll read: messages per queue, live workers, the failed jobs and their tracebacks."""

    pending: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    failed: list[FailedJob] = field(default_factory=list)
    failed_state: tuple[int, int] | None = None
    tracebacks: dict[str, str | None] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # last lines of each failed job's output
    at: float = 0.0


class QueueMonitor(Panel):
    """A live view of queues and workers: `queues` limits it to those names; polled every `refresh_s` seconds."""

    def __init__(self, url: str | ConnectionSettings | None = None, queues: Sequence[str] | None = None,
                 refresh_s: float = 2.0, *, zone: tzinfo | None = None) -> None:
        super().__init__(url)
        self.queues = list(queues) if queues else None
        self.refresh_s = refresh_s
        self.zone = zone
        self.tally = mt.StatusTally()
        self.poll = Poll()
        self.loaded = threading.Event()
        self.counted = threading.Event()
        self._problems: dict[str, str | None] = {"watch": None, "poll": None}
        self._lock = threading.RLock()
        self._w: dict[str, Any] = {}
        self._failed_slots: list[tuple[Any, Any, Any]] = []
        self._failed_keys: list[str | None] = [None] * FAILED_ROWS
        self._render_soon = Coalescer(self.marshal, self._render)
        self._watch = LiveWatch(self.settings, JOB_STATUS_KV_NAME, JobStatus.from_bytes, self)
        self._poller: concurrent.futures.Future[None] | None = None
        self._wake: asyncio.Event | None = None
        self._start()

    # -- data (bridge thread) ------------------------------------------------------------------
    def on_snapshot(self, entries: Mapping[str, JobStatus]) -> None:
        """All status records: recount from scratch."""
        with self._lock:
            self.tally.reset(entries.values(), time.time())
        self.counted.set()

    def on_changes(self, changes: Mapping[str, JobStatus | None]) -> None:
        """Changed status records: adjust the counts."""
        now = time.time()
        with self._lock:
            for job_id, status in changes.items():
                self.tally.apply(job_id, status, now)

    def on_status(self, problem: str | None) -> None:
        """The status watch's health."""
        self._set_problem("watch", problem)

    def _set_problem(self, source: str, problem: str | None) -> None:
        self._problems[source] = problem
        self.problem = " · ".join(p for p in self._problems.values() if p) or None
        self._render_soon.request()

    def wait_loaded(self, timeout_s: float) -> bool:
        """Wait until the first poll finished and the status counts are in; True if they are."""
        deadline = time.monotonic() + timeout_s
        return self.loaded.wait(timeout_s) and self.counted.wait(max(0.0, deadline - time.monotonic()))

    def _start(self) -> None:
        self._watch.start()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.run_coroutine_threadsafe(self._poll_loop(), bridge_loop())

    def _stop(self) -> None:
        self._watch.stop()
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()

    def refresh(self) -> None:
        """Poll now instead of at the next tick."""
        wake = self._wake
        if wake is not None:
            bridge_loop().call_soon_threadsafe(wake.set)

    async def _poll_loop(self) -> None:
        self._wake = asyncio.Event()
        while True:
            try:
                poll = await self._read(self.poll)
                with self._lock:
                    self.poll = poll
                    self.tally.expire(poll.at)
                self._set_problem("poll", None)
            except Exception as e:  # show it, keep polling: the server may come back
                self._set_problem("poll", f"queue figures: {describe_error(e)}")
            self.loaded.set()
            self._render_soon.request()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh_s)
            self._wake.clear()

    async def _read(self, previous: Poll) -> Poll:
        conn = await get_connection(self.settings)
        poll = Poll(at=time.time())
        async with nats_errors(self.settings):
            await conn.ensure_stream()
            await conn.ensure_stream(FAILED_STREAM_NAME)
            info = await conn.js.stream_info(JOB_STREAM_NAME, subjects_filter=f"{QUEUE_SUBJECT_PREFIX}.*")
            consumers = await conn.js.consumers_info(JOB_STREAM_NAME)
            failed_info = await conn.js.stream_info(FAILED_STREAM_NAME)
        prefix = QUEUE_SUBJECT_PREFIX + "."
        poll.pending = {s[len(prefix):]: n for s, n in (info.state.subjects or {}).items() if s.startswith(prefix)}
        for consumer in consumers:
            name = consumer.name or ""
            if name.startswith(WORKER_DURABLE_PREFIX):
                queue = name[len(WORKER_DURABLE_PREFIX):]
                poll.pending[queue] = consumer.num_pending or 0
                poll.in_flight[queue] = consumer.num_ack_pending or 0
        poll.workers = await list_workers(self.settings)
        poll.failed_state = (failed_info.state.last_seq, failed_info.state.messages)
        if poll.failed_state == previous.failed_state:
            poll.failed, poll.tracebacks, poll.outputs = previous.failed, previous.tracebacks, previous.outputs
        else:
            poll.failed = sorted(await list_failed(self.settings), key=lambda f: -f.failed_at)
            poll.tracebacks = await self._tracebacks(poll.failed[:FAILED_ROWS], previous.tracebacks)
            poll.outputs = await output_tails([f.job_id for f in poll.failed[:FAILED_ROWS]], url=self.settings)
        return poll

    async def _tracebacks(self, failed: list[FailedJob], known: dict[str, str | None]) -> dict[str, str | None]:
        wanted = [f.job_id for f in failed if f.job_id not in known]
        found = await asyncio.gather(*(fetch_status(i, self.settings) for i in wanted), return_exceptions=True)
        tracebacks = {k: v for k, v in known.items() if any(f.job_id == k for f in failed)}
        for job_id, status in zip(wanted, found, strict=True):
            tracebacks[job_id] = status.traceback if isinstance(status, JobStatus) else None
        return tracebacks

    # -- rendering (widgets' thread) -----------------------------------------------------------
    def queue_stats(self) -> list[mt.QueueStats]:
        """The per-queue figures shown now."""
        with self._lock:
            poll, tally = self.poll, self.tally
            running = mt.running_per_queue(poll.workers, tally.running)
            names = self.queues or {*poll.pending, *poll.in_flight, *running, *tally.queues()}
            return mt.queue_stats(names, poll.pending, poll.in_flight, running, tally)

    def _render(self) -> None:
        if self._root is None or self.closed:
            return
        with self._lock:
            poll = self.poll
            stats = self.queue_stats()
            recent = [s for s in self.tally.recent() if not self.queues or s.queue_name in self.queues]
            w = self._w
            w["queues"].value = mt.html_table(mt.QUEUE_COLUMNS, [s.cells() for s in stats], "no queues yet")
            w["workers"].value = mt.html_table(mt.WORKER_COLUMNS, mt.worker_rows(poll.workers, self.zone),
                                               "no live workers")
            w["recent"].value = mt.html_table(mt.RECENT_COLUMNS, mt.recent_rows(recent, self.zone), "no jobs yet")
            self._render_failed(poll)
            names, chosen = [s.name for s in stats], w["purge_queue"].value
            if list(w["purge_queue"].options) != names:
                w["purge_queue"].options = names
                w["purge_queue"].value = chosen if chosen in names else (names[0] if names else None)
        self._show_status()

    def _render_failed(self, poll: Poll) -> None:
        failed = [f for f in poll.failed if not self.queues or f.queue_name in self.queues][:FAILED_ROWS]
        self._w["failed_title"].value = f"<b>Failed jobs</b> ({len(poll.failed):,} stored, newest first)"
        for i, (box, line, _button) in enumerate(self._failed_slots):
            job = failed[i] if i < len(failed) else None
            self._failed_keys[i] = job.job_id if job else None
            if job is None:
                box.layout.display = "none"
                continue
            line.value = mt.failed_html(job.job_id, job.func_name, job.reason, job.failed_at,
                                        poll.tracebacks.get(job.job_id), self.zone, poll.outputs.get(job.job_id))
            box.layout.display = None

    # -- actions -------------------------------------------------------------------------------
    def requeue(self, slot: int) -> None:
        """Put the failed job shown in row `slot` back on its queue."""
        job_id = self._failed_keys[slot]
        if job_id is None:
            return
        self.run_action(f"requeue {job_id}", requeue_failed(job_id, self.settings),
                        lambda _header: self._after(f"requeued {job_id}"))

    def ask_purge(self) -> None:
        """Show the confirm step for purging the chosen queue."""
        queue = self._w["purge_queue"].value
        if not queue:
            self.set_status("no queue to purge", error=True)
            return
        pending = self.poll.pending.get(queue, 0)
        self._w["purge_text"].value = f"<b>Remove all {pending:,} waiting job(s) of {queue}?</b>"
        self._w["purge_confirm"].layout.display = None

    def purge(self) -> None:
        """Purge the chosen queue (after the confirm step)."""
        self._w["purge_confirm"].layout.display = "none"
        queue = self._w["purge_queue"].value
        self.run_action(f"purge {queue}", purge_queue(queue, nats_url=self.settings),
                        lambda count: self._after(f"purged {count:,} job(s) from {queue}"))

    def _after(self, message: str) -> None:
        self.set_status(message)
        self.refresh()

    # -- widget tree ---------------------------------------------------------------------------
    def _build(self, widgets: Any) -> Any:
        w, make = self._w, self.make
        for name in ("queues", "workers", "recent", "failed_title", "purge_text"):
            w[name] = make(widgets.HTML)
        w["purge_queue"] = make(widgets.Dropdown, options=[], description="queue",
                                layout=widgets.Layout(width="16em"))
        w["purge"] = make(widgets.Button, description="Purge…", button_style="warning")
        w["purge_yes"] = make(widgets.Button, description="Yes, purge", button_style="danger")
        w["purge_no"] = make(widgets.Button, description="Keep")
        w["purge_confirm"] = make(widgets.HBox, [w["purge_text"], w["purge_yes"], w["purge_no"]],
                                  layout=widgets.Layout(display="none"))
        w["purge"].on_click(self.guarded("purge", lambda _b: self.ask_purge()))
        w["purge_yes"].on_click(self.guarded("purge", lambda _b: self.purge()))
        w["purge_no"].on_click(self.guarded("purge", lambda _b: setattr(w["purge_confirm"].layout, "display",
                                                                        "none")))
        self._failed_slots = [self._make_failed_slot(widgets, i) for i in range(FAILED_ROWS)]
        assert self._status is not None
        return make(widgets.VBox, [
            make(widgets.HTML, "<b>Queues</b>"), w["queues"], make(widgets.HBox, [w["purge_queue"], w["purge"]]),
            w["purge_confirm"], self._status, make(widgets.HTML, "<b>Workers</b>"), w["workers"],
            make(widgets.HTML, "<b>Latest jobs</b>"), w["recent"], w["failed_title"],
            make(widgets.VBox, [slot[0] for slot in self._failed_slots]),
        ])

    def _make_failed_slot(self, widgets: Any, i: int) -> tuple[Any, Any, Any]:
        line = self.make(widgets.HTML, layout=widgets.Layout(flex="1 1 auto"))
        button = self.make(widgets.Button, description="Requeue", layout=widgets.Layout(width="auto"))
        button.on_click(self.guarded("requeue", lambda _b: self.requeue(i)))
        box = self.make(widgets.HBox, [button, line], layout=widgets.Layout(display="none"))
        return box, line, button

    # -- static fallback -----------------------------------------------------------------------
    def _static_html(self) -> str:
        stats = self.queue_stats()
        return mt.html_table(mt.QUEUE_COLUMNS, [s.cells() for s in stats], "no queues yet")

    def _static_text(self) -> str:
        stats = self.queue_stats()
        return "Queues\n" + (format_table(mt.QUEUE_COLUMNS, [s.cells() for s in stats]) if stats else "(none yet)")
