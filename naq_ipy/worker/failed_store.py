"""The failed-jobs store: stream `naq_failed_jobs`, one message per job that failed for good or was rejected.

Subject `naq.failed.<job_id>` (`naq.failed.rejected-<stream seq>` when no job id could be
read); payload = the job's original wire bytes; headers say why and when. Listing reads
headers only (through the strict record checks) and never unpickles anything.

The stream is bounded (settings `failed_max_bytes`, `failed_max_age_s`; the oldest entries go
first) and so is each entry: bytes that would not fit are cut (header `Naq-Truncated` = the
original size) and such an entry cannot be requeued.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from naq_ipy.client.bridge import sync_twin
from naq_ipy.client.job import read_header
from naq_ipy.errors import ConfigurationError, JobNotFoundError, SerializationError
from naq_ipy.rules.records import TIMESTAMP, checked, optional, text
from naq_ipy.status.results import QUEUED, JobStatus, write_status
from naq_ipy.wire.connection import Connection, get_connection, nats_errors, publish
from naq_ipy.wire.names import (
    FAILED_MAX_MSG_BYTES,
    FAILED_STREAM_NAME,
    FAILED_SUBJECT_PREFIX,
    HEADER_FAILED_AT,
    HEADER_FUNC,
    HEADER_JOB_ID,
    HEADER_QUEUE,
    HEADER_REASON,
    HEADER_TRUNCATED,
    SIGNATURE_HEADER,
    failed_msg_id,
    failed_subject,
    failed_subject_job_id,
    queue_subject,
    requeue_msg_id,
)
from naq_ipy.wire.settings import ConnectionSettings, validate_queue_name
from naq_ipy.worker.executor import one_line

logger = logging.getLogger(__name__)

REJECTED_PREFIX = "rejected-"
LIST_WAIT_S = 5.0
HEADERS_ROOM = 4096  # what an entry's headers may take of its size limit


@dataclass(frozen=True)
class FailedJob:
    """One entry of the failed-jobs store; `job_id` is `rejected-<seq>` for input without a job id."""

    job_id: str
    queue_name: str | None
    func_name: str | None
    reason: str
    failed_at: float
    seq: int


async def record_failed(
    conn: Connection, data: bytes, *, queue_name: str, reason: str, seq: int,
    job_id: str | None = None, func_name: str | None = None, signature: str | None = None,
) -> None:
    """Store the original bytes of a failed or rejected job (`seq` = its job-stream sequence).

    The message id makes a repeat for the same delivery (a worker crash before its ack) a no-op.
    `signature` (the job's `Naq-Signature`) is kept so a requeue sends the job as it was signed.
    """
    await conn.ensure_stream(FAILED_STREAM_NAME)
    name = job_id or f"{REJECTED_PREFIX}{seq}"
    headers = {HEADER_QUEUE: queue_name, HEADER_REASON: one_line(reason), HEADER_FAILED_AT: f"{time.time():.6f}"}
    if job_id:
        headers[HEADER_JOB_ID] = job_id
    if func_name:
        headers[HEADER_FUNC] = one_line(func_name, 200)
    if signature:
        headers[SIGNATURE_HEADER] = signature[:200]
    room = min(FAILED_MAX_MSG_BYTES, conn.max_payload) - HEADERS_ROOM
    if len(data) > room:  # never lose the record (the job would come back forever): keep what fits
        headers[HEADER_TRUNCATED] = str(len(data))
        data = data[:room]
    await publish(conn, failed_subject(name), data, msg_id=failed_msg_id(name, seq), headers=headers)


_HEADER_SPEC = {HEADER_JOB_ID: optional(text(200)), HEADER_QUEUE: optional(text(200)), HEADER_FUNC: optional(text(200)),
                HEADER_REASON: optional(text(1000))}


def _entry(msg: Msg) -> FailedJob:
    """A listing row from an entry's headers, read with the strict record checks (bad values are blanked)."""
    raw = msg.headers or {}
    try:
        headers = checked(raw, _HEADER_SPEC, f"failed-store entry {msg.metadata.sequence.stream}")
    except SerializationError as e:
        logger.warning("%s", e)
        headers = {}
    try:
        failed_at = float(TIMESTAMP(float(raw.get(HEADER_FAILED_AT, "0"))))
    except (TypeError, ValueError):
        failed_at = 0.0
    return FailedJob(
        job_id=headers.get(HEADER_JOB_ID) or failed_subject_job_id(msg.subject),
        queue_name=headers.get(HEADER_QUEUE),
        func_name=headers.get(HEADER_FUNC),
        reason=headers.get(HEADER_REASON) or "",
        failed_at=failed_at,
        seq=msg.metadata.sequence.stream,
    )


async def _read_entries(conn: Connection) -> list[FailedJob]:
    async with nats_errors(conn.settings):
        await conn.ensure_stream(FAILED_STREAM_NAME)
        info = await conn.js.stream_info(FAILED_STREAM_NAME)
        if not info.state.messages:
            return []
        sub = await conn.js.subscribe(f"{FAILED_SUBJECT_PREFIX}.>", stream=FAILED_STREAM_NAME, ordered_consumer=True,
                                      headers_only=True, deliver_policy=api.DeliverPolicy.ALL)
        entries: list[FailedJob] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=LIST_WAIT_S)
                entries.append(_entry(msg))
                if msg.metadata.num_pending == 0:
                    break
        except nats.errors.TimeoutError:
            pass  # the store shrank after it was counted: what arrived is all there is
        finally:
            await sub.unsubscribe()
    return entries


