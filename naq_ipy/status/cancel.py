"""Cancel jobs: a cancel request per job in KV `naq_cancel_requests`, which workers turn into status changes.

A notebook may not write job statuses (docs/nats-permissions.conf). It reads every job's record:
ended ones are `already finished`, ones already cancelling stay `cancelled`, ids found nowhere (no
record, not in the schedule store, not in the queues) are `not found`. For every other job it writes
a request `{by, at}` (one pipelined batch), then deletes the schedule entries of delayed ones. Every
worker watches the requests (worker/cancel_watch.py): it stops the job if it runs there, never starts
one that was asked to stop, and records the cancel with a revision-checked write of the status:
`cancelled`, or `stopping` for a running job (its worker writes `cancelled` once the call stopped).

The call then waits, at most `CONFIRM_S`, for those writes on a subscription to the status records
opened before the first read, and reports what a worker recorded. With no live worker, or none
answering in time, the job is `cancel requested`: the request stays (as long as a result would, the
bucket's max age), no worker ever starts the job, the first worker that sees the request records it,
and `fetch_status` shows the change it will make meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from naq_ipy.client.bridge import run_sync
from naq_ipy.client.job import Job
from naq_ipy.errors import ConfigurationError, JobNotFoundError, NaqException, SerializationError
from naq_ipy.schedules.record import ScheduledJob
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.status.payload_sweep import drop_payloads, job_payload_names
from naq_ipy.status.queued import find_queued
from naq_ipy.status.results import CANCELS, CancelRequest, JobStatus, read_status_or_stand_in
from naq_ipy.status.workers import list_workers
from naq_ipy.wire.connection import Connection, get_connection, nats_errors
from naq_ipy.wire.names import CANCEL_REQUESTS_KV_NAME, JOB_STATUS_KV_NAME, kv_stream, kv_subject
from naq_ipy.wire.publish import publish_many
from naq_ipy.wire.settings import ConnectionSettings, validate_key

logger = logging.getLogger(__name__)

READ_WINDOW = 500  # status reads in flight at once
CONFIRM_S = 5.0  # how long a cancel waits for the workers to record it


class Outcome(StrEnum):
    """What a cancel did to one job."""

    CANCELLED = "cancelled"
    REQUESTED = "cancel requested"  # stored, not yet recorded by a worker: the job never starts, see the module doc
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
    if not ids:
        return CancelReport({})
    conn = await get_connection(url)
    async with StatusUpdates(conn, ids) as updates:  # opened first: no worker's write can slip past it
        outcomes, asked, delayed = await _look(conn, items, ids)
        await _request_all(conn, asked, by or who())
        unscheduled = [job_id for job_id in asked if job_id in delayed]
        await _unschedule(conn, unscheduled)
        await _drop_payloads_of(conn, [delayed[job_id].job_data for job_id in unscheduled])
        if asked and await list_workers(conn.settings):
            await updates.wait(asked, CONFIRM_S)
        outcomes.update((job_id, updates.seen.get(job_id, Outcome.REQUESTED)) for job_id in asked)
    await _withdraw(conn, [job_id for job_id in asked if outcomes[job_id] is Outcome.ALREADY_FINISHED])
    return CancelReport({job_id: outcomes[job_id] for job_id in ids})


async def _look(conn: Connection, items: list[Job | str], ids: list[str]
                ) -> tuple[dict[str, Outcome], list[str], dict[str, ScheduledJob]]:
    """What needs no request (outcome per job), the ids to ask a cancel for, and the delayed jobs among them."""
    records = await _read_all(conn, ids)
    missing = [job_id for job_id in ids if records[job_id] is None]
    delayed = await _scheduled(conn, missing)
    # a Job object was made to be enqueued: only bare ids are looked for in the queues (a pass over them)
    made = {item.job_id for item in items if isinstance(item, Job)}
    queued = made | await find_queued(conn, set(missing) - set(delayed) - made)
    unseen = {job_id for job_id in missing if job_id not in delayed and job_id not in queued}
    # a job can run and be acked between the first read and the look into the queue: read once more
    records.update(await _read_all(conn, list(unseen)))
    outcomes: dict[str, Outcome] = {}
    asked: list[str] = []
    for job_id in ids:
        record = records[job_id]
        if record is None and job_id in unseen:
            outcomes[job_id] = Outcome.NOT_FOUND
        elif record is not None and record.status in CANCELS:
            outcomes[job_id] = Outcome.CANCELLED
        elif record is not None and record.ended:
            outcomes[job_id] = Outcome.ALREADY_FINISHED
        else:
            asked.append(job_id)
    return outcomes, asked, delayed


async def _read_all(conn: Connection, ids: list[str]) -> dict[str, JobStatus | None]:
    """Every job's status record, `READ_WINDOW` reads in flight at a time."""
    records: dict[str, JobStatus | None] = {}
    for start in range(0, len(ids), READ_WINDOW):
        window = ids[start:start + READ_WINDOW]
        records.update(zip(window, await asyncio.gather(*(read_status_or_stand_in(conn, job_id) for job_id in window)),
                           strict=True))
    return records


