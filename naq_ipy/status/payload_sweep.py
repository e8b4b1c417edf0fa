"""How long a payload lives: the sweep, and dropping the payloads of purged or cancelled jobs.

An object is kept while anything may need it:
- until its `Naq-Keep-Until` (an argument: an hour after its last upload, which covers the time
  between upload and publish; a result: its job's result TTL, like the status record naming it);
- while a message of `naq_jobs` refers to it (queued, delayed by a nak, retrying, waiting for its
  dependencies, running: a message leaves the work-queue stream only when acked);
- while a failed job kept in `naq_failed_jobs` (it can be requeued) or a schedule of
  `naq_scheduled_jobs` (active or paused, its captured values) refers to it.
The sweep (`sweep_payloads`, run by every scheduler and worker about every `SWEEP_INTERVAL_S`) deletes every other
object, and chunks no meta points at (a writer that died mid-write) once they are an hour old.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable

import nats.js.errors

from naq_ipy.client.job import read_header
from naq_ipy.client.offload import ARGS_KEEP_S, spec_refs
from naq_ipy.errors import NaqException
from naq_ipy.schedules.record import ScheduledJob
from naq_ipy.wire import payloads
from naq_ipy.wire.connection import Connection, nats_errors
from naq_ipy.wire.names import (
    FAILED_STREAM_NAME,
    JOB_STREAM_NAME,
    QUEUE_SUBJECT_PREFIX,
    SCHEDULED_JOBS_KV_NAME,
    kv_stream,
    payload_subject_prefix,
)

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 600.0
ORPHAN_CHUNKS_AGE_S = 3600.0  # chunks without meta this old belong to a writer that died
RECENT_UPLOAD_S = 600.0  # `drop_payloads` spares objects uploaded this recently (their job may still be uploading)


async def _stream_datas(conn: Connection, stream: str, subject: str) -> AsyncIterator[bytes]:
    """The data of every message on `subject` in `stream`, read by sequence (no consumer: work-queue safe)."""
    try:
        async with nats_errors(conn.settings):
            info = await conn.js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return
    seq, last = info.state.first_seq, info.state.last_seq
    while info.state.messages and seq <= last:
        try:
            async with nats_errors(conn.settings):
                msg = await conn.js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return
        yield msg.data or b""
        seq = (msg.seq or seq) + 1


def job_payload_names(data: bytes) -> set[str]:
    """The objects job bytes refer to (none for unreadable bytes)."""
    try:
        header, _ = read_header(data)
        return {ref.name for ref in spec_refs(header.get("payload"))}
    except NaqException:
        return set()


async def referenced_payloads(conn: Connection, subject: str = f"{QUEUE_SUBJECT_PREFIX}.>") -> set[str]:
    """Objects that jobs in the stream, failed jobs or schedules refer to."""
    used: set[str] = set()
    async for data in _stream_datas(conn, JOB_STREAM_NAME, subject):
        used |= job_payload_names(data)
    async for data in _stream_datas(conn, FAILED_STREAM_NAME, ">"):
        used |= job_payload_names(data)
    async for data in _stream_datas(conn, kv_stream(SCHEDULED_JOBS_KV_NAME), ">"):
        try:
            used |= job_payload_names(ScheduledJob.from_bytes(data).job_data)
        except NaqException:
            continue  # a delete marker, or a record no one can fire
    return used


async def sweep_payloads(conn: Connection, now: float | None = None) -> list[str]:
    """Delete objects past their keep-until that nothing refers to, and old orphan chunks; the names deleted."""
    now = time.time() if now is None else now
    objects = await payloads.list_objects(conn)
    expired = {name for name, meta in objects.items() if payloads.keep_until(meta) <= now}
    removed: list[str] = []
    if expired:
        for name in sorted(expired - await referenced_payloads(conn)):
            # checked again on the meta the delete overwrites: a client may have uploaded it anew meanwhile
            if await payloads.delete(conn, name, expired_by=now):
                removed.append(name)
    await _purge_orphan_chunks(conn, {str(meta.get("nuid")) for meta in objects.values()}, now)
    if removed:
        logger.info("payload sweep removed %d object(s)", len(removed))
    return removed


async def sweep_forever(conn: Connection, clock: Callable[[], float] = time.time,
                        interval_s: float = SWEEP_INTERVAL_S) -> None:
    """`sweep_payloads` every `interval_s` (the first after a random part of it, so processes spread out)."""
    await asyncio.sleep(random.uniform(0.5, 1.0) * interval_s)
    while True:
        try:
            await sweep_payloads(conn, clock())
        except Exception as e:  # the next sweep tries again; nothing is lost by waiting
            logger.warning("payload sweep failed: %s", e or type(e).__name__)
        await asyncio.sleep(interval_s)


async def _purge_orphan_chunks(conn: Connection, live_nuids: set[str], now: float) -> None:
    prefix = payload_subject_prefix("C")
    for subject in await payloads.stored_subjects(conn, "C"):
        if subject[len(prefix):] in live_nuids:
            continue
        try:
            async with nats_errors(conn.settings):
                last = await conn.js.get_msg(payloads.STREAM_NAME, subject=subject)
        except nats.js.errors.NotFoundError:
            continue
        if last.time is not None and last.time.timestamp() < now - ORPHAN_CHUNKS_AGE_S:
            async with nats_errors(conn.settings):
                await conn.js.purge_stream(payloads.STREAM_NAME, subject=subject)
            logger.info("payload sweep purged orphan chunks %s", subject)


async def drop_payloads(conn: Connection, job_datas: Iterable[bytes] | None = None,
                        now: float | None = None) -> list[str]:
    """Delete, without waiting for the sweep, the objects no job or schedule refers to any more (after a purge).

    `job_datas`: only the objects of these jobs (a cancel). Spared: results within their TTL, and
    objects uploaded again in the last `RECENT_UPLOAD_S` (a new job sharing them may be on its way;
    the sweep takes them later if not).
    """
    now = time.time() if now is None else now
    if job_datas is None:
        names = set(await payloads.list_objects(conn))
    else:
        names = set().union(*map(job_payload_names, job_datas))
    if not names:
        return []
    removed = []
    for name in sorted(names - await referenced_payloads(conn)):
        if await payloads.delete(conn, name, expired_by=now + ARGS_KEEP_S - RECENT_UPLOAD_S):
            removed.append(name)
    return removed