async def list_failed(url: str | ConnectionSettings | None = None, queue: str | None = None) -> list[FailedJob]:
    """Every failed or rejected job (optionally of one queue), oldest first."""
    entries = await _read_entries(await get_connection(url))
    return [e for e in entries if queue is None or e.queue_name == queue]


async def requeue_failed(job_id: str, url: str | ConnectionSettings | None = None) -> dict[str, Any]:
    """Put a failed job back on its queue under the same job id; returns its header.

    Its status becomes `queued` before the job is published (so a fast worker's `running`
    is never overwritten), then the store entry is deleted.
    """
    conn = await get_connection(url)
    try:
        async with nats_errors(conn.settings):
            raw = await conn.js.get_last_msg(FAILED_STREAM_NAME, failed_subject(job_id))
    except nats.js.errors.NotFoundError:
        raise JobNotFoundError(f"no failed job {job_id!r}") from None
    data = raw.data or b""
    if (raw.headers or {}).get(HEADER_TRUNCATED):
        raise ConfigurationError(f"failed job {job_id!r} was stored cut to fit the failed-jobs store: "
                                 "it cannot be requeued")
    header, _ = read_header(data)
    queue = validate_queue_name(header.get("queue_name", ""))
    await conn.ensure_stream()
    now = time.time()
    await write_status(conn, JobStatus(job_id=job_id, status=QUEUED, queue_name=queue,
                                       func_name=header.get("func_name"), enqueue_time=now,
                                       schedule_key=header.get("schedule_key"),
                                       message="requeued from the failed-jobs store", updated_at=now))
    # re-sent with its original signature, never signed afresh: a rejected forgery stays rejected
    signature = (raw.headers or {}).get(SIGNATURE_HEADER)
    await publish(conn, queue_subject(queue), data, msg_id=requeue_msg_id(job_id, time.time_ns()),
                  headers={SIGNATURE_HEADER: signature} if signature else None)
    async with nats_errors(conn.settings):
        await conn.js.delete_msg(FAILED_STREAM_NAME, raw.seq or 0)
    logger.info("job %s requeued on %s", job_id, queue)
    return header


list_failed_sync = sync_twin(list_failed)
requeue_failed_sync = sync_twin(requeue_failed)
