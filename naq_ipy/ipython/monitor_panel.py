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
from naq_ipy.ipython.monitor_jobs import JOB_ROWS, JobList, pending_rows, running_rows
from naq_ipy.ipython.panel_base import Panel
from naq_ipy.status.cancel import cancel as cancel_jobs
from naq_ipy.status.output import output_tails
from naq_ipy.status.queued import queued_headers
from naq_ipy.status.results import JobStatus, fetch_status
from naq_ipy.status.workers import list_workers
from naq_ipy.views.tables import format_table
from naq_ipy.wire.connection import get_connection, nats_errors
from naq_ipy.wire.names import (
    FAILED_STREAM_NAME,
    JOB_STATUS_KV_NAME,
    JOB_STREAM_NAME,
    QUEUE_SUBJECT_PREFIX,
    durable_queue,
)
from naq_ipy.wire.settings import ConnectionSettings
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
    queued: list[dict[str, Any]] = field(default_factory=list)  # headers of the oldest jobs in the stream
    at: float = 0.0


@dataclass(frozen=True)
class FailedSlot:
    """One row of the failed-jobs list: a requeue button and an HTML line in a box (hidden when unused)."""

    box: Any
    line: Any
    requeue: Any


@dataclass(frozen=True)
class MonitorControls:
    """Every widget of the monitor a callback or a test needs, by name."""

    queues: Any
    workers: Any
    recent: Any
    failed_title: Any
    purge_queue: Any
    purge: Any
    purge_confirm: Any
    purge_text: Any
    purge_yes: Any
    purge_no: Any
    failed: tuple[FailedSlot, ...]


