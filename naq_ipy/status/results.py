"""Job status (KV `naq_job_status`, JSON) and results (KV `naq_results`, cloudpickle).

A small result (up to `INLINE_RESULT_MAX` bytes pickled) travels inside the `finished` status
record itself, so a job's outcome is one KV write and one read; larger ones go to `naq_results`
first. A job with no status record yet is `queued` (it is in the stream) or `scheduled` (it is
in `naq_scheduled_jobs`). Waiting for a job uses a KV watch on its key, never a sleep loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any

import cloudpickle
import nats.js.errors
from nats.js.kv import KeyValue

from naq_ipy.errors import JobExecutionError, JobNotFoundError, SerializationError
from naq_ipy.wire.connection import Connection, get_connection, kv_put, nats_errors
from naq_ipy.wire.settings import (
    DEFAULT_RESULT_TTL_S,
    JOB_STATUS_KV_NAME,
    RESULTS_KV_NAME,
    SCHEDULED_JOBS_KV_NAME,
    ConnectionSettings,
    validate_key,
)

QUEUED = "queued"
SCHEDULED = "scheduled"
RUNNING = "running"
RETRYING = "retrying"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"
STOPPING = "stopping"  # a cancel reached a running job; its worker writes `cancelled` once it stopped
REJECTED = "rejected"
INLINE_RESULT_MAX = 4096
TERMINAL = frozenset({FINISHED, FAILED, CANCELLED, REJECTED})
CANCELS = frozenset({STOPPING, CANCELLED})  # a cancel was recorded: the job will not (go on to) run


@dataclass(frozen=True)
class JobStatus:
    """What is known about one job: state, times (UTC unix seconds), attempts, error, progress."""

    job_id: str
    status: str
    queue_name: str | None = None
    func_name: str | None = None
    enqueue_time: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: str | None = None
    traceback: str | None = None
    progress: float | None = None
    message: str | None = None
    worker_id: str | None = None
    schedule_key: str | None = None
    cancelled_by: str | None = None  # `user@host` of a cancel
    result_inline: str | None = field(default=None, repr=False)
    updated_at: float = 0.0
    revision: int = 0

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @property
    def duration_s(self) -> float | None:
        """Run time so far (or in total once ended), None before it started."""
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def evolve(self, **changes: Any) -> JobStatus:
        """A copy with `changes` and `updated_at` = now."""
        return replace(self, updated_at=time.time(), **changes)

    def to_bytes(self) -> bytes:
        """The stored JSON form (every field but `revision`)."""
        data = {name: getattr(self, name) for name in _STATUS_FIELDS}
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, revision: int = 0) -> JobStatus:
        try:
            data = json.loads(raw)
            return cls(revision=revision, **{k: v for k, v in data.items() if k in _STATUS_FIELDS})
        except (ValueError, TypeError, AttributeError) as e:
            raise SerializationError(f"corrupt job status record: {e}") from e


_STATUS_FIELDS = tuple(f.name for f in fields(JobStatus) if f.name != "revision")


async def write_status(conn: Connection, status: JobStatus, ttl_s: float | None = DEFAULT_RESULT_TTL_S, *,
                       revision: int | None = None) -> int:
    """Store `status` under its job id (with a per-message TTL); `revision`: only over that one (ConflictError)."""
    return await kv_put(conn, JOB_STATUS_KV_NAME, status.job_id, status.to_bytes(), ttl_s, revision=revision)


def encode_result(conn: Connection, job_id: str, value: Any) -> bytes:
    """Pickle a result; SerializationError if it cannot be pickled or is too large for the KV store."""
    try:
        data = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        raise SerializationError(f"result of job {job_id} cannot be pickled: {e}") from e
    if len(data) > conn.max_payload - 1024:
        raise SerializationError(
            f"result of job {job_id} is {len(data):,} bytes, too large for the result store "
            f"(max {conn.max_payload - 1024:,} bytes)"
        )
    return data


async def write_result(conn: Connection, job_id: str, data: bytes,
                       ttl_s: float | None = DEFAULT_RESULT_TTL_S) -> int:
    """Store an encoded result value."""
    return await kv_put(conn, RESULTS_KV_NAME, job_id, data, ttl_s)


async def write_outcome(conn: Connection, status: JobStatus, data: bytes,
                        ttl_s: float | None = DEFAULT_RESULT_TTL_S, *, revision: int | None = None) -> JobStatus:
    """Store a finished job's result and status: inline when small, else the result first, then the status."""
    if len(data) <= INLINE_RESULT_MAX:
        status = status.evolve(result_inline=base64.b64encode(data).decode())
    else:
        await write_result(conn, status.job_id, data, ttl_s)
    await write_status(conn, status, ttl_s, revision=revision)
    return status


