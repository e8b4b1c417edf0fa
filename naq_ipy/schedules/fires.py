"""The scheduler's pure parts: which due times of an entry fire now, what follows, and its view of the store.

A run is *missed* when the entry's next run is more than `grace_s` before now (the scheduler
was down, or the entry was resumed late). Per entry `misfire`:

- `once` (default): one catch-up run, for the earliest missed due time, then the next regular run after now;
- `skip`: no run; the next regular run after now;
- `all`: every due time up to now, oldest first, at most `max_catch_up`, then the next regular run after now.

Due times within the grace window all fire (at most `max_catch_up`). Every due time is a point of
the entry's own grid (`next_run_utc` stepped by its interval or cron), so every scheduler that
reads the same record computes the same run ids; a one-off entry, or one whose `repeat` reaches
0, is done (the scheduler deletes it). `ScheduleView` is the scheduler's copy of the store.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

from naq_ipy.errors import ConfigurationError, SerializationError
from naq_ipy.schedules.record import ScheduledJob, validate_misfire, validate_timing
from naq_ipy.wire import names
from naq_ipy.wire.names import KV_DELETE_OPERATIONS

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class FirePlan:
    """What to do with one entry now: the runs to publish (UTC seconds) and the entry's next state."""

    due_times: tuple[float, ...]
    next_run_utc: float | None
    repeat_left: int | None
    done: bool


def run_id(record: ScheduledJob, due_utc: float) -> str:
    """The job id of the run of `record` due at `due_utc`: `<key>.<due ms>`, or a one-off's own id."""
    if record.schedule_type == "once":
        return record.job_id
    return names.run_id(record.key, due_utc)


def due_grid(record: ScheduledJob) -> Iterator[float]:
    """The entry's due times from `next_run_utc` on, ascending (one item for a one-off)."""
    start = record.next_run_utc
    if record.schedule_type == "interval":
        assert record.interval_s is not None
        step = 0
        while True:
            yield start + step * record.interval_s
            step += 1
    due: float | None = start
    while due is not None:
        yield due
        due = record.next_after(due)


def next_regular_run(record: ScheduledJob, now_utc: float) -> float | None:
    """The first point of the entry's grid strictly after `now_utc` (None for a one-off)."""
    if record.schedule_type == "interval":
        assert record.interval_s is not None
        start, step = record.next_run_utc, record.interval_s
        count = max(0, math.floor((now_utc - start) / step) + 1)
        while start + count * step <= now_utc:  # float rounding can leave it one step short
            count += 1
        return start + count * step
    return record.next_after(now_utc)


def check_plannable(record: ScheduledJob, key: str) -> None:
    """Raise SerializationError unless `record` is stored under its own key with a usable timing."""
    try:
        if record.key != key:
            raise ConfigurationError(f"its key field is {record.key!r}")
        validate_misfire(record.misfire)
        if record.schedule_type != "once":
            kind = validate_timing(cron=record.cron, interval_s=record.interval_s, tz=record.tz, repeat=None,
                                   misfire=record.misfire)
            if kind != record.schedule_type:
                raise ConfigurationError(f"schedule type {record.schedule_type!r} with {kind} fields")
    except ConfigurationError as e:
        raise SerializationError(f"unusable scheduled-job record: {e}") from e


def plan_fires(record: ScheduledJob, now_utc: float, grace_s: float = 60.0, max_catch_up: int = 100) -> FirePlan:
    """Plan the fires of `record` at server time `now_utc` by its misfire policy and repeat count."""
    if record.paused or record.next_run_utc > now_utc:
        return FirePlan((), record.next_run_utc, record.runs_left, False)
    missed = record.next_run_utc < now_utc - grace_s
    policy = record.misfire if missed else "all"
    if policy == "skip":
        dues: tuple[float, ...] = ()
    elif policy == "once":
        dues = (record.next_run_utc,)
    else:
        dues = tuple(_while_due(due_grid(record), now_utc, max(1, max_catch_up)))
    repeat_left = None
    if record.runs_left is not None:
        dues = dues[: max(record.runs_left, 0)]
        repeat_left = max(record.runs_left, 0) - len(dues)
    next_run = next_regular_run(record, now_utc)
    done = next_run is None or repeat_left == 0
    return FirePlan(dues, None if done else next_run, repeat_left, done)


def _while_due(grid: Iterator[float], now_utc: float, limit: int) -> Iterator[float]:
    """At most `limit` items of `grid`, stopping at the first one after `now_utc`."""
    for due in islice(grid, limit):
        if due > now_utc:
            return
        yield due


