"""Cancel jobs: a revision-checked write of each job's status record, many jobs in one pipelined round.

A job that is not running becomes `cancelled` at once; a running one becomes `stopping`, and the
worker that runs it writes `cancelled` once its call stopped. Every write is checked against the
revision that was read, and the worker writes `running` and every outcome the same way, so a
cancel and a finish cannot both win: the loser reads the record again and follows it. Jobs with
no record yet are looked for in the schedule store (a delayed job: its entry is deleted) and in
the queues (one pass over the jobs stream); ids found nowhere are `not found`. After the writes
one notice on `naq.control.cancel` wakes the workers, which stop what they run of those jobs.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from naq_ipy.client.bridge import run_sync
from naq_ipy.client.job import Job
from naq_ipy.errors import ConfigurationError, ConflictError, JobNotFoundError, RefusedError, SerializationError
from naq_ipy.schedules.record import ScheduledJob
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.status import results
from naq_ipy.status.queued import find_queued
from naq_ipy.status.results import JobStatus, read_status_or_stand_in
from naq_ipy.wire.connection import Connection, get_connection, message_headers, nats_errors
from naq_ipy.wire.names import CANCEL_SUBJECT, EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER, JOB_STATUS_KV_NAME, kv_subject
from naq_ipy.wire.publish import publish_many
from naq_ipy.wire.settings import DEFAULT_RESULT_TTL_S, ConnectionSettings, validate_key

logger = logging.getLogger(__name__)

CONFLICT_ROUNDS = 5
READ_WINDOW = 500  # status reads in flight at once
NOTICE_IDS = 1000  # job ids per cancel notice (32-character ids: ~35 KB)


class Outcome(StrEnum):
    """What a cancel did to one job."""

    CANCELLED = "cancelled"
    ALREADY_FINISHED = "already finished"
    NOT_FOUND = "not found"


@dataclass(frozen=True)
class CancelReport:
    """What a cancel did, job by job (in the order asked); `report[job_id]` is an Outcome."""

    outcomes: Mapping[str, Outcome]

    def __getitem__(self, job_id: str) -> Outcome:
        return self.outcomes[job_id]

    def __len__(self) -> int:
        return len(self.outcomes)

    def ids(self, outcome: Outcome) -> list[str]:
        """The job ids with `outcome`."""
        return [job_id for job_id, got in self.outcomes.items() if got is outcome]

    def summary(self) -> str:
        """`2 cancelled, 1 already finished` (outcomes that happened, in a fixed order)."""
        counts = [(len(self.ids(outcome)), outcome) for outcome in Outcome]
        return ", ".join(f"{n:,} {outcome}" for n, outcome in counts if n) or "nothing to cancel"

    def text(self) -> str:
        """One line per job (`<id>: <outcome>`) for a few jobs, else the summary."""
        if len(self.outcomes) > 10:
            return self.summary()
        return "\n".join(f"{job_id}: {outcome}" for job_id, outcome in self.outcomes.items())

    def __repr__(self) -> str:
        return f"<CancelReport {self.summary()}>"


def who() -> str:
    """`user@host` of this process, recorded with a cancel."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


def cancelled_record(record: JobStatus, by: str | None) -> JobStatus:
    """`record` as `cancelled` now, by `by`."""
    return record.evolve(status=results.CANCELLED, finished_at=time.time(), cancelled_by=by,
                         error=f"cancelled by {by or '?'}")


def job_ids(jobs: Job | str | Iterable[Job | str]) -> list[str]:
    """Distinct job ids (in order) from a Job, an id, or an iterable of them; ConfigurationError otherwise."""
    items = [jobs] if isinstance(jobs, Job | str) else list(jobs)
    ids = []
    for item in items:
        job_id = item.job_id if isinstance(item, Job) else item
        if not isinstance(job_id, str):
            raise ConfigurationError(f"cancel takes Jobs or job ids, got {item!r}")
        ids.append(validate_key(job_id, "job id"))
    return list(dict.fromkeys(ids))


async def cancel(jobs: Job | str | Iterable[Job | str], url: str | ConnectionSettings | None = None, *,
                 by: str | None = None) -> CancelReport:
    """Cancel jobs (Jobs or ids): queued ones never start, running ones are stopped; see CancelReport."""
    items = [jobs] if isinstance(jobs, Job | str) else list(jobs)
    ids = job_ids(items)
    conn = await get_connection(url)
    by = by or who()
    outcomes: dict[str, Outcome] = {}
    records = await _read_all(conn, ids)
    missing = [job_id for job_id in ids if records[job_id] is None]
    scheduled = await _scheduled(conn, missing)
    # a Job object was made to be enqueued: only bare ids are looked for in the queues (a pass over them)
    made = {item.job_id for item in items if isinstance(item, Job)}
    queued = made | await find_queued(conn, set(missing) - scheduled - made)
    unseen = [job_id for job_id in missing if job_id not in scheduled | queued]
    # a job can run and be acked between the first read and the look into the queue: read once more
    records.update(await _read_all(conn, unseen))
    outcomes.update((job_id, Outcome.NOT_FOUND) for job_id in unseen if records[job_id] is None)
    todo = {job_id: records[job_id] for job_id in ids if job_id not in outcomes}
    written: list[str] = []
    for _ in range(CONFLICT_ROUNDS):
        writes = _decide(todo, by, outcomes)
        lost = await _write_all(conn, writes)
        written += [job_id for job_id in writes if job_id not in lost]
        outcomes.update((job_id, Outcome.CANCELLED) for job_id in writes if job_id not in lost)
        if not lost:
            break
        todo = await _read_all(conn, lost)
    else:
        raise ConflictError(f"{len(todo)} job status record(s) kept changing; they were not cancelled")
    await _unschedule(conn, [job_id for job_id in written if job_id in scheduled])
    await _notify(conn, written)
    return CancelReport({job_id: outcomes[job_id] for job_id in ids})


