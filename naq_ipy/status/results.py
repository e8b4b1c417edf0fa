"""Job status (KV `naq_job_status`, JSON) and results (KV `naq_results`, cloudpickle).

A small result (up to `INLINE_RESULT_MAX` bytes pickled) travels inside the `finished` status
record itself, so a job's outcome is one KV write and one read; larger ones go to `naq_results`
first; a data-sized one keeps its large parts in the payload store (`result_payload` names them by
digest, see naq_ipy.client.offload). A job with no status record yet is `queued` (it is in the stream)
or `scheduled` (it is in `naq_scheduled_jobs`). Waiting for a job uses a KV watch on its key, never a sleep loop.
A cancel is asked for in `naq_cancel_requests` (`CancelRequest`) and recorded here by a worker (`cancel_change`).

Records are read strictly (`naq_ipy.rules.records`). With signing keys, every status is signed
(`naq_ipy.wire.signing.sign_record`) and a client unpickles a result only after `check_signed`
accepted the status it came with (a stored result is named there by its SHA-256, a payload object
by its name, which is its digest, and its size: both checked when read).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import pickle
import time
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import nats.js.errors
from nats.js.kv import KeyValue

from naq_ipy.client.offload import Packed, Packer, load, spec_refs
from naq_ipy.client.pickling import dumps_value
from naq_ipy.errors import JobExecutionError, JobNotFoundError, SerializationError, SignatureError
from naq_ipy.rules.records import LIST_MAX, LONG_TEXT_MAX, TIMESTAMP, decode_checked, integer, number, optional, text
from naq_ipy.wire.connection import Connection, get_connection, kv_put, nats_errors
from naq_ipy.wire.names import CANCEL_REQUESTS_KV_NAME, JOB_STATUS_KV_NAME, RESULTS_KV_NAME, SCHEDULED_JOBS_KV_NAME
from naq_ipy.wire.settings import DEFAULT_RESULT_TTL_S, KEY_MAX, QUEUE_NAME_MAX, ConnectionSettings, validate_key
from naq_ipy.wire.signing import record_refusal, sign_record

logger = logging.getLogger(__name__)


class JobState(StrEnum):
    """A job's status as stored in `naq_job_status` (str-valued: the stored JSON is the plain name)."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    STOPPING = "stopping"  # a cancel reached a running job; its worker writes `cancelled` once it stopped
    REJECTED = "rejected"


QUEUED, SCHEDULED, RUNNING, RETRYING = JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING, JobState.RETRYING
FINISHED, FAILED, CANCELLED, REJECTED = JobState.FINISHED, JobState.FAILED, JobState.CANCELLED, JobState.REJECTED
STOPPING = JobState.STOPPING
UNREADABLE_STATUS = "unreadable"  # a stand-in for a record that cannot be read (never stored)
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
    result_sha256: str | None = field(default=None, repr=False)  # of a result stored in `naq_results`
    result_payload: dict[str, Any] | None = field(default=None, repr=False)  # objects of a data-sized result
    args_bytes: int | None = None  # of the call, in the payload store
    result_bytes: int | None = None  # of the result, in the payload store
    updated_at: float = 0.0
    revision: int = 0
    raw: bytes = field(default=b"", repr=False, compare=False)  # the bytes it was read from (signature check)

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
        """A copy with `changes` and `updated_at` = now (no longer the bytes it was read from)."""
        unknown = changes.keys() - _FIELD_NAMES
        if unknown:
            raise TypeError(f"JobStatus has no field {sorted(unknown)[0]!r}")
        copy = object.__new__(JobStatus)  # a frozen dataclass without __post_init__: `replace`, minus its cost
        copy.__dict__.update(self.__dict__, **changes, updated_at=time.time(), raw=b"")
        return copy

    def to_bytes(self, settings: ConnectionSettings | None = None, signer: str | None = None) -> bytes:
        """The stored JSON form (every field but `revision` and `raw`), signed when `settings` hold keys
        (with the key of id `signer` if held)."""
        data = {name: value for name in _STATUS_FIELDS if (value := getattr(self, name)) is not None}
        body = _COMPACT_JSON.encode(data).encode()
        return body if settings is None else sign_record(settings, STATUS_RECORD, self.job_id, body, signer)

    @classmethod
    def from_bytes(cls, raw: bytes, revision: int = 0) -> JobStatus:
        """Parse a stored record (strictly: types, ranges, sizes); SerializationError for anything malformed."""
        data = decode_checked(raw, _STATUS_SPEC, "corrupt job status record", frozenset({"job_id", "status"}))
        return cls(revision=revision, raw=bytes(raw), **data)