async def _get(conn: Connection, bucket: str, key: str) -> tuple[bytes, int] | None:
    kv = await conn.kv(bucket)
    try:
        async with nats_errors(conn.settings):
            entry = await kv.get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None
    return (entry.value or b""), (entry.revision or 0)


async def read_status(conn: Connection, job_id: str) -> JobStatus | None:
    """The job's status record on `conn`, None if it has none."""
    found = await _get(conn, JOB_STATUS_KV_NAME, job_id)
    return None if found is None else JobStatus.from_bytes(*found)


async def fetch_status(job_id: str, url: str | ConnectionSettings | None = None) -> JobStatus | None:
    """The job's status record; `scheduled` if it waits in the schedule store; None if unknown."""
    conn = await get_connection(url)
    status = await read_status(conn, validate_key(job_id, "job id"))
    if status is not None:
        return status
    if await _get(conn, SCHEDULED_JOBS_KV_NAME, job_id) is not None:
        return JobStatus(job_id=job_id, status=SCHEDULED)
    return None


async def _read_result(conn: Connection, status: JobStatus) -> Any:
    if status.status != FINISHED:
        raise JobExecutionError(
            f"job {status.job_id} {status.status}: {status.error or 'no error recorded'}",
            job_id=status.job_id, traceback=status.traceback,
        )
    if status.result_inline is not None:
        data = base64.b64decode(status.result_inline)
    else:
        found = await _get(conn, RESULTS_KV_NAME, status.job_id)
        if found is None:
            raise JobNotFoundError(f"result of job {status.job_id} has expired or was never stored")
        data = found[0]
    try:
        return pickle.loads(data)
    except Exception as e:
        raise SerializationError(f"result of job {status.job_id} cannot be unpickled here: {e}") from e


async def watch_until_ended(kv: KeyValue, job_id: str, *, ends: frozenset[str] = TERMINAL) -> JobStatus:
    """Watch `job_id` in the status bucket `kv` until its record says it ended (a state in `ends`)."""
    watcher = await kv.watch(job_id)
    try:
        async for entry in watcher:
            if entry is not None and entry.value and entry.operation is None:
                status = JobStatus.from_bytes(entry.value, entry.revision or 0)
                if status.status in ends:
                    return status
    finally:
        await watcher.stop()
    raise JobNotFoundError(f"stopped watching job {job_id}")


async def wait_for_end(job_id: str, timeout: float | None = None,
                       url: str | ConnectionSettings | None = None) -> JobStatus:
    """Wait (with a KV watch) until the job has ended; TimeoutError after `timeout` seconds."""
    conn = await get_connection(url)
    kv = await conn.kv(JOB_STATUS_KV_NAME)
    async with nats_errors(conn.settings), asyncio.timeout(timeout):
        return await watch_until_ended(kv, validate_key(job_id, "job id"))


async def fetch_result(job_id: str, timeout: float | None = None,
                       url: str | ConnectionSettings | None = None) -> Any:
    """Wait for the job to end and return its value; JobExecutionError with the remote traceback if it failed."""
    status = await wait_for_end(job_id, timeout, url)
    return await _read_result(await get_connection(url), status)