async def _request_all(conn: Connection, ids: list[str], by: str) -> None:
    """Store a cancel request for each job, pipelined (a request written again over an earlier one is the same ask)."""
    at = time.time()
    await publish_many(conn, [(kv_subject(CANCEL_REQUESTS_KV_NAME, job_id), CancelRequest(job_id, by, at).to_bytes(),
                               None, None) for job_id in ids])


async def _withdraw(conn: Connection, ids: list[str]) -> None:
    """Delete the requests of jobs that ended before a worker saw them: a later job reusing the id must still run."""
    if not ids:
        return
    try:
        kv = await conn.kv(CANCEL_REQUESTS_KV_NAME)
        async with nats_errors(conn.settings):
            await asyncio.gather(*(kv.delete(job_id) for job_id in ids))
    except NaqException as e:
        logger.warning("%d cancel request(s) of ended jobs left to expire: %s", len(ids), e)


class StatusUpdates:
    """The status records of some jobs as workers write them, from a subscription opened on entry.

    An ordered consumer from now on: on the job's own key for one job, on the whole bucket for more
    (only those jobs' records are decoded). `seen[job_id]` is the first outcome a record told:
    `cancelled` (or `stopping`) → CANCELLED, another end → ALREADY_FINISHED.
    """

    def __init__(self, conn: Connection, ids: list[str]) -> None:
        self.seen: dict[str, Outcome] = {}
        self._conn = conn
        self._ids = set(ids)
        self._prefix = kv_subject(JOB_STATUS_KV_NAME, "")
        self._awaited: set[str] = set()
        self._all_seen = asyncio.Event()
        self._sub: Subscription | None = None

    async def __aenter__(self) -> StatusUpdates:
        subject = kv_subject(JOB_STATUS_KV_NAME, next(iter(self._ids)) if len(self._ids) == 1 else ">")
        await self._conn.kv(JOB_STATUS_KV_NAME)  # made on first use, like every bucket
        async with nats_errors(self._conn.settings):
            self._sub = await self._conn.js.subscribe(
                subject, stream=kv_stream(JOB_STATUS_KV_NAME), cb=self._on_msg, ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.NEW)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as e:  # the server expires the consumer on its own
                logger.debug("status subscription not closed: %s", e)

    async def wait(self, ids: list[str], timeout_s: float) -> None:
        """Until every one of `ids` has an outcome in `seen`, or `timeout_s` passed."""
        self._awaited = set(ids)
        self._check()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_seen.wait(), timeout_s)

    def _check(self) -> None:
        if self._awaited and self._awaited <= self.seen.keys():
            self._all_seen.set()

    async def _on_msg(self, msg: Msg) -> None:
        job_id = msg.subject[len(self._prefix):]
        if job_id not in self._ids or job_id in self.seen or not msg.data:  # a delete marker has no data
            return
        try:
            status = JobStatus.from_bytes(msg.data)
        except SerializationError:
            return  # an unreadable write says nothing; the next one may
        if status.status in CANCELS:
            self.seen[job_id] = Outcome.CANCELLED
        elif status.ended:
            self.seen[job_id] = Outcome.ALREADY_FINISHED
        self._check()


async def _scheduled(conn: Connection, ids: list[str]) -> dict[str, ScheduledJob]:
    """Those of `ids` that wait in the schedule store as delayed jobs, with their records (one pass over the store)."""
    if not ids:
        return {}
    wanted = set(ids)
    return {record.key: record for record in await ScheduledJobManager(conn.settings).list()
            if record.key in wanted and is_delayed_job(record)}


async def _drop_payloads_of(conn: Connection, job_datas: list[bytes]) -> None:
    """Drop the payloads only these cancelled jobs used (data-sized ones); a failure leaves them to the sweep."""
    datas = [data for data in job_datas if job_payload_names(data)]
    if not datas:
        return
    try:
        await drop_payloads(conn, datas)
    except NaqException as e:
        logger.warning("payloads of %d cancelled job(s) left to the sweep: %s", len(datas), e)


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


def cancel_sync(jobs: Any, url: str | ConnectionSettings | None = None, *, by: str | None = None) -> CancelReport:
    """Blocking twin of `cancel` (through the sync bridge)."""
    return run_sync(cancel(jobs, url, by=by))
