"""Progress from inside a running job: `progress(0.5, "halfway")` lands in the job's status record.

The worker sets the current job (a context variable) around each run: coroutine jobs see it in
their task, thread jobs in a copied context, and a process-mode job in its child process, which
writes through its own connection on its own sync bridge. Outside a job `progress` does nothing.
Writes are rate-limited per job (at most one per `INTERVAL_S`): the newest value waits for the next
slot. Each write is revision-checked and never touches a status record that has already ended;
the worker puts the last value into the job's final record (`Reporter.stamp`), so it is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

import nats.errors
import nats.js.errors

from naq_ipy.client.bridge import bridge_loop, run_sync
from naq_ipy.errors import ConfigurationError, ConflictError, NaqException
from naq_ipy.status.results import JobStatus, read_status, write_status
from naq_ipy.wire.connection import Connection, get_connection
from naq_ipy.wire.settings import ConnectionSettings

logger = logging.getLogger(__name__)

INTERVAL_S = 0.25
MESSAGE_MAX = 200
CONFLICT_RETRIES = 3
FLUSH_TIMEOUT_S = 5.0

Value = tuple[float, str | None]


def check_fraction(fraction: float) -> float:
    """`fraction` as a float clamped to 0..1; ConfigurationError for anything but a finite number."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not math.isfinite(fraction):
        raise ConfigurationError(f"progress takes a number between 0 and 1, got {fraction!r}")
    return min(max(float(fraction), 0.0), 1.0)


def check_message(message: str | None) -> str | None:
    """`message` on one line, at most `MESSAGE_MAX` characters (None stays None)."""
    if message is None:
        return None
    flat = " ".join(str(message).split())
    return flat if len(flat) <= MESSAGE_MAX else flat[: MESSAGE_MAX - 1] + "…"


async def write_progress(conn: Connection, job_id: str, fraction: float, message: str | None) -> bool:
    """Store progress in the job's status record; False when the record is missing or has ended."""
    for _ in range(CONFLICT_RETRIES):
        status = await read_status(conn, job_id)
        if status is None or status.ended:
            return False
        try:
            await write_status(conn, status.evolve(progress=fraction, message=message), revision=status.revision)
            return True
        except ConflictError:
            pass  # the worker (or a cancel) wrote in between: read again
    return False


class Reporter:
    """The rate-limited progress writer of one running job; `report` is safe from any thread.

    Writes run on `loop` (None: the sync bridge's, started at the first report), through `conn`
    if given, else the pooled connection for `settings`; at most one per `interval_s` seconds.
    """

    def __init__(self, job_id: str, settings: ConnectionSettings, loop: asyncio.AbstractEventLoop | None = None,
                 conn: Connection | None = None, interval_s: float = INTERVAL_S,
                 ready: asyncio.Future[Any] | None = None) -> None:
        self.job_id = job_id
        self._ready = ready  # the job's `running` record: progress is written onto it, so after it
        self.settings = settings
        self._loop = loop
        self._conn = conn
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._latest: Value | None = None
        self._written: Value | None = None
        self._signalled = False
        self._closed = False
        self._delegated = False
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def report(self, fraction: float, message: str | None = None) -> None:
        """Remember the newest value and wake the writer (at most once per write slot)."""
        with self._lock:
            if self._closed:
                return
            kept = message if message is not None else (self._latest[1] if self._latest else None)
            self._latest = (fraction, kept)
            if self._signalled:
                return
            self._signalled = True
            loop = self._loop = self._loop or bridge_loop()
        with contextlib.suppress(RuntimeError):  # the loop closed under a job thread that outlived its worker
            loop.call_soon_threadsafe(self._wake)

    @property
    def reported(self) -> bool:
        """True once the job reported anything."""
        return self._latest is not None

    def _wake(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump(), name=f"naq-progress-{self.job_id}")
        self._event.set()

    async def _pump(self) -> None:
        if self._ready is not None:
            await asyncio.gather(asyncio.shield(self._ready), return_exceptions=True)
        while True:
            await self._event.wait()
            self._event.clear()
            with self._lock:
                self._signalled = False
            await self._flush()
            await asyncio.sleep(self._interval_s)

    async def _flush(self) -> None:
        with self._lock:
            value = self._latest
        if value is None or value == self._written:
            return
        try:
            conn = self._conn or await get_connection(self.settings)
            await write_progress(conn, self.job_id, *value)
            self._written = value
        except (NaqException, nats.errors.Error, OSError) as e:  # progress is best effort: never fail the job
            logger.warning("job %s: progress not stored: %s", self.job_id, e)

    async def stop(self) -> None:
        """Take no more reports and stop the writer; a child's last value is read back from its record."""
        with self._lock:
            self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._delegated and self._conn is not None:
            await self._read_back(self._conn)

    async def _read_back(self, conn: Connection) -> None:
        try:
            status = await read_status(conn, self.job_id)
        except (NaqException, nats.errors.Error, OSError) as e:  # best effort, like every progress write
            logger.warning("job %s: progress of its process not read back: %s", self.job_id, e)
            return
        if status is not None and status.progress is not None:
            with self._lock:
                self._latest = (status.progress, status.message)

    async def aclose(self) -> None:
        """Stop, then write the newest value if it is not stored yet (a child's end of a job)."""
        await self.stop()
        await self._flush()

    def delegate(self) -> ConnectionSettings:
        """Let a child process write this job's progress (with the settings returned)."""
        self._delegated = True
        return self.settings

    def stamp(self, status: JobStatus) -> JobStatus:
        """`status` carrying the newest progress and message reported (for the job's final record)."""
        with self._lock:
            latest = self._latest
        return status if latest is None else replace(status, progress=latest[0], message=latest[1])