STATUS_RECORD = "status"
_FIELD_NAMES = frozenset(f.name for f in fields(JobStatus))
_STATUS_FIELDS = tuple(f.name for f in fields(JobStatus) if f.name not in ("revision", "raw"))
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
_TIME, _TEXT = optional(TIMESTAMP), optional(text())


def _payload_spec(value: Any) -> dict[str, Any]:
    """A status's `result_payload`: a payload spec whose every reference is well formed (ValueError if not)."""
    try:
        refs = spec_refs(value)
    except SerializationError as e:
        raise ValueError(str(e)) from None
    if len(refs) > LIST_MAX or set(value) - {"body", "buffers"}:
        raise ValueError("is not a payload spec")
    return dict(value)


_STATUS_SPEC = {
    "job_id": text(KEY_MAX), "status": text(32), "queue_name": optional(text(QUEUE_NAME_MAX)), "func_name": _TEXT,
    "enqueue_time": _TIME, "started_at": _TIME, "finished_at": _TIME, "attempts": integer(0, 2**31),
    "error": optional(text(LONG_TEXT_MAX)), "traceback": optional(text(4 * LONG_TEXT_MAX)),
    "progress": optional(number(0.0, 1.0)), "message": _TEXT, "worker_id": optional(text(KEY_MAX)),
    "schedule_key": optional(text(KEY_MAX)), "result_inline": optional(text(2 * INLINE_RESULT_MAX)),
    "result_sha256": optional(text(64)), "cancelled_by": optional(text(KEY_MAX)), "updated_at": TIMESTAMP,
    "result_payload": optional(_payload_spec), "args_bytes": optional(integer(0, 2**53)),
    "result_bytes": optional(integer(0, 2**53)),
}


async def write_status(conn: Connection, status: JobStatus, ttl_s: float | None = DEFAULT_RESULT_TTL_S,
                       signer: str | None = None, *, revision: int | None = None) -> int:
    """Store `status` under its job id (per-message TTL), signed with the connection's keys if any;
    `revision`: only over that one (ConflictError)."""
    return await kv_put(conn, JOB_STATUS_KV_NAME, status.job_id, status.to_bytes(conn.settings, signer), ttl_s,
                        revision=revision)


def cancelled_record(record: JobStatus, by: str | None, at: float | None = None) -> JobStatus:
    """`record` as `cancelled` by `by`, at `at` (UTC seconds; default now)."""
    return record.evolve(status=CANCELLED, finished_at=time.time() if at is None else at, cancelled_by=by,
                         error=f"cancelled by {by or '?'}")


CANCEL_REQUEST_MAX_BYTES = 4096
_REQUEST_SPEC = {"by": text(KEY_MAX), "at": TIMESTAMP}


@dataclass(frozen=True)
class CancelRequest:
    """A cancel asked for one job: KV `naq_cancel_requests`, key = job id, value `{"by": "user@host", "at": UTC s}`.

    Notebooks write requests, never statuses; every worker turns a request into the job's status change
    (`cancel_change`). It can only cancel, so it carries no signature; it is read strictly.
    """

    job_id: str
    by: str
    at: float

    def to_bytes(self) -> bytes:
        """The stored JSON form (the job id is the key)."""
        return json.dumps({"by": self.by, "at": self.at}, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, job_id: str, raw: bytes) -> CancelRequest:
        """Parse a stored request (strictly); SerializationError for anything malformed."""
        data = decode_checked(raw, _REQUEST_SPEC, "corrupt cancel request", frozenset(_REQUEST_SPEC),
                              max_bytes=CANCEL_REQUEST_MAX_BYTES)
        return cls(job_id=job_id, **data)


def cancel_change(record: JobStatus | None, request: CancelRequest, at: float | None = None) -> JobStatus | None:
    """The record `request` makes of the job's `record` (None: it has none yet), or None if it changes nothing
    (ended, or a cancel already recorded): `running` becomes `stopping`, anything else `cancelled` at `at`."""
    if record is None:
        return cancelled_record(JobStatus(job_id=request.job_id, status=QUEUED), request.by, at)
    if record.ended or record.status in CANCELS:
        return None
    if record.status == RUNNING:
        return record.evolve(status=STOPPING, cancelled_by=request.by)
    return cancelled_record(record, request.by, at)