def _decide(todo: Mapping[str, JobStatus | None], by: str,
            outcomes: dict[str, Outcome]) -> dict[str, tuple[JobStatus, int]]:
    """The record to write (and the revision it replaces) per job; settled ones go into `outcomes`."""
    writes = {}
    for job_id, record in todo.items():
        if record is None:
            writes[job_id] = (cancelled_record(JobStatus(job_id=job_id, status=results.QUEUED), by), 0)
        elif record.status == results.CANCELLED or record.status == results.STOPPING:
            outcomes[job_id] = Outcome.CANCELLED
        elif record.ended:
            outcomes[job_id] = Outcome.ALREADY_FINISHED
        elif record.status == results.RUNNING:
            writes[job_id] = (record.evolve(status=results.STOPPING, cancelled_by=by), record.revision)
        else:
            writes[job_id] = (cancelled_record(record, by), record.revision)
    return writes


async def _read_all(conn: Connection, ids: list[str]) -> dict[str, JobStatus | None]:
    """Every job's status record, `READ_WINDOW` reads in flight at a time."""
    records: dict[str, JobStatus | None] = {}
    for start in range(0, len(ids), READ_WINDOW):
        window = ids[start:start + READ_WINDOW]
        records.update(zip(window, await asyncio.gather(*(read_status_or_stand_in(conn, job_id) for job_id in window)),
                           strict=True))
    return records


async def _write_all(conn: Connection, writes: Mapping[str, tuple[JobStatus, int]]) -> list[str]:
    """Write the records pipelined, each only over its revision; the ids whose revision check lost."""
    items = list(writes.items())
    messages = [(kv_subject(JOB_STATUS_KV_NAME, job_id), record.to_bytes(conn.settings), None,
                 message_headers(None, {EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: str(revision)}, DEFAULT_RESULT_TTL_S))
                for job_id, (record, revision) in items]
    try:
        await publish_many(conn, messages)
    except RefusedError as e:
        return [items[index][0] for index in e.refused]  # type: ignore[index]
    return []


async def _scheduled(conn: Connection, ids: list[str]) -> set[str]:
    """Those of `ids` that wait in the schedule store as delayed jobs (one pass over the store's records)."""
    if not ids:
        return set()
    wanted = set(ids)
    return {record.key for record in await ScheduledJobManager(conn.settings).list()
            if record.key in wanted and is_delayed_job(record)}


def is_delayed_job(record: ScheduledJob) -> bool:
    """True for an entry of the schedule store that is one delayed job (`enqueue_at/in`), not a schedule."""
    return record.schedule_type == "once" and record.key == record.job_id


async def names_schedule(key: str, url: str | ConnectionSettings | None = None) -> bool:
    """True if `key` is the name of a schedule (an entry of the schedule store that is not a delayed job)."""
    try:
        record = await ScheduledJobManager(url).get(validate_key(key, "job id or schedule name"))
    except JobNotFoundError:
        return False
    except SerializationError:  # an unreadable entry: still a schedule, and still removable
        return True
    return not is_delayed_job(record)


async def _unschedule(conn: Connection, ids: list[str]) -> None:
    """Delete the schedule-store entries of cancelled delayed jobs (a fire racing this finds them cancelled)."""
    if ids:
        manager = ScheduledJobManager(conn.settings)
        for gone in await asyncio.gather(*(manager.cancel_job(job_id) for job_id in ids), return_exceptions=True):
            if isinstance(gone, BaseException) and not isinstance(gone, JobNotFoundError):  # fired meanwhile: fine
                raise gone


async def _notify(conn: Connection, ids: list[str]) -> None:
    """Tell every worker which jobs were cancelled (they look at their records before stopping anything)."""
    if not ids:
        return
    async with nats_errors(conn.settings):
        for start in range(0, len(ids), NOTICE_IDS):
            await conn.nc.publish(CANCEL_SUBJECT, json.dumps(ids[start:start + NOTICE_IDS]).encode())
        await conn.nc.flush()


def cancel_sync(jobs: Any, url: str | ConnectionSettings | None = None, *, by: str | None = None) -> CancelReport:
    """Blocking twin of `cancel` (through the sync bridge)."""
    return run_sync(cancel(jobs, url, by=by))