_current: ContextVar[Reporter | None] = ContextVar("naq_current_job", default=None)


def current_job_id() -> str | None:
    """The id of the job running in this context, or None outside a job."""
    reporter = _current.get()
    return reporter.job_id if reporter is not None else None


def delegate_to_child() -> ConnectionSettings | None:
    """Hand the current job's progress to its process-mode child: the settings it writes with (None: no job)."""
    reporter = _current.get()
    return reporter.delegate() if reporter is not None else None


@contextlib.contextmanager
def _current_reporter(reporter: Reporter) -> Iterator[Reporter]:
    token = _current.set(reporter)
    try:
        yield reporter
    finally:
        _current.reset(token)


@contextlib.asynccontextmanager
async def reporting(job_id: str, conn: Connection,
                    ready: asyncio.Future[Any] | None = None) -> AsyncIterator[Reporter]:
    """Worker side, around one run: make `job_id` current; afterwards `stamp` the final record with it.

    `ready` is the write of the job's `running` record; progress waits for it.
    """
    reporter = Reporter(job_id, conn.settings, asyncio.get_running_loop(), conn, ready=ready)
    try:
        with _current_reporter(reporter):
            yield reporter
    finally:
        await reporter.stop()


@contextlib.contextmanager
def child_reporting(job_id: str, settings: ConnectionSettings | None) -> Iterator[None]:
    """Process-mode child side: report through this process's sync bridge; no-op without `settings`."""
    if settings is None:
        yield
        return
    reporter = Reporter(job_id, settings)
    try:
        with _current_reporter(reporter):
            yield
    finally:
        if reporter.reported:  # most jobs report nothing: no bridge, no connection for them
            _flush_in_child(reporter)


def _flush_in_child(reporter: Reporter) -> None:
    try:
        run_sync(reporter.aclose(), FLUSH_TIMEOUT_S)
    except (TimeoutError, NaqException) as e:
        logger.warning("job %s: last progress not stored: %s", reporter.job_id, e)


def progress(fraction: float, message: str | None = None) -> None:
    """Report how far the current job is (0..1) and what it does; a no-op outside a job.

    `message` (one line, cut to 200 characters) stays until another one is given. Stored at
    most 4 times a second; the newest value is always stored by the time the job ends.
    """
    value, text = check_fraction(fraction), check_message(message)
    reporter = _current.get()
    if reporter is not None:
        reporter.report(value, text)


async def progress_async(fraction: float, message: str | None = None) -> None:
    """`progress` for coroutine jobs: reports, then yields once so the writer gets to run."""
    progress(fraction, message)
    await asyncio.sleep(0)
