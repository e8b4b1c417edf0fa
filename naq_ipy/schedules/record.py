"""The scheduled-job record stored in KV `naq_scheduled_jobs`, and its pure timing rules.

Stored as versioned JSON (`"v": 1`) with the serialized job base64-encoded inside, so
any client can read and list it without unpickling; never a pickled Python object.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from naq_ipy.client.job import Job, read_header
from naq_ipy.errors import ConfigurationError, SerializationError
from naq_ipy.rules.records import TIMESTAMP, checked, decode_object, integer, number, optional, text
from naq_ipy.rules.times import from_timestamp, next_cron_run, parse_duration, resolve_zone, validate_cron
from naq_ipy.wire.settings import KEY_MAX, QUEUE_NAME_MAX

RECORD_VERSION = 1
SCHEDULE_TYPES = ("cron", "interval", "once")
MISFIRE_POLICIES = ("once", "skip", "all")


class ScheduleState(StrEnum):
    """A scheduled job's state (str-valued: the stored JSON is the plain name)."""

    ACTIVE = "active"
    PAUSED = "paused"


STATUSES = tuple(ScheduleState)
UNREADABLE = "unreadable"  # the status of a stand-in for a record that cannot be read (listings only)
MIN_INTERVAL_S = 0.1  # run ids have millisecond resolution, and every fire costs a few round trips
MAX_INTERVAL_S = 100 * 366 * 24 * 3600.0
RECORD_MAX_BYTES = 64 << 20  # the largest max_payload a NATS server allows


def validate_timing(
    *, cron: str | None, interval_s: float | None, tz: str | None, repeat: int | None, misfire: str = "once"
) -> str:
    """Check a recurring schedule's options together; returns its type (`cron` or `interval`)."""
    if (cron is None) == (interval_s is None):
        raise ConfigurationError("give exactly one of cron or interval")
    if cron is not None:
        validate_cron(cron)
    elif not isinstance(interval_s, int | float):  # a stored record's field: seconds, never text
        raise ConfigurationError(f"interval must be a number of seconds, got {interval_s!r}")
    else:
        validate_interval(interval_s)
    if tz is not None:
        if cron is None:
            raise ConfigurationError("tz applies to cron schedules only")
        resolve_zone(tz)
    validate_repeat(repeat)
    validate_misfire(misfire)
    return "cron" if cron is not None else "interval"


def validate_interval(interval: timedelta | float | str) -> float:
    """An interval (seconds, timedelta or duration text such as '5m') in seconds, 0.1 s to 100 years."""
    seconds = parse_duration(interval)
    if not math.isfinite(seconds) or not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise ConfigurationError(f"interval must be a duration of {MIN_INTERVAL_S:g} s to 100 years, got {interval!r}")
    return seconds


def validate_repeat(repeat: int | None) -> int | None:
    """`repeat` is runs still to come (at creation: runs in total): None (forever) or an integer >= 1."""
    if repeat is not None and (isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1):
        raise ConfigurationError(f"repeat must be an integer >= 1 or None (forever), got {repeat!r}")
    return repeat


def validate_misfire(misfire: str) -> str:
    """One of `once`, `skip`, `all`."""
    if misfire not in MISFIRE_POLICIES:
        raise ConfigurationError(f"misfire must be one of {', '.join(MISFIRE_POLICIES)}, got {misfire!r}")
    return misfire


