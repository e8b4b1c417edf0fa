"""Waiting on many jobs through one KV watch of `naq_job_status`, and the recent runs of a schedule.

`wait(jobs)` reads the bucket's current records, then its live changes, counting the given jobs
as they end (never a status request per job); `wait_sync` is its blocking twin (`naq_ipy.wait` adds
one live progress bar inside a Jupyter kernel). Runs of a schedule `key` have the job ids
`<key>.<due ms>` and `<key>.now-<ms>`, so `recent_runs(key)` is one watch of `<key>.>`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nats.js.kv import KeyValue

from naq_ipy.client.bridge import run_sync
from naq_ipy.client.job import Job, job_ids
from naq_ipy.errors import ConfigurationError, JobExecutionError, SerializationError
from naq_ipy.status.results import FINISHED, RETRYING, RUNNING, TERMINAL, JobStatus
from naq_ipy.wire.connection import get_connection, nats_errors
from naq_ipy.wire.names import JOB_STATUS_KV_NAME, run_due_ms
from naq_ipy.wire.settings import ConnectionSettings, validate_key

logger = logging.getLogger(__name__)

DONE, FAILED, ACTIVE, WAITING = "done", "failed", "running", "queued"

Jobs = Iterable[Job | str]
OnUpdate = Callable[["WaitResult"], None]


@dataclass(frozen=True)
class WaitResult:
    """Where `total` jobs stand: `done` finished, `failed` failed/cancelled/rejected, `running`, `queued`.

    `queued` counts jobs with no status record yet (waiting in a queue or a schedule);
    `elapsed_s` is the time waited in seconds.
    """

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    failed_ids: tuple[str, ...] = ()
    elapsed_s: float = 0.0

    @property
    def queued(self) -> int:
        """Jobs not started yet."""
        return self.total - self.done - self.failed - self.running

    @property
    def ended(self) -> int:
        """Jobs that ended, well or not."""
        return self.done + self.failed

    @property
    def complete(self) -> bool:
        """True when every job has ended."""
        return self.ended == self.total

    def __repr__(self) -> str:
        return (f"<WaitResult {self.ended} of {self.total} ended: {self.done} done, {self.failed} failed, "
                f"{self.running} running, {self.queued} queued ({self.elapsed_s:.1f} s)>")


def _kind(state: str) -> str:
    if state == FINISHED:
        return DONE
    if state in (RUNNING, RETRYING):
        return ACTIVE
    return FAILED if state in TERMINAL else WAITING


class _Tally:
    """Counts kept up to date as status records arrive, one kind per job."""

    def __init__(self, job_ids: list[str]) -> None:
        self.ids = set(job_ids)
        self.total = len(job_ids)
        self.kinds: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self.failed: dict[str, None] = {}
        self.started = time.monotonic()

    def take(self, entry: KeyValue.Entry, raise_on_failure: bool) -> bool:
        """Count one watch entry; True if it changed a count. JobExecutionError for a failure if asked."""
        if entry.key not in self.ids or not entry.value or entry.operation is not None:
            return False
        try:
            status = JobStatus.from_bytes(entry.value, entry.revision or 0)
        except SerializationError as e:
            logger.warning("skipping status of job %s: %s", entry.key, e)
            return False
        kind, old = _kind(status.status), self.kinds.get(entry.key)
        if kind == FAILED and raise_on_failure:
            raise JobExecutionError(f"job {status.job_id} {status.status}: {status.error or 'no error recorded'}",
                                    job_id=status.job_id, traceback=status.traceback)
        if kind == old:
            return False
        if old is not None:
            self.counts[old] -= 1
        self.kinds[entry.key], self.counts[kind] = kind, self.counts[kind] + 1
        if kind == FAILED:
            self.failed[entry.key] = None
        else:
            self.failed.pop(entry.key, None)
        return True

    def result(self) -> WaitResult:
        """The counts now."""
        return WaitResult(self.total, self.counts[DONE], self.counts[FAILED], self.counts[ACTIVE],
                          tuple(self.failed), time.monotonic() - self.started)


def job_ids_and_url(jobs: Jobs) -> tuple[list[str], str | ConnectionSettings | None]:
    """The distinct job ids (in order) of Jobs or ids, and the server of the first Job that knows it."""
    items = [jobs] if isinstance(jobs, Job | str) else list(jobs)
    ids = dict.fromkeys(job_ids(items, "wait takes Jobs or job ids"))
    url = next((item.url for item in items if isinstance(item, Job) and item.url), None)
    return list(ids), url


async def _follow(watcher: KeyValue.KeyWatcher, tally: _Tally, raise_on_failure: bool,
                  on_update: OnUpdate | None) -> None:
    live = False
    async for entry in watcher:
        if entry is None:
            live = True
        elif not tally.take(entry, raise_on_failure) or not live:
            continue
        result = tally.result()
        if on_update is not None:
            on_update(result)
        if result.complete:
            return


async def wait(jobs: Jobs, timeout: float | None = None, raise_on_failure: bool = False, *,
               url: str | ConnectionSettings | None = None, on_update: OnUpdate | None = None) -> WaitResult:
    """Wait until every job has ended, or `timeout` seconds passed (then the counts so far, `complete` False).

    `raise_on_failure`: raise JobExecutionError (with the remote traceback) at the first failed
    job. `url` defaults to the server of the first Job; `on_update(result)` is called on each change.
    """
    ids, job_url = job_ids_and_url(jobs)
    tally = _Tally(ids)
    if not ids:
        return tally.result()
    conn = await get_connection(url or job_url)
    kv = await conn.kv(JOB_STATUS_KV_NAME)
    async with nats_errors(conn.settings):
        watcher = await kv.watchall()
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            await _follow(watcher, tally, raise_on_failure, on_update)
    except TimeoutError:
        if not deadline.expired():
            raise
    finally:
        await watcher.stop()
    return tally.result()


def wait_sync(jobs: Jobs, timeout: float | None = None, raise_on_failure: bool = False, *,
              url: str | ConnectionSettings | None = None) -> WaitResult:
    """Blocking `wait` through the sync bridge (`naq_ipy.wait` adds a live progress bar in a kernel)."""
    return run_sync(wait(jobs, timeout, raise_on_failure, url=url))


async def recent_runs(key: str, limit: int = 10, url: str | ConnectionSettings | None = None) -> list[JobStatus]:
    """The status records of the latest `limit` runs of schedule `key`, newest first."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"limit must be an integer >= 1, got {limit!r}")
    conn = await get_connection(url)
    kv = await conn.kv(JOB_STATUS_KV_NAME)
    async with nats_errors(conn.settings):
        watcher = await kv.watch(f"{validate_key(key)}.>")
    runs: list[tuple[int, JobStatus]] = []
    try:
        async for entry in watcher:
            if entry is None:
                break
            due_ms = run_due_ms(entry.key, key)
            if due_ms is not None and entry.value and entry.operation is None:
                try:
                    runs.append((due_ms, JobStatus.from_bytes(entry.value, entry.revision or 0)))
                except SerializationError as e:  # one bad record must not hide the others
                    logger.warning("skipping status of run %s: %s", entry.key, e)
    finally:
        await watcher.stop()
    runs.sort(key=lambda run: run[0], reverse=True)
    return [status for _, status in runs[:limit]]
