"""JobRunner: takes each fetched job message to its ack or nak — read, wait for dependencies, run, record.

The outcome of a job is written before its message is acked: result then `finished`, or
`retrying` + a delayed nak while attempts remain (counted by the server's delivery count),
or the failed-jobs store + `failed`; those writes are retried while NATS is away (a cluster node
fails over), since an unacked job would run again. Unreadable input, and with signing keys any
job not signed by one of them, is recorded as `rejected` and acked, never unpickled.
A job waiting for its dependencies holds its message (kept alive by progress acks) but no
execution slot, and wakes on a KV watch of the dependencies' status keys. A job with a cancel request
(`cancel_requests`, filled by worker/cancel_watch.py) never starts; a running one is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from naq_ipy.client.job import Job, read_header
from naq_ipy.client.offload import load_call
from naq_ipy.errors import (
    ConflictError,
    NaqConnectionError,
    NaqException,
    RefusedError,
    SerializationError,
)
from naq_ipy.rules.retry import retry_delay_s
from naq_ipy.status import results
from naq_ipy.status.payload_sweep import drop_payloads, job_payload_names
from naq_ipy.status.progress import reporting
from naq_ipy.status.results import CancelRequest, JobStatus, cancelled_record, read_status_or_stand_in, write_status
from naq_ipy.wire.connection import Connection
from naq_ipy.wire.names import JOB_STATUS_KV_NAME
from naq_ipy.wire.settings import DEFAULT_RESULT_TTL_S
from naq_ipy.wire.signing import refusal, signer_id
from naq_ipy.worker.delivery import (
    Delivery,
    DeliveryState,
    Stopping,
    header_job_id,
    queue_of,
    settled_elsewhere,
    signature,
)
from naq_ipy.worker.dependencies import wait_for_dependencies
from naq_ipy.worker.executor import Executor, JobFailure, UnreadableCall, describe_exception, one_line
from naq_ipy.worker.failed_store import record_failed
from naq_ipy.worker.output import capturing
from naq_ipy.worker.slots import Slots, SlotsClosed
from naq_ipy.worker.stopping import JobCancelled, StopHandle

logger = logging.getLogger(__name__)

T = TypeVar("T")

WAITING_PER_SLOT = 10  # messages held for their dependencies, per execution slot
WAITING_FULL_DELAY_S = 5.0
OUTCOME_RETRY_MIN_S = 0.25
OUTCOME_RETRY_MAX_S = 2.0
CONFLICT_RETRIES = 5


class JobRunner:
    """The message-handling half of a worker: slots, held messages, outcome records, counters."""

    def __init__(self, worker_id: str, concurrency: int) -> None:
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.max_waiting = WAITING_PER_SLOT * concurrency
        self.processed = self.failed = 0
        self.capture_output = True  # jobs' stdout, stderr, logging and warnings go to naq.logs.<job id>
        self._deliveries: dict[asyncio.Task[None], Delivery] = {}
        self._conn: Connection | None = None
        self._executor: Executor | None = None
        self.cancel_requests: dict[str, CancelRequest] = {}  # job id → request: the view of worker/cancel_watch.py
        self._new_run_state()

    def _new_run_state(self) -> None:
        """Fresh events and slots for one run (asyncio primitives bind to the loop that first uses them)."""
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._slots = Slots(self.concurrency)
        self._room_changed = asyncio.Event()

    def _begin_stop(self) -> None:
        """Fetch no more, and fail what waits for a slot (its message goes back to the queue)."""
        self._stopping.set()
        self._slots.close()
        self._room_changed.set()

    @property
    def conn(self) -> Connection:
        """The worker's own connection (only while running)."""
        if self._conn is None:
            raise NaqException(f"worker {self.worker_id} is not running")
        return self._conn

    def start(self, msg: Msg) -> None:
        """Handle `msg` in its own task (it takes an execution slot when it is ready to run)."""
        delivery = Delivery(msg)
        task = asyncio.create_task(self._handle(delivery))
        self._deliveries[task] = delivery
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._deliveries.pop(task)
        self._room_changed.set()

    @property
    def room(self) -> int:
        """How many more messages to fetch: slots to fill plus a prefetch of `concurrency` waiting ones."""
        in_hand = sum(d.state != DeliveryState.WAITING for d in self._deliveries.values())
        return 2 * self.concurrency - in_hand

    async def wait_for_room(self) -> None:
        """Wait until there is room for a batch of half the slots (or any room while fewer are in hand than
        slots), unless a stop comes first (Stopping): fetching one message per finished job costs a round
        trip each, while the prefetched half keeps every slot busy."""
        while not self._stopping.is_set() and self.room < self._fetch_batch:
            self._room_changed.clear()
            await self._room_changed.wait()
        if self._stopping.is_set():
            raise Stopping

    @property
    def _fetch_batch(self) -> int:
        in_hand = 2 * self.concurrency - self.room
        return 1 if in_hand < self.concurrency else max(1, self.concurrency // 2)

    @property
    def free_slots(self) -> int:
        """Execution slots not taken right now."""
        return self.concurrency - self._slots.taken

    async def _acquire_slot(self) -> bool:
        """Take an execution slot, waiting for one unless a stop comes first (Stopping)."""
        try:
            await self._slots.take()
        except SlotsClosed:
            raise Stopping from None
        return True

    def _release_slot(self) -> None:
        self._slots.release()

    async def _unless_stopping(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` unless a stop comes first (then cancel it and raise Stopping)."""
        task = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if task.cancelled():
            raise Stopping
        return task.result()

    async def _handle(self, delivery: Delivery) -> None:
        """Take one message from fetch to ack or nak; only running it takes an execution slot."""
        holding, still_running = False, None
        try:
            job = await self._accept(delivery)
            if job is not None and job.depends_on:
                job = await self._await_dependencies(delivery, job)
            if job is not None:
                holding = await self._acquire_slot()
                if self._stopping.is_set():
                    await self._nak(delivery)
                else:
                    still_running = await self._execute(delivery, job)
        except Stopping:
            await self._nak(delivery)
        except Exception:
            logger.exception("job %s: outcome not recorded; it will be delivered again", delivery.job_id)
        finally:
            if holding and still_running is not None:
                still_running.add_done_callback(lambda _: self._release_slot())
            elif holding:
                self._release_slot()

    async def _accept(self, delivery: Delivery) -> Job | None:
        """The message's job (its options only), or None when it was rejected or has already ended."""
        msg = delivery.msg
        refused = refusal(msg.data, msg.headers, self.conn.settings, queue_of(msg))
        if refused:  # not even its header is trusted: it is recorded under `rejected-<seq>` only
            await self._reject(delivery, refused)
            return None
        try:  # its options only: the call is unpickled by the executor
            delivery.split = read_header(msg.data)
            job = Job.options_from_header(delivery.split[0])
        except SerializationError as e:
            delivery.job_id = header_job_id(msg.data)
            await self._reject(delivery, str(e))
            return None
        delivery.job_id = job.job_id
        if msg.metadata.num_delivered > 1:
            # a redelivery may have ended (or been cancelled) meanwhile: look before running it
            record = await read_status_or_stand_in(self.conn, job.job_id)
            delivery.revision = record.revision if record is not None else 0
            if record is not None and (record.ended or record.status == results.STOPPING):
                logger.info("job %s already %s: redelivery dropped", job.job_id, record.status)
                await self._drop_ended(delivery, record)
                return None
        return job

    async def _reject(self, delivery: Delivery, reason: str) -> None:
        """Record unreadable input (status if a job id is known, failed store), ack it."""
        msg, job_id, now = delivery.msg, delivery.job_id, time.time()
        queue = queue_of(msg)
        seq = msg.metadata.sequence.stream
        await record_failed(self.conn, msg.data, queue_name=queue, reason=reason, seq=seq, job_id=job_id,
                            signature=signature(msg))
        if job_id:
            await write_status(self.conn, JobStatus(
                job_id=job_id, status=results.REJECTED, queue_name=queue, error=one_line(reason),
                worker_id=self.worker_id, attempts=msg.metadata.num_delivered, finished_at=now, updated_at=now))
        await self._ack(delivery)
        self.processed += 1
        self.failed += 1
        logger.warning("job %s rejected: %s", job_id or f"rejected-{seq}", one_line(reason))

    async def _await_dependencies(self, delivery: Delivery, job: Job) -> Job | None:
        """Hold the message (no slot, no nak) until its dependencies ended; None if it was settled here."""
        waiting = sum(d.state == DeliveryState.WAITING for d in self._deliveries.values())
        if waiting >= self.max_waiting:
            logger.warning("job %s: %d jobs already wait for dependencies; retrying it in %.0fs",
                           job.job_id, waiting, WAITING_FULL_DELAY_S)
            await self._nak(delivery, WAITING_FULL_DELAY_S)
            return None
        delivery.state = DeliveryState.WAITING
        self._room_changed.set()  # a message waiting for dependencies leaves room to fetch another
        kv = await self.conn.kv(JOB_STATUS_KV_NAME)
        # the job's own key is watched too: a cancel while it waits ends the wait
        ended = await self._unless_stopping(wait_for_dependencies(kv, job.depends_on, also=job.job_id))
        delivery.state = DeliveryState.NEW
        if ended is None:
            return job
        if ended.job_id == job.job_id:
            logger.info("job %s %s while waiting for its dependencies", job.job_id, ended.status)
            await self._drop_ended(delivery, ended)
            return None
        base = self._status(job, results.FAILED, delivery.msg.metadata.num_delivered)
        how = results.CANCELLED if ended.status == results.STOPPING else ended.status
        await self._fail(delivery, job, base, f"dependency {ended.job_id} {how}", "", retry=False)
        return None

    def _status(self, job: Job, state: str, attempt: int, **changes: Any) -> JobStatus:
        return JobStatus(job_id=job.job_id, status=state, queue_name=job.queue_name, func_name=job.func_name,
                         enqueue_time=job.enqueue_time, schedule_key=job.schedule_key, attempts=attempt,
                         worker_id=self.worker_id, updated_at=time.time(), args_bytes=job.payload_bytes or None,
                         **changes)

    async def _execute(self, delivery: Delivery, job: Job) -> asyncio.Future[Any] | None:
        """Run the job and record its outcome; returns the future of a thread that overran, if any."""
        assert self._executor is not None
        msg, attempt = delivery.msg, delivery.msg.metadata.num_delivered
        if (request := self.cancel_requests.get(job.job_id)) is not None:  # asked before it started: it never does
            await self._drop_ended(delivery, self._status(job, results.STOPPING, attempt, cancelled_by=request.by,
                                                          revision=delivery.revision))
            return None
        try:  # a data-sized call's buffers: read here as bytes (digest-checked), unpickled by the executor
            buffers = None if self._executor.loads_in_child else await load_call(self.conn, delivery.split[0])
        except SerializationError as e:  # missing or corrupt: unreadable input, like a bad header
            await self._reject(delivery, str(e))
            return None
        running = self._status(job, results.RUNNING, attempt, started_at=time.time())
        # `running` is written over the record the job had: a cancel recorded first wins, and the job never starts
        if not await self._write_over(delivery, write_status, running):
            return None
        delivery.state, delivery.stop = DeliveryState.RUNNING, (stop := StopHandle())
        if job.job_id in self.cancel_requests:  # asked while `running` was written
            stop.stop()
        running_written: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        running_written.set_result(delivery.revision)
        logger.debug("job %s %s started (attempt %d)", job.job_id, job.func_name, attempt)
        try:
            # capturing() flushes on every way out (a JobCancelled too): a stopped job keeps its output
            async with (reporting(job.job_id, self.conn, running_written) as progress,
                        capturing(job.job_id, self.conn, job.result_ttl, self.capture_output)):
                value = await self._executor.run(job, msg.data, stop, buffers, delivery.split)
            data = results.encode_result(self.conn, job.job_id, value)
        except JobCancelled:
            await self._record_stopped(delivery, job)
            return None
        except JobFailure as failure:
            if stop.requested and failure.still_running is None:  # a killed child
                await self._record_stopped(delivery, job)
                return None
            await self._fail(delivery, job, progress.stamp(running), failure.error, failure.traceback, retry=True)
            return failure.still_running
        except UnreadableCall as e:
            await self._reject(delivery, str(e))
            return None
        except SerializationError as e:
            await self._fail(delivery, job, progress.stamp(running), describe_exception(e)[0], "", retry=False)
            return None
        finished = progress.stamp(running).evolve(status=results.FINISHED, finished_at=time.time())
        try:
            if not await self._write_over(delivery, results.write_outcome, finished, data,
                                          job.result_ttl or DEFAULT_RESULT_TTL_S, signer_id(msg.headers)):
                return None
        except RefusedError as e:  # a full payload store: running the job again would not help
            await self._fail(delivery, job, progress.stamp(running), describe_exception(e)[0], "", retry=False)
            return None
        await self._ack(delivery)
        self.processed += 1
        logger.info("job %s finished in %.3fs", job.job_id, time.time() - (running.started_at or 0))
        return None

    async def _fail(self, delivery: Delivery, job: Job, base: JobStatus, error: str, tb: str, *,
                    retry: bool) -> None:
        """Retry later (nak with the job's delay) while attempts remain, else record the failure and ack."""
        attempt = base.attempts
        if retry and attempt <= job.max_retries:
            delay = retry_delay_s(job.retry_delay, attempt)
            if await self._write_over(delivery, write_status,
                                      base.evolve(status=results.RETRYING, error=error, traceback=tb)):
                await self._nak(delivery, delay)
                logger.warning("job %s failed: %s (retry %d in %.2fs)", job.job_id, error, attempt, delay)
            return
        msg = delivery.msg
        await self._durably(job.job_id, record_failed, self.conn, msg.data, queue_name=job.queue_name, reason=error,
                            seq=msg.metadata.sequence.stream, job_id=job.job_id, func_name=job.func_name,
                            signature=signature(msg))
        failed = base.evolve(status=results.FAILED, error=error, traceback=tb or None, finished_at=time.time())
        if not await self._write_over(delivery, write_status, failed, job.result_ttl or DEFAULT_RESULT_TTL_S):
            return
        await self._ack(delivery)
        self.processed += 1
        self.failed += 1
        logger.warning("job %s failed: %s", job.job_id, error)

    async def _durably(self, job_id: str, write: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await an (idempotent) write of a job's outcome, retried while NATS is away, unless the worker stops."""
        # giving up would leave the job unacked, and its redelivery would run it a second time
        delay = OUTCOME_RETRY_MIN_S
        while True:
            try:
                return await write(*args, **kwargs)
            except (NaqConnectionError, nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as e:
                if self._stopping.is_set():
                    raise
                logger.warning("job %s: outcome not written yet (%s); retrying in %.2fs", job_id, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, OUTCOME_RETRY_MAX_S)

    async def _write_over(self, delivery: Delivery, write: Callable[..., Awaitable[Any]], status: JobStatus,
                          *args: Any) -> bool:
        """Write the job's record over the revision this worker saw; False (the job dropped) if it ended meanwhile."""
        for _ in range(CONFLICT_RETRIES):
            try:
                written = await self._durably(status.job_id, write, self.conn, status, *args,
                                              revision=delivery.revision)
            except ConflictError:  # a cancel, a progress report or an earlier delivery wrote in between
                current = await read_status_or_stand_in(self.conn, status.job_id)
                if current is not None and settled_elsewhere(current, delivery):
                    await self._drop_ended(delivery, current)
                    return False
                delivery.revision = current.revision if current is not None else 0
                continue
            if isinstance(written, int):  # write_status returns the new revision
                delivery.revision = written
            return True
        raise ConflictError(f"job {status.job_id}: its status record kept changing under the worker")

    async def _drop_ended(self, delivery: Delivery, record: JobStatus) -> None:
        """Ack a job whose record ended elsewhere (a cancel, an earlier delivery); `stopping` becomes `cancelled`."""
        if record.status == results.STOPPING:
            done = cancelled_record(record, record.cancelled_by).evolve(worker_id=self.worker_id)
            try:
                await self._durably(record.job_id, write_status, self.conn, done, revision=record.revision)
            except ConflictError:  # written again meanwhile (a late progress report): read it once more
                current = await read_status_or_stand_in(self.conn, record.job_id)
                if current is not None and not current.ended:
                    await self._durably(record.job_id, write_status, self.conn, cancelled_record(
                        current, record.cancelled_by), revision=current.revision)
        await self._ack(delivery)
        if record.status in (results.CANCELLED, results.STOPPING):
            self.processed += 1
            logger.info("job %s cancelled by %s", record.job_id, record.cancelled_by or "?")
            await self._drop_payloads(delivery)

    async def _drop_payloads(self, delivery: Delivery) -> None:
        """A cancelled data-sized job left the stream: drop the payloads only it used (else the sweep does)."""
        if not job_payload_names(delivery.msg.data):
            return
        try:
            await drop_payloads(self.conn, [delivery.msg.data])
        except NaqException as e:
            logger.warning("job %s: payloads left to the sweep: %s", delivery.job_id, e)

    async def _record_stopped(self, delivery: Delivery, job: Job) -> None:
        """The job's call stopped after a cancel: record it `cancelled` (it is not retried)."""
        record = await read_status_or_stand_in(self.conn, job.job_id)
        if record is None or not (record.ended or record.status == results.STOPPING):
            base = record or self._status(job, results.RUNNING, delivery.msg.metadata.num_delivered)
            request = self.cancel_requests.get(job.job_id)
            record = base.evolve(status=results.STOPPING, cancelled_by=request.by if request else base.cancelled_by)
        await self._drop_ended(delivery, record)

    def stop_job(self, job_id: str) -> None:
        """A cancel was requested for `job_id`: stop its call if it runs here."""
        for delivery in self._deliveries.values():
            if delivery.job_id == job_id and delivery.stop is not None and not delivery.stop.requested:
                request = self.cancel_requests.get(job_id)
                logger.info("job %s: stopping it (cancelled by %s)", job_id, request.by if request else "?")
                delivery.stop.stop()

    async def _ack(self, delivery: Delivery) -> None:
        delivery.settled = True
        await delivery.msg.ack()

    async def _nak(self, delivery: Delivery, delay_s: float | None = None) -> None:
        delivery.settled = True
        await delivery.msg.nak(delay=delay_s)

    async def _abandon(self, held: dict[asyncio.Task[None], Delivery]) -> None:
        """Cancel handlers and nak their messages (so another worker runs them)."""
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        for delivery in held.values():
            if not delivery.settled:
                logger.warning("job %s returned to the queue unfinished (worker stopping)", delivery.job_id)
                try:
                    await self._nak(delivery)
                except nats.errors.Error as e:  # it comes back after its ack wait instead
                    logger.warning("job %s: nak failed: %s", delivery.job_id, e)