@dataclass(frozen=True)
class ScheduledJob:
    """One entry of `naq_scheduled_jobs`: a job and when it runs. Times are UTC unix seconds.

    `repeat` is stored as the runs still to come (None: forever): the scheduler counts it down as
    `run_count` goes up, so records written by earlier releases read the same. Read it through
    `runs_left` and `runs_total`, never by hand.
    """

    key: str
    job_id: str
    queue_name: str
    func_name: str
    job_data: bytes = field(repr=False)
    schedule_type: str
    next_run_utc: float
    cron: str | None = None
    tz: str | None = None
    interval_s: float | None = None
    repeat: int | None = None
    run_count: int = 0
    last_run_utc: float | None = None
    last_run_id: str | None = None
    status: str = ScheduleState.ACTIVE
    misfire: str = "once"
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    revision: int = field(default=0, compare=False)

    @property
    def next_run(self) -> datetime:
        """The next run as an aware UTC datetime."""
        return from_timestamp(self.next_run_utc)

    @property
    def runs_left(self) -> int | None:
        """Runs still to come; None for forever."""
        return self.repeat

    @property
    def runs_total(self) -> int | None:
        """Runs in total: those done plus those to come; None for forever."""
        return None if self.repeat is None else self.run_count + self.repeat

    @property
    def paused(self) -> bool:
        return self.status == ScheduleState.PAUSED

    def job(self) -> Job:
        """The stored job, unpickled (only where the code is trusted: workers, the owner)."""
        return Job.deserialize(self.job_data)

    def next_after(self, after_utc: float) -> float | None:
        """The run after `after_utc` by this schedule, or None for a one-off."""
        if self.schedule_type == "once":
            return None
        return first_run_utc(self.cron, self.interval_s, self.tz, after_utc)

    def describe(self) -> str:
        """The timing in a few words: `cron 0 6 * * * (Europe/Berlin)`, `every 30 s`, `once`."""
        if self.status == UNREADABLE:
            return "unreadable record"
        if self.schedule_type == "cron":
            return f"cron {self.cron}" + (f" ({self.tz})" if self.tz else "")
        if self.schedule_type == "interval":
            from naq_ipy.rules.times import format_duration

            return f"every {format_duration(self.interval_s or 0)}"
        return "once"

    def evolve(self, **changes: Any) -> ScheduledJob:
        """A copy with `changes` applied and `updated_at` set to now."""
        return replace(self, updated_at=time.time(), **changes)

    def to_bytes(self) -> bytes:
        """The stored JSON form."""
        data = asdict(self)
        data.pop("revision")
        data["job_data"] = base64.b64encode(self.job_data).decode()
        data["v"] = RECORD_VERSION
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, revision: int = 0) -> ScheduledJob:
        """Parse a stored record strictly (types, ranges, sizes); SerializationError for anything malformed."""
        what = "corrupt scheduled-job record"
        data = decode_object(raw, what, RECORD_MAX_BYTES)
        if data.pop("v", None) != RECORD_VERSION:
            raise SerializationError(f"{what}: missing or unknown record version")
        data = checked(data, _RECORD_SPEC, what, _REQUIRED)
        try:
            data["job_data"] = base64.b64decode(data["job_data"], validate=True)
            read_header(data["job_data"])
        except (binascii.Error, SerializationError) as e:
            raise SerializationError(f"{what}: job_data {e}") from None
        return cls(revision=revision, **data)

    @classmethod
    def unreadable(cls, key: str, revision: int, error: Exception) -> ScheduledJob:
        """A stand-in for a stored record that cannot be read: listed with status `unreadable`, never fired."""
        return cls(key=key, job_id=key, queue_name="?", func_name=" ".join(str(error).split())[:200],
                   job_data=b"", schedule_type="once", next_run_utc=0.0, status=UNREADABLE,
                   created_at=0.0, updated_at=0.0, revision=revision)

    def check(self) -> ScheduledJob:
        """This record if the store's reader accepts it; ConfigurationError (before any write) if not."""
        fields_ = {name: getattr(self, name) for name in _RECORD_SPEC if name != "job_data"}
        try:
            checked(fields_, _RECORD_SPEC, f"scheduled job {self.key!r}")
        except SerializationError as e:
            raise ConfigurationError(str(e)) from None
        return self


def first_run_utc(cron: str | None, interval_s: float | None, tz: str | None, now_utc: float | None = None) -> float:
    """The next run after `now_utc` (default: now) of a cron schedule in zone `tz`, or of an interval."""
    now_utc = time.time() if now_utc is None else now_utc
    if cron is not None:
        return next_cron_run(cron, from_timestamp(now_utc), tz).timestamp()
    assert interval_s is not None
    return now_utc + interval_s


def _one_of(options: tuple[str, ...]) -> Any:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {str(value)[:40]!r}")
        return value
    return check


_TIME = optional(TIMESTAMP)
_RECORD_SPEC = {
    "key": text(KEY_MAX), "job_id": text(KEY_MAX), "queue_name": text(QUEUE_NAME_MAX), "func_name": text(),
    "job_data": text(RECORD_MAX_BYTES), "schedule_type": _one_of(SCHEDULE_TYPES), "next_run_utc": TIMESTAMP,
    "cron": optional(text(200)), "tz": optional(text(100)),
    "interval_s": optional(number(MIN_INTERVAL_S, MAX_INTERVAL_S)),
    "repeat": optional(integer(0, 2**53)), "run_count": integer(0, 2**53), "last_run_utc": _TIME,
    "last_run_id": optional(text(KEY_MAX)), "status": _one_of(STATUSES), "misfire": _one_of(MISFIRE_POLICIES),
    "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
}
_REQUIRED = frozenset({"key", "job_id", "queue_name", "func_name", "job_data", "schedule_type", "next_run_utc"})


def new_record(
    job: Job, *, key: str, schedule_type: str, next_run_utc: float, cron: str | None = None,
    tz: str | None = None, interval_s: float | None = None, repeat: int | None = None,
    misfire: str = "once", paused: bool = False,
) -> ScheduledJob:
    """A fresh record for `job` (serializes it: unpicklable input fails here, before any write)."""
    return ScheduledJob(
        key=key, job_id=job.job_id, queue_name=job.queue_name, func_name=job.func_name,
        job_data=job.serialize(), schedule_type=schedule_type, next_run_utc=next_run_utc, cron=cron, tz=tz,
        interval_s=interval_s, repeat=repeat, misfire=misfire,
        status=ScheduleState.PAUSED if paused else ScheduleState.ACTIVE,
    )
