"""The scheduler: fires due entries of `naq_scheduled_jobs` onto their queues, exactly once across schedulers.

- Its view of the store is one continuous KV watch (current values, then live updates; a delete
  drops the key); a timer sleeps until the earliest active next run, or until the watch changes
  something, and fires each due entry on the NATS server's clock (the host clock's offset is
  measured from a KV write's server timestamp every minute), never on its host's wall clock.
- A fire publishes the run to `naq.queue.<queue>` with `Nats-Msg-Id = <key>:<due ms>` (JetStream
  drops a second publish of the same fire inside its duplicate window), then advances the entry
  with a revision-checked update: run count, last run, repeat - 1, next run on the entry's own grid
  (misfire rules in `naq_ipy.schedules.fires`). A one-off entry, or one whose repeat reaches 0, is DELETED
  with a revision-checked delete. A lost revision check means another scheduler or a user changed
  the entry: it is left alone until the watch delivers the new revision.
- So several schedulers may run at once with no leader. Job bytes are never unpickled: only their
  header is rewritten (run id, schedule key, enqueue time). Paused entries never fire; a corrupt
  entry is logged once per revision, listed in `corrupt_keys` and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.kv import KeyValue

from naq_ipy.client.bridge import StopRequests, sync_twin
from naq_ipy.client.job import rewrite_header
from naq_ipy.errors import ConfigurationError, NaqConnectionError, NaqException, SerializationError
from naq_ipy.rules.times import from_timestamp
from naq_ipy.schedules.fires import FirePlan, ScheduleView, advanced, plan_fires, run_id
from naq_ipy.schedules.record import ScheduledJob
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.status.payload_sweep import sweep_forever
from naq_ipy.wire.connection import Connection, connect, get_connection, kv_write_checked, nats_errors, publish
from naq_ipy.wire.names import (
    SCHEDULED_JOBS_KV_NAME,
    SCHEDULER_CLOCK_KV_NAME,
    fire_msg_id,
    kv_stream,
    now_run_id,
    queue_subject,
)
from naq_ipy.wire.settings import ConnectionSettings, validate_key
from naq_ipy.wire.signing import signed_headers

logger = logging.getLogger(__name__)

CLOCK_REFRESH_S = 60.0
CLOCK_SAMPLES = 3
WATCH_POLL_S = 0.5
MAX_SLEEP_S = 30.0
RETRY_MIN_S = 0.25
RETRY_MAX_S = 5.0
LATE_CHECK_S = 1.0  # a fire this late re-reads its entry first
WATCH_LAG_MAX = 2000  # revisions the watch may lag behind our own latest write before fires wait for it
WATCH_LAG_PAUSE_S = 0.01
WATCH_STALL_S = 10.0  # a watch lagging this long without moving is started again


async def publish_run(conn: Connection, record: ScheduledJob, job_id: str, enqueue_time: float,
                      msg_id: str) -> api.PubAck:
    """Publish one run of `record` as job `job_id` (signed with the connection's key, if any); never unpickled."""
    data = rewrite_header(record.job_data, job_id=job_id, schedule_key=record.key, enqueue_time=enqueue_time)
    return await publish(conn, queue_subject(record.queue_name), data, msg_id=msg_id,
                         headers=signed_headers(conn.settings, data, record.queue_name))


def _raise_if_cancelled() -> None:
    """Re-raise a cancel of the current task that was swallowed on its way here.

    On Python 3.11, `asyncio.wait_for` (behind nats-py's `watcher.updates` and the timer's wait)
    returns the result instead of raising when its future completes together with a cancel: a
    busy scheduler then never stopped.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _iso(ts: float) -> str:
    return from_timestamp(ts).isoformat(timespec="milliseconds")


class Scheduler(StopRequests):
    """Fires scheduled jobs on time, exactly once even with several schedulers running.

    `clock` is the local wall clock (UTC seconds), corrected by the measured offset to the
    server's; `misfire_grace_s` is how late a run may be before it counts as missed;
    `max_catch_up` caps the catch-up runs of a `misfire="all"` entry. One event loop per instance.
    """

    def __init__(
        self, url: str | ConnectionSettings | None = None, *, scheduler_id: str | None = None,
        clock: Callable[[], float] = time.time, misfire_grace_s: float = 60.0, max_catch_up: int = 100,
    ) -> None:
        if misfire_grace_s < 0 or max_catch_up < 1:
            raise ConfigurationError("misfire_grace_s must be >= 0 and max_catch_up >= 1")
        self.settings = ConnectionSettings.resolve(url)
        self.scheduler_id = validate_key(scheduler_id or f"scheduler-{uuid.uuid4().hex[:12]}", "scheduler id")
        self.clock = clock
        self.misfire_grace_s = float(misfire_grace_s)
        self.max_catch_up = int(max_catch_up)
        self.clock_offset_s: float | None = None
        self._view = ScheduleView()
        self._draining: asyncio.Task[None] | None = None  # the task applying the current watch
        self._watched_seq = 0  # the newest revision of the store the watch delivered
        self._written_seq = 0  # the newest revision this scheduler wrote (since the watch started)
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._clock_ready = asyncio.Event()
        self._watch_ready = asyncio.Event()
        self._done = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Scheduler {self.scheduler_id} at {self.settings.safe_url}>"

    @property
    def corrupt_keys(self) -> set[str]:
        """Keys of entries that cannot be read (skipped until they change)."""
        return self._view.corrupt_keys

    def now(self) -> float:
        """The NATS server's time in UTC seconds, from the local clock and the measured offset."""
        return self.clock() + (self.clock_offset_s or 0.0)

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until the clock offset is known and the watch has delivered the current entries."""
        async with asyncio.timeout(timeout_s):
            await self._clock_ready.wait()
            await self._watch_ready.wait()

    async def stop(self) -> None:
        """Stop `run()` and wait until it has closed its connection."""
        self.request_stop()
        if self._loop is not None:
            await self._done.wait()

    async def run(self, *, handle_signals: bool = False) -> None:
        """Fire scheduled jobs until `stop()`; `handle_signals` stops on SIGINT/SIGTERM (main thread only)."""
        self._loop = asyncio.get_running_loop()
        self._done.clear()
        if self._stop_requested:
            self._stopping.set()
        signals = self._install_signals() if handle_signals else []
        serve = asyncio.create_task(self._serve(), name=f"naq-scheduler {self.scheduler_id}")
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait([serve, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serve, stopping):
                task.cancel()
            await asyncio.gather(serve, stopping, return_exceptions=True)
            for sig in signals:
                self._loop.remove_signal_handler(sig)
            self._stop_requested = False
            self._stopping.clear()
            self._loop = None
            self._done.set()
        if not serve.cancelled():
            serve.result()  # a failure to connect, or a crashed loop

    def _install_signals(self) -> list[signal.Signals]:
        if threading.current_thread() is not threading.main_thread():
            return []
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # no loop signal handlers on Windows
                loop.add_signal_handler(sig, self.request_stop)
                installed.append(sig)
        return installed

    async def _serve(self) -> None:
        self._conn = await connect(self.settings, name=f"naq-scheduler {self.scheduler_id}", retry_s=30)
        logger.info("scheduler %s connected to %s", self.scheduler_id, self.settings.safe_url)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watch_loop())
                group.create_task(self._clock_loop())
                group.create_task(self._timer_loop())
                group.create_task(sweep_forever(self._connection, self.clock))
        finally:
            await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await (await conn.kv(SCHEDULER_CLOCK_KV_NAME)).purge(self.scheduler_id)
        with contextlib.suppress(Exception):
            await conn.nc.close()
        self._clock_ready.clear()
        self._watch_ready.clear()
        logger.info("scheduler %s stopped", self.scheduler_id)

    @property
    def _connection(self) -> Connection:
        if self._conn is None:
            raise NaqConnectionError("the scheduler is not running")
        return self._conn

    async def _measure_clock(self) -> None:
        """Set `clock_offset_s` from the fastest of a few KV writes and their server timestamps."""
        conn = self._connection
        kv = await conn.kv(SCHEDULER_CLOCK_KV_NAME)
        samples = []
        async with nats_errors(self.settings):
            for _ in range(CLOCK_SAMPLES):
                sent = self.clock()
                seq = await kv.put(self.scheduler_id, b"clock")
                acked = self.clock()
                stored = await conn.js.get_msg(kv_stream(SCHEDULER_CLOCK_KV_NAME), seq=seq)
                if stored.time is None:
                    raise NaqException("the NATS server sent no message timestamp")
                samples.append((acked - sent, stored.time.timestamp() - (sent + acked) / 2))
        round_trip, offset = min(samples)
        if self.clock_offset_s is None or abs(offset - self.clock_offset_s) > 0.05:
            logger.info("clock offset to NATS server %+.1fms (round trip %.1fms)", offset * 1000, round_trip * 1000)
        self.clock_offset_s = offset
        self._clock_ready.set()
        self._wake.set()

    async def _clock_loop(self) -> None:
        while True:
            try:
                await self._measure_clock()
                delay = CLOCK_REFRESH_S
            except Exception as e:  # keep the last offset; the loop must outlive a server hiccup
                logger.warning("clock sync with NATS failed: %s", e or type(e).__name__)
                delay = RETRY_MAX_S if self.clock_offset_s is not None else RETRY_MIN_S
            await asyncio.sleep(delay)

    async def _watch_loop(self) -> None:
        backoff = RETRY_MIN_S
        while True:
            try:
                await self._watch()
                backoff = RETRY_MIN_S
            except Exception as e:  # server restart, JetStream not ready yet: watch again
                logger.warning("watch of %s failed: %s; retrying in %.2fs", SCHEDULED_JOBS_KV_NAME,
                               e or type(e).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)

    async def _watch(self) -> None:
        """One watcher, drained continuously, until the connection reconnects (its consumer is then gone)."""
        conn = self._connection
        kv = await conn.kv(SCHEDULED_JOBS_KV_NAME)
        async with nats_errors(self.settings):
            empty = (await kv.status()).values == 0
            watcher = await kv.watchall()
        self._written_seq = self._watched_seq = 0  # a bucket made again numbers its revisions from 1
        self._draining = drain = asyncio.create_task(self._drain(watcher, empty))
        reconnect = asyncio.create_task(_reconnected(conn))
        try:
            await asyncio.wait({drain, reconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (drain, reconnect):
                task.cancel()
            await asyncio.gather(drain, reconnect, return_exceptions=True)
            self._draining = None
            with contextlib.suppress(Exception):
                await watcher.stop()
        if drain.done() and not drain.cancelled() and drain.exception() is not None:
            raise drain.exception()  # type: ignore[misc]
        logger.info("watching %s again", SCHEDULED_JOBS_KV_NAME)

    async def _drain(self, watcher: KeyValue.KeyWatcher, empty: bool) -> None:
        """Apply every entry of `watcher` to the view; no timer per entry, so a backlog is taken in one go."""
        initial: set[str] | None = set()  # keys of the current values, until they are all in
        async for entry in watcher:
            _raise_if_cancelled()
            if isinstance(entry, KeyValue.Entry):
                self._watched_seq = max(self._watched_seq, entry.revision or 0)
                if initial is not None:
                    initial.add(entry.key)
                if self._view.apply(entry.key, entry.revision or 0, entry.operation, entry.value):
                    self._wake.set()
            # nats-py's "current values delivered" marker (None) can come before the values:
            # they are all in at the entry with nothing pending after it (or at once if none)
            if initial is not None and (not entry.delta if isinstance(entry, KeyValue.Entry) else empty):
                self._view.prune(initial)
                initial = None
                self._watch_ready.set()
                self._wake.set()

    async def _watch_caught_up(self) -> None:
        """Fire nothing while the watch lags WATCH_LAG_MAX revisions behind our own writes.

        Every fire's update comes back through the watch; a scheduler that fires faster than it
        reads would hold an ever longer backlog in memory. A watch that stays stuck is restarted.
        """
        stuck_since, seen = time.monotonic(), self._watched_seq
        while self._written_seq - self._watched_seq > WATCH_LAG_MAX:
            if self._watched_seq != seen:
                stuck_since, seen = time.monotonic(), self._watched_seq
            elif time.monotonic() - stuck_since > WATCH_STALL_S:
                logger.warning("watch of %s stuck %d revisions behind; watching again", SCHEDULED_JOBS_KV_NAME,
                               self._written_seq - self._watched_seq)
                self._written_seq = 0
                if self._draining is not None:
                    self._draining.cancel()
                return
            await asyncio.sleep(WATCH_LAG_PAUSE_S)

    async def _timer_loop(self) -> None:
        await self._clock_ready.wait()
        while True:
            _raise_if_cancelled()
            self._wake.clear()
            await self._watch_caught_up()
            due = self._view.due(self.now())
            results = await asyncio.gather(*(self._fire(record) for record in due))
            for record, fired in zip(due, results, strict=True):
                if fired:
                    self._view.fire_done(record.key)
                else:  # NATS is away, or this entry's fire fails: retry it less and less often, alone
                    self._view.fire_failed(record.key, self.now(), RETRY_MIN_S, RETRY_MAX_S)
            next_run = self._view.next_due()
            delay = MAX_SLEEP_S if next_run is None else min(max(next_run - self.now(), 0.0), MAX_SLEEP_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _fire(self, record: ScheduledJob) -> bool:
        """Publish the runs of a due entry and advance it; False if NATS failed (retried soon)."""
        now = self.now()
        try:
            plan = plan_fires(record, now, self.misfire_grace_s, self.max_catch_up)
            if now - record.next_run_utc > LATE_CHECK_S and not await self._still_current(record):
                return True
            if not plan.due_times:
                logger.info("skipped missed runs of %s (misfire %s)", record.key, record.misfire)
            for due in plan.due_times:
                rid = run_id(record, due)
                ack = await publish_run(self._connection, record, rid, due, fire_msg_id(record.key, due))
                if ack.duplicate:
                    logger.debug("run %s of %s was already published", rid, record.key)
                else:
                    logger.info("fired %s run %s due %s lag %.1fms", record.key, rid, _iso(due),
                                (self.now() - due) * 1000)
            await self._advance(record, plan, now)
        except (SerializationError, ConfigurationError) as e:
            self._view.mark_corrupt(record.key, record.revision, e)
        except Exception as e:  # a lost connection or a server hiccup: the loop goes on
            logger.warning("fire of %s failed: %s; retrying", record.key, e or type(e).__name__)
            return False
        return True

    async def _still_current(self, record: ScheduledJob) -> bool:
        """Re-read a late entry before firing it: a view that lagged past the duplicate window could fire twice."""
        kv = await self._connection.kv(SCHEDULED_JOBS_KV_NAME)
        try:
            async with nats_errors(self.settings):
                current = (await kv.get(record.key)).revision
        except nats.js.errors.KeyNotFoundError:
            current = None
        if current != record.revision:
            self._view.block(record.key, record.revision)
        return current == record.revision

    async def _advance(self, record: ScheduledJob, plan: FirePlan, now: float) -> None:
        """Write the entry's next state (or delete it when done), only if it is still at our revision."""
        kv = await self._connection.kv(SCHEDULED_JOBS_KV_NAME)
        new = None if plan.done else advanced(record, plan, now)
        revision = await kv_write_checked(kv, self.settings, record.key, new and new.to_bytes(), record.revision)
        if revision is None:
            logger.debug("scheduled job %s changed elsewhere since revision %d", record.key, record.revision)
            self._view.block(record.key, record.revision)
            return
        if new is None:
            self._view.deleted(record.key, record.revision)
            logger.info("schedule %s done after %d runs; entry deleted", record.key,
                        record.run_count + len(plan.due_times))
        else:
            self._view.wrote(replace(new, revision=revision))
            self._written_seq = max(self._written_seq, revision)


async def _reconnected(conn: Connection) -> None:
    """Return once `conn` reconnected: a watch's ordered consumer is gone with the old connection."""
    reconnects = conn.nc.stats["reconnects"]
    while conn.nc.stats["reconnects"] == reconnects:
        await asyncio.sleep(WATCH_POLL_S)
    logger.info("reconnected to NATS")


async def run_now(key: str, url: str | ConnectionSettings | None = None) -> str:
    """Publish one run of scheduled job `key` right away, leaving its timing alone; returns the run id."""
    record = await ScheduledJobManager(url).get(key)
    now = time.time()
    rid = now_run_id(record.key, now)
    await publish_run(await get_connection(url), record, rid, now, rid)
    logger.info("ran %s now as %s", record.key, rid)
    return rid


run_now_sync = sync_twin(run_now)