async def read_cancel_request(conn: Connection, job_id: str) -> CancelRequest | None:
    """The job's pending cancel request, None if it has none (or an unreadable one, logged)."""
    found = await _get(conn, CANCEL_REQUESTS_KV_NAME, job_id)
    if found is None or not found[0]:
        return None
    try:
        return CancelRequest.from_bytes(job_id, found[0])
    except SerializationError as e:
        logger.warning("job %s: cancel request ignored: %s", job_id, e)
        return None


@dataclass(frozen=True)
class PickledValue:
    """A result pickled elsewhere (a process-mode child), stored as it is: the worker never loads it.

    `buffers`: its out-of-band buffers (a data-sized result; pickle protocol 5), stored as payloads.
    """

    data: bytes
    buffers: tuple[bytes, ...] = ()

    def dump(self, buffers: list[pickle.PickleBuffer] | None) -> bytes:
        """The pickle stream, its buffers appended to `buffers` (for `Packer.pack`, with `in_band=False`)."""
        if buffers is not None:
            buffers.extend(map(pickle.PickleBuffer, self.buffers))
        return self.data


def encode_result(conn: Connection, job_id: str, value: Any) -> Packed:
    """Pickle a result (large buffers out of band); SerializationError if it cannot be pickled or is over the cap.

    A `PickledValue` (a process-mode child's) is taken as it is: above the threshold its pickle goes
    to the payload store whole.
    """
    if isinstance(value, PickledValue):
        return Packer(conn.settings).pack(value.dump, f"the result of job {job_id}", in_band=not value.buffers)
    try:
        return Packer(conn.settings).pack(lambda buffers: dumps_value(value, buffers), f"the result of job {job_id}")
    except SerializationError:
        raise
    except Exception as e:
        raise SerializationError(f"result of job {job_id} cannot be pickled: {e}") from e


async def write_result(conn: Connection, job_id: str, data: bytes,
                       ttl_s: float | None = DEFAULT_RESULT_TTL_S) -> int:
    """Store an encoded result value."""
    return await kv_put(conn, RESULTS_KV_NAME, job_id, data, ttl_s)


async def write_outcome(conn: Connection, status: JobStatus, result: bytes | Packed,
                        ttl_s: float | None = DEFAULT_RESULT_TTL_S, signer: str | None = None, *,
                        revision: int | None = None) -> JobStatus:
    """Store a finished job's result and status: inline when small, else the result first, then the status."""
    data = result.body if isinstance(result, Packed) else result
    if isinstance(result, Packed) and result.spec is not None and result.packer is not None:
        await result.packer.upload(conn, keep_s=ttl_s or DEFAULT_RESULT_TTL_S)
        status = status.evolve(result_payload=result.spec, result_bytes=result.stored_bytes)
    if len(data) <= INLINE_RESULT_MAX:
        status = status.evolve(result_inline=base64.b64encode(data).decode())
    else:  # the (signed) status names the stored result by its hash
        await write_result(conn, status.job_id, data, ttl_s)
        status = status.evolve(result_sha256=hashlib.sha256(data).hexdigest())
    await write_status(conn, status, ttl_s, signer, revision=revision)
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


async def read_status_or_stand_in(conn: Connection, job_id: str) -> JobStatus | None:
    """Like `read_status`, but an unreadable record comes back as a stand-in in no state, with its revision:
    one bad write must not keep a worker from running, cancelling or recording the job."""
    found = await _get(conn, JOB_STATUS_KV_NAME, job_id)
    if found is None:
        return None
    try:
        return JobStatus.from_bytes(*found)
    except SerializationError as e:
        logger.warning("job %s: unreadable status ignored: %s", job_id, e)
        return JobStatus(job_id=job_id, status=UNREADABLE_STATUS, revision=found[1])