class QueueMonitor(Panel):
    """A live view of queues and workers: `queues` limits it to those names; polled every `refresh_s` seconds.

    `read_only` hides purge and requeue.
    """

    def __init__(self, url: str | ConnectionSettings | None = None, queues: Sequence[str] | None = None,
                 refresh_s: float = 2.0, *, zone: tzinfo | None = None, read_only: bool = False) -> None:
        super().__init__(url, read_only=read_only)
        self.queues = list(queues) if queues else None
        self.refresh_s = refresh_s
        self.zone = zone
        self.tally = mt.StatusTally()
        self.poll = Poll()
        self.loaded = threading.Event()
        self.counted = threading.Event()
        self._problems: dict[str, str | None] = {"watch": None, "poll": None}
        self._lock = threading.RLock()
        self.controls: MonitorControls | None = None  # the named widgets, once built
        self.failed_keys: list[str | None] = [None] * FAILED_ROWS  # the job id shown in each failed row
        self.job_lists: dict[str, JobList] = {}  # "running", "pending": the lists with Cancel buttons
        self._render_soon = Coalescer(self.marshal, self._render)
        self._watch = LiveWatch(self.settings, JOB_STATUS_KV_NAME, JobStatus.from_bytes, self)
        self._poller: concurrent.futures.Future[None] | None = None
        self._wake: asyncio.Event | None = None
        self.start_watching()

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

    @property
    def watching(self) -> bool:
        """True while the status watch runs."""
        return self._watch.running

    def start_watching(self) -> None:
        """Start the status watch and the poller."""
        self._watch.start()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.run_coroutine_threadsafe(self._poll_loop(), bridge_loop())

    def stop_watching(self) -> None:
        """Stop the status watch and the poller."""
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
            queue = durable_queue(name)
            if queue is not None:
                poll.pending[queue] = consumer.num_pending or 0
                poll.in_flight[queue] = consumer.num_ack_pending or 0
        poll.workers = await list_workers(self.settings)
        poll.queued = await self._queued(conn, sum(len(w.get("current_jobs") or []) + len(w.get("waiting_jobs") or [])
                                                   for w in poll.workers) + JOB_ROWS)
        poll.failed_state = (failed_info.state.last_seq, failed_info.state.messages)
        if poll.failed_state == previous.failed_state:
            poll.failed, poll.tracebacks, poll.outputs = previous.failed, previous.tracebacks, previous.outputs
        else:
            poll.failed = sorted(await list_failed(self.settings), key=lambda f: -f.failed_at)
            poll.tracebacks = await self._tracebacks(poll.failed[:FAILED_ROWS], previous.tracebacks)
            poll.outputs = await output_tails([f.job_id for f in poll.failed[:FAILED_ROWS]], url=self.settings)
        return poll

    async def _queued(self, conn: Any, limit: int) -> list[dict[str, Any]]:
        """Headers of the oldest `limit` jobs in the stream (of this monitor's queues)."""
        found: list[dict[str, Any]] = []
        async for header in queued_headers(conn, window=limit):
            if not self.queues or header.get("queue_name") in self.queues:
                found.append(header)
                if len(found) >= limit:
                    break
        return found

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
            c = self.controls
            assert c is not None
            c.queues.value = mt.html_table(mt.QUEUE_COLUMNS, [s.cells() for s in stats], "no queues yet")
            c.workers.value = mt.html_table(mt.WORKER_COLUMNS, mt.worker_rows(poll.workers, self.zone),
                                            "no live workers")
            c.recent.value = mt.html_table(mt.RECENT_COLUMNS, mt.recent_rows(recent, self.zone), "no jobs yet")
            self._render_failed(c, poll)
            self._render_jobs(poll)
            names, chosen = [s.name for s in stats], c.purge_queue.value
            if list(c.purge_queue.options) != names:
                c.purge_queue.options = names
                c.purge_queue.value = chosen if chosen in names else (names[0] if names else None)
        self._show_status()

    def _render_failed(self, c: MonitorControls, poll: Poll) -> None:
        failed = [f for f in poll.failed if not self.queues or f.queue_name in self.queues][:FAILED_ROWS]
        c.failed_title.value = f"<b>Failed jobs</b> ({len(poll.failed):,} stored, newest first)"
        for i, slot in enumerate(c.failed):
            job = failed[i] if i < len(failed) else None
            self.failed_keys[i] = job.job_id if job else None
            if job is None:
                slot.box.layout.display = "none"
                continue
            slot.line.value = mt.failed_html(job.job_id, job.func_name, job.reason, job.failed_at,
                                             poll.tracebacks.get(job.job_id), self.zone, poll.outputs.get(job.job_id))
            slot.box.layout.display = None

    def _render_jobs(self, poll: Poll) -> None:
        running = running_rows(poll.workers, self.tally.running, self.zone)
        held = {line.job_id for line in running}
        pending = pending_rows(poll.queued, held, self.zone)
        waiting = sum(poll.pending.values())
        self.job_lists["running"].show("Running jobs", running, len(running))
        self.job_lists["pending"].show("Pending jobs, oldest first", pending, max(waiting, len(pending)))

    # -- actions -------------------------------------------------------------------------------
    def cancel_shown(self, kind: str, row: int) -> None:
        """Cancel the job shown in row `row` of the `running` or `pending` list (its Cancel button)."""
        job_id = self.job_lists[kind].shown[row]
        if job_id is None or self.refused("cancel"):
            return
        self.run_action(f"cancel {job_id}", cancel_jobs(job_id, self.settings),
                        lambda report: self._after(f"cancel {job_id}: {report[job_id]}"))

    def requeue(self, slot: int) -> None:
        """Put the failed job shown in row `slot` back on its queue."""
        job_id = self.failed_keys[slot]
        if job_id is None or self.refused("requeue"):
            return
        self.run_action(f"requeue {job_id}", requeue_failed(job_id, self.settings),
                        lambda _header: self._after(f"requeued {job_id}"))

    def ask_purge(self) -> None:
        """Show the confirm step for purging the chosen queue."""
        if self.refused("purge"):
            return
        assert self.controls is not None
        queue = self.controls.purge_queue.value
        if not queue:
            self.set_status("no queue to purge", error=True)
            return
        pending = self.poll.pending.get(queue, 0)
        self.controls.purge_text.value = f"<b>Remove all {pending:,} waiting job(s) of {queue}?</b>"
        self.controls.purge_confirm.layout.display = None

    def purge(self) -> None:
        """Purge the chosen queue (after the confirm step)."""
        assert self.controls is not None
        self.controls.purge_confirm.layout.display = "none"
        if self.refused("purge"):
            return
        queue = self.controls.purge_queue.value
        self.run_action(f"purge {queue}", purge_queue(queue, nats_url=self.settings),
                        lambda count: self._after(f"purged {count:,} job(s) from {queue}"))

    def _after(self, message: str) -> None:
        self.set_status(message)
        self.refresh()

    # -- widget tree ---------------------------------------------------------------------------
    def _build(self, widgets: Any) -> Any:
        make, layout = self.make, widgets.Layout
        purge_text = make(widgets.HTML)
        purge_yes = make(widgets.Button, description="Yes, purge", button_style="danger")
        purge_no = make(widgets.Button, description="Keep")
        c = self.controls = MonitorControls(
            queues=make(widgets.HTML), workers=make(widgets.HTML), recent=make(widgets.HTML),
            failed_title=make(widgets.HTML),
            purge_queue=make(widgets.Dropdown, options=[], description="queue", layout=layout(width="16em")),
            purge=make(widgets.Button, description="Purge…", button_style="warning"),
            purge_confirm=make(widgets.HBox, [purge_text, purge_yes, purge_no], layout=layout(display="none")),
            purge_text=purge_text, purge_yes=purge_yes, purge_no=purge_no,
            failed=tuple(self._make_failed_slot(widgets, i) for i in range(FAILED_ROWS)),
        )
        c.purge.on_click(self.guarded("purge", lambda _b: self.ask_purge()))
        c.purge_yes.on_click(self.guarded("purge", lambda _b: self.purge()))
        c.purge_no.on_click(self.guarded("purge", lambda _b: setattr(c.purge_confirm.layout, "display", "none")))
        for kind in ("running", "pending"):
            self.job_lists[kind] = JobList.build(
                make, widgets, lambda row, kind=kind: self.guarded("cancel", self.cancel_shown)(kind, row),
                buttons=not self.read_only)
        assert self._status is not None
        purge = [] if self.read_only else [make(widgets.HBox, [c.purge_queue, c.purge]), c.purge_confirm]
        return make(widgets.VBox, [
            make(widgets.HTML, "<b>Queues</b>"), c.queues, *purge, self._status,
            make(widgets.HTML, "<b>Workers</b>"), c.workers,
            *self.job_lists["running"].boxes(), *self.job_lists["pending"].boxes(),
            make(widgets.HTML, "<b>Latest jobs</b>"), c.recent, c.failed_title,
            make(widgets.VBox, [slot.box for slot in c.failed]),
        ])

    def _make_failed_slot(self, widgets: Any, i: int) -> FailedSlot:
        line = self.make(widgets.HTML, layout=widgets.Layout(flex="1 1 auto"))
        button = self.make(widgets.Button, description="Requeue",
                           layout=widgets.Layout(width="auto", flex="0 0 auto"))
        button.on_click(self.guarded("requeue", lambda _b: self.requeue(i)))
        children = [line] if self.read_only else [button, line]
        box = self.make(widgets.HBox, children, layout=widgets.Layout(display="none"))
        return FailedSlot(box, line, button)

    # -- static fallback -----------------------------------------------------------------------
    def _static_html(self) -> str:
        stats = self.queue_stats()
        return mt.html_table(mt.QUEUE_COLUMNS, [s.cells() for s in stats], "no queues yet")

    def _static_text(self) -> str:
        stats = self.queue_stats()
        return "Queues\n" + (format_table(mt.QUEUE_COLUMNS, [s.cells() for s in stats]) if stats else "(none yet)")
