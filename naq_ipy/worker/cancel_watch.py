"""Cancel requests, worker side: one watch of KV `naq_cancel_requests` per worker, each request turned into a
status change.

Notebooks may not write job statuses: a cancel is a request `{by, at}` stored under the job's id
(naq_ipy/status/cancel.py). Every worker watches the requests, the stored ones first (`start` returns
once it has them all, before the worker fetches its first job), then live, into an in-memory view
(`JobRunner.cancel_requests`) that the runner looks at before it starts a job: a dict lookup, no round
trip per job. For each request the worker
- stops the job's call if it runs here (`on_request`, the runner's `stop_job`);
- records the cancel in the job's status (`status.results.cancel_change`): no record, `queued`,
  `retrying` → `cancelled`; `running` → `stopping`, and the worker running it writes `cancelled` once
  its call stopped. Each write is revision-checked over the record read: workers racing over one request
  are safe, the loser reads again and finds the cancel recorded.
A malformed request is skipped with one log line. Workers never delete requests: they expire with the
bucket's max age (the result TTL), and the view forgets them a day after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from nats.js.kv import KeyValue

from naq_ipy.errors import ConflictError, RefusedError, SerializationError
from naq_ipy.status.results import (
    CANCELLED,
    QUEUED,
    CancelRequest,
    JobStatus,
    cancel_change,
    cancelled_record,
    read_status_or_stand_in,
    write_status,
)
from naq_ipy.wire.connection import Connection, message_headers, nats_errors
from naq_ipy.wire.names import (
    CANCEL_REQUESTS_KV_NAME,
    EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
    JOB_STATUS_KV_NAME,
    KV_DELETE_OPERATIONS,
    kv_subject,
)
from naq_ipy.wire.publish import publish_many
from naq_ipy.wire.settings import DEFAULT_RESULT_TTL_S

logger = logging.getLogger(__name__)

RECORD_BATCH = 1000  # first guesses written in one pipelined batch
READ_WINDOW = 64  # requests recorded one by one (read, then write) at once
CONFLICT_ROUNDS = 5
FORGET_AFTER_S = DEFAULT_RESULT_TTL_S + 24 * 3600.0  # the bucket's max age, and a day for clocks that disagree
FORGET_EVERY_S = 600.0


async def record_cancel(conn: Connection, request: CancelRequest, worker_id: str) -> JobStatus | None:
    """Write the status change `request` makes, over the revision read (read again after a lost check); a
    `cancelled` record names `worker_id`, a `stopping` one keeps the worker running the job. The record
    written, or None when none was needed (ended, or a cancel already recorded)."""
    for _ in range(CONFLICT_ROUNDS):
        record = await read_status_or_stand_in(conn, request.job_id)
        change = cancel_change(record, request)
        if change is None:
            return None
        if change.status == CANCELLED:
            change = change.evolve(worker_id=worker_id)
        try:
            await write_status(conn, change, revision=record.revision if record is not None else 0)
        except ConflictError:  # another worker, or the job's own, wrote in between
            continue
        logger.info("job %s %s (cancel requested by %s)", request.job_id, change.status, request.by)
        return change
    raise ConflictError(f"job {request.job_id}: its status record kept changing; its cancel was not recorded")


async def record_cancels(conn: Connection, requests: list[CancelRequest], worker_id: str) -> None:
    """Record many requests: first the guess that each job is still queued (no record yet: `cancelled` over
    revision 0), all in one pipelined batch; every guess that lost is recorded by `record_cancel`."""
    guesses = [cancelled_record(JobStatus(job_id=r.job_id, status=QUEUED), r.by).evolve(worker_id=worker_id)
               for r in requests]
    headers = message_headers(None, {EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: "0"}, DEFAULT_RESULT_TTL_S)
    lost: set[int] = set()
    try:
        await publish_many(conn, [(kv_subject(JOB_STATUS_KV_NAME, g.job_id), g.to_bytes(conn.settings), None, headers)
                                  for g in guesses])
    except RefusedError as e:  # mostly a record there already (a job that ran, or a cancel recorded elsewhere)
        lost = set(e.refused)
    for index, request in enumerate(requests):
        if index not in lost:
            logger.info("job %s cancelled (cancel requested by %s)", request.job_id, request.by)
    again = [requests[index] for index in sorted(lost)]
    for start in range(0, len(again), READ_WINDOW):
        window = again[start:start + READ_WINDOW]
        done = await asyncio.gather(*(record_cancel(conn, r, worker_id) for r in window), return_exceptions=True)
        for request, outcome in zip(window, done, strict=True):
            if isinstance(outcome, Exception):  # the view still keeps the job from starting here
                logger.warning("job %s: cancel not recorded: %s", request.job_id, outcome)


class CancelWatch:
    """The requests bucket watched into `requests` (job id → request); `on_request(job_id)` for each new one."""

    def __init__(self, conn: Connection, worker_id: str, requests: dict[str, CancelRequest],
                 on_request: Callable[[str], None]) -> None:
        self.requests = requests
        self._conn = conn
        self._worker_id = worker_id
        self._on_request = on_request
        self._todo: asyncio.Queue[CancelRequest] = asyncio.Queue()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._forgot_at = time.monotonic()

    async def start(self) -> None:
        """Watch the bucket; returns once every stored request is in `requests`, then follows it."""
        self.requests.clear()
        kv = await self._conn.kv(CANCEL_REQUESTS_KV_NAME)
        async with nats_errors(self._conn.settings):
            self._watcher = await kv.watchall()
        async for entry in self._watcher:
            if entry is None:  # the stored ones are in
                break
            self._take(entry)
        self._tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._record_loop())]

    async def stop(self) -> None:
        """Stop watching and recording (a request not recorded yet is recorded by the next worker that starts)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._watcher is not None:
            with contextlib.suppress(Exception):  # a closed connection took the watch with it
                await self._watcher.stop()
            self._watcher = None

    async def _follow(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:  # drained without pause: the watcher's queue holds 256 entries
            if entry is not None:
                self._take(entry)

    def _take(self, entry: KeyValue.Entry) -> None:
        job_id = entry.key
        if entry.operation in KV_DELETE_OPERATIONS or not entry.value:
            self.requests.pop(job_id, None)  # withdrawn by the notebook (the job had ended), or expired
            return
        try:
            request = CancelRequest.from_bytes(job_id, entry.value)
        except SerializationError as e:
            logger.warning("cancel request %r ignored: %s", job_id, e)
            return
        self.requests[job_id] = request
        try:
            self._on_request(job_id)
        except Exception:
            logger.exception("job %s: cancel request not handled", job_id)
        self._todo.put_nowait(request)
        self._forget_old()

    def _forget_old(self) -> None:
        """Drop requests the bucket has expired (no delete marker tells of an expiry), every FORGET_EVERY_S."""
        if time.monotonic() - self._forgot_at < FORGET_EVERY_S:
            return
        self._forgot_at = time.monotonic()
        oldest = time.time() - FORGET_AFTER_S
        for job_id in [job_id for job_id, request in self.requests.items() if request.at < oldest]:
            del self.requests[job_id]

    async def _record_loop(self) -> None:
        while True:
            batch = [await self._todo.get()]
            while len(batch) < RECORD_BATCH and not self._todo.empty():
                batch.append(self._todo.get_nowait())
            try:
                await record_cancels(self._conn, batch, self._worker_id)
            except Exception as e:  # the view still keeps the jobs from starting here; other workers record them too
                logger.warning("%d cancel(s) not recorded: %s", len(batch), e)