async def fetch_status(job_id: str, url: str | ConnectionSettings | None = None) -> JobStatus | None:
    """The job's status record; `scheduled` if it waits in the schedule store; None if unknown.

    A cancel request no worker has recorded yet shows as the change a worker will make: `cancelled`
    (as of the request), or `stopping` for a running job."""
    conn = await get_connection(url)
    status = await read_status(conn, validate_key(job_id, "job id"))
    if status is not None and (status.ended or status.status in CANCELS):
        return status
    request = await read_cancel_request(conn, job_id)
    if request is not None:
        return cancel_change(status, request, at=request.at)
    if status is not None:
        return status
    if await _get(conn, SCHEDULED_JOBS_KV_NAME, job_id) is not None:
        return JobStatus(job_id=job_id, status=SCHEDULED)
    return None


def check_signed(settings: ConnectionSettings, job_id: str, status: JobStatus) -> None:
    """SignatureError unless `status` (read under `job_id`) carries a signature by a key of `settings`.

    Without keys nothing is checked: then anyone who may write statuses decides what `result()` unpickles.
    """
    refused = record_refusal(settings, STATUS_RECORD, job_id, status.raw)
    if refused:
        raise SignatureError(f"status of job {job_id} refused ({refused}): its result is not read")


async def _result_bytes(conn: Connection, status: JobStatus) -> bytes:
    """The pickled result a finished status points to (inline, or in `naq_results` with the hash it names)."""
    if status.result_inline is not None:
        try:
            return base64.b64decode(status.result_inline, validate=True)
        except binascii.Error as e:
            raise SerializationError(f"result of job {status.job_id} is not base64: {e}") from None
    found = await _get(conn, RESULTS_KV_NAME, status.job_id)
    if found is None:
        raise JobNotFoundError(f"result of job {status.job_id} has expired or was never stored")
    if conn.settings.signing_keys and hashlib.sha256(found[0]).hexdigest() != status.result_sha256:
        raise SignatureError(f"result of job {status.job_id} refused: not the one its signed status names")
    return found[0]


async def _read_result(conn: Connection, status: JobStatus, job_id: str) -> Any:
    """The value of the job `job_id` that `status` (read under that key) describes; checked before unpickled."""
    if status.status != FINISHED:
        raise JobExecutionError(
            f"job {status.job_id} {status.status}: {status.error or 'no error recorded'}",
            job_id=status.job_id, traceback=status.traceback,
        )
    check_signed(conn.settings, job_id, status)
    data = await _result_bytes(conn, status)
    try:
        if status.result_payload is not None:
            return (await load(conn, status.result_payload, shared=False)).loads(data)
        return pickle.loads(data)
    except SerializationError:
        raise
    except Exception as e:
        raise SerializationError(f"result of job {status.job_id} cannot be unpickled here: {e}") from e


async def watch_until_ended(kv: KeyValue, job_id: str, *, ends: frozenset[str] = TERMINAL) -> JobStatus:
    """Watch `job_id` in the status bucket `kv` until its record says it ended (a state in `ends`)."""
    watcher = await kv.watch(job_id)
    try:
        async for entry in watcher:
            if entry is not None and entry.value and entry.operation is None:
                try:
                    status = JobStatus.from_bytes(entry.value, entry.revision or 0)
                except SerializationError as e:  # one bad write must not end the wait: the next may be good
                    logger.warning("job %s: unreadable status skipped: %s", job_id, e)
                    continue
                if status.status in ends:
                    return status
    finally:
        await watcher.stop()
    raise JobNotFoundError(f"stopped watching job {job_id}")


async def wait_for_end(job_id: str, timeout: float | None = None,
                       url: str | ConnectionSettings | None = None) -> JobStatus:
    """Wait (with a KV watch) until the job has ended; TimeoutError after `timeout` seconds.

    A job that ended already costs one read (a watch is a consumer to create and delete).
    """
    conn = await get_connection(url)
    kv = await conn.kv(JOB_STATUS_KV_NAME)
    job_id = validate_key(job_id, "job id")
    async with nats_errors(conn.settings), asyncio.timeout(timeout):
        found = await _get(conn, JOB_STATUS_KV_NAME, job_id)
        if found is not None:
            with contextlib.suppress(SerializationError):  # the watch reports an unreadable record
                status = JobStatus.from_bytes(*found)
                if status.ended:
                    return status
        return await watch_until_ended(kv, job_id)


async def fetch_result(job_id: str, timeout: float | None = None,
                       url: str | ConnectionSettings | None = None) -> Any:
    """Wait for the job to end and return its value; JobExecutionError with the remote traceback if it failed."""
    status = await wait_for_end(job_id, timeout, url)
    return await _read_result(await get_connection(url), status, job_id)