def advanced(record: ScheduledJob, plan: FirePlan, now_utc: float) -> ScheduledJob:
    """`record` after the fires of `plan` (not done): run count up, runs left (stored `repeat`) down, next run."""
    assert plan.next_run_utc is not None
    changes: dict[str, Any] = {
        "next_run_utc": plan.next_run_utc, "repeat": plan.repeat_left,
        "run_count": record.run_count + len(plan.due_times), "updated_at": now_utc,
    }
    if plan.due_times:
        last = plan.due_times[-1]
        changes.update(last_run_utc=last, last_run_id=run_id(record, last))
    return replace(record, **changes)


@dataclass
class _Entry:
    revision: int
    record: ScheduledJob | None  # None: corrupt
    blocked: bool = False  # lost a revision check at this revision: wait for the watch


class ScheduleView:
    """The scheduler's copy of `naq_scheduled_jobs`, fed by the watch and by its own writes."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.corrupt_keys: set[str] = set()
        self._gone: dict[str, int] = {}  # key -> last revision this scheduler deleted
        self._retry: dict[str, tuple[float, float]] = {}  # key -> (not before, last delay) after failed fires

    def _stale(self, key: str, revision: int) -> bool:
        known = self.entries.get(key)
        return revision <= max(known.revision if known else 0, self._gone.get(key, 0))

    def apply(self, key: str, revision: int, operation: str | None, value: bytes | None) -> bool:
        """Take one watch entry; False if it is older than what is known (our own write came first)."""
        if self._stale(key, revision):
            return False
        self._retry.pop(key, None)
        if operation in KV_DELETE_OPERATIONS:
            self.entries.pop(key, None)
            self._gone.pop(key, None)
            self.corrupt_keys.discard(key)
            return True
        try:
            record = ScheduledJob.from_bytes(value or b"", revision)
            check_plannable(record, key)
            plan_fires(record, record.next_run_utc)  # its timing computes: the timer loop must never trip on it
        except (SerializationError, ConfigurationError) as e:
            self.mark_corrupt(key, revision, e)
            return True
        self.entries[key] = _Entry(revision, record)
        self.corrupt_keys.discard(key)
        return True

    def mark_corrupt(self, key: str, revision: int, error: Exception) -> None:
        """Skip `key` until a new revision arrives; logged once per revision."""
        logger.warning("corrupt scheduled job %r (revision %d) skipped: %s", key, revision, error)
        self.entries[key] = _Entry(revision, None)
        self.corrupt_keys.add(key)

    def wrote(self, record: ScheduledJob) -> None:
        """Our own revision-checked update succeeded (unless the watch already brought a newer one)."""
        if not self._stale(record.key, record.revision):
            self.entries[record.key] = _Entry(record.revision, record)

    def deleted(self, key: str, revision: int) -> None:
        """Our own revision-checked delete of `key` at `revision` succeeded."""
        known = self.entries.get(key)
        if known is not None and known.revision <= revision:
            del self.entries[key]
        self._gone[key] = max(revision, self._gone.get(key, 0))

    def block(self, key: str, revision: int) -> None:
        """`key` changed elsewhere since `revision`: do not fire it again until the watch catches up."""
        entry = self.entries.get(key)
        if entry is not None and entry.revision == revision:
            entry.blocked = True

    def prune(self, present: set[str]) -> None:
        """After a new watch's initial values: forget keys that no longer exist."""
        for key in set(self.entries) - present:
            del self.entries[key]
            self.corrupt_keys.discard(key)
        for key in set(self._gone) - present:
            del self._gone[key]

    def fire_failed(self, key: str, now_utc: float, min_s: float, max_s: float) -> None:
        """A fire of `key` failed: retry it (alone) after a delay doubling from `min_s` up to `max_s`."""
        last = self._retry.get(key, (0.0, 0.0))[1]
        delay = min(max(2 * last, min_s), max_s)
        self._retry[key] = (now_utc + delay, delay)

    def fire_done(self, key: str) -> None:
        """A fire of `key` went through: no more delay for it."""
        self._retry.pop(key, None)

    def _active(self) -> list[ScheduledJob]:
        return [e.record for e in self.entries.values() if e.record is not None and not e.blocked
                and not e.record.paused]

    def _ready_at(self, record: ScheduledJob) -> float:
        return max(record.next_run_utc, self._retry.get(record.key, (0.0, 0.0))[0])

    def due(self, now_utc: float) -> list[ScheduledJob]:
        """Active entries due at `now_utc` (one whose fire failed: once its retry delay passed)."""
        return [r for r in self._active() if self._ready_at(r) <= now_utc]

    def next_due(self) -> float | None:
        """The earliest time an active entry is due (its next run, or its retry after a failed fire)."""
        return min((self._ready_at(r) for r in self._active()), default=None)
