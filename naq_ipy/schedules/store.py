"""ScheduledJobManager: reads and changes `naq_scheduled_jobs` with revision-checked updates only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import nats.js.errors
from nats.js.kv import KeyValue

from naq_ipy.client.job import Job
from naq_ipy.errors import ConfigurationError, ConflictError, JobNotFoundError, SerializationError
from naq_ipy.schedules.changes import apply_updates
from naq_ipy.schedules.record import (
    STATUSES,
    ScheduledJob,
    new_record,
    validate_misfire,
    validate_repeat,
    validate_timing,
)
from naq_ipy.wire.connection import check_payload, get_connection, kv_write_checked, nats_errors
from naq_ipy.wire.names import EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER, KV_DELETE_OPERATIONS, SCHEDULED_JOBS_KV_NAME
from naq_ipy.wire.settings import ConnectionSettings, validate_key

logger = logging.getLogger(__name__)

UPDATE_ATTEMPTS = 5
LIST_TIMEOUT_S = 5.0
# what a revision-checked KV write adds to the message (for the size check)
_KV_WRITE_HEADERS = {EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: "9" * 20}


class ScheduledJobManager:
    """Stores, reads, changes and deletes scheduled-job records for one NATS setup."""

    def __init__(self, url: str | ConnectionSettings | None = None) -> None:
        self.settings = ConnectionSettings.resolve(url)

    async def get_kv(self) -> KeyValue:
        """The `naq_scheduled_jobs` bucket on this loop's pooled connection."""
        conn = await get_connection(self.settings)
        return await conn.kv(SCHEDULED_JOBS_KV_NAME)

    async def get(self, key: str) -> ScheduledJob:
        """The record under `key`; JobNotFoundError if there is none."""
        kv = await self.get_kv()
        try:
            async with nats_errors(self.settings):
                entry = await kv.get(validate_key(key))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            raise JobNotFoundError(f"no scheduled job named {key!r}") from None
        assert entry.value is not None
        return ScheduledJob.from_bytes(entry.value, entry.revision or 0)

    async def store(self, record: ScheduledJob) -> tuple[ScheduledJob, bool]:
        """Create `record`, or update the entry already under its key in place.

        Returns the stored record and True if it was created. An update keeps the
        existing entry's run count and creation time.
        """
        kv = await self.get_kv()
        await self._check_size(record)
        async with nats_errors(self.settings):
            try:
                revision = await kv.create(record.key, record.to_bytes())
                return _with_revision(record, revision), True
            except nats.js.errors.KeyWrongLastSequenceError:
                pass

        def replace_entry(old: ScheduledJob) -> ScheduledJob:
            return record.evolve(run_count=old.run_count, created_at=old.created_at,
                                 last_run_utc=old.last_run_utc, last_run_id=old.last_run_id)

        return await self.update(record.key, replace_entry), False

    async def update(self, key: str, change: Callable[[ScheduledJob], ScheduledJob]) -> ScheduledJob:
        """Apply `change` to the current record with `update(last=revision)`; re-read and retry on conflict."""
        kv = await self.get_kv()
        for _ in range(UPDATE_ATTEMPTS):
            current = await self.get(key)
            new = change(current)
            await self._check_size(new)
            revision = await kv_write_checked(kv, self.settings, key, new.to_bytes(), current.revision)
            if revision is not None:
                return _with_revision(new, revision)
            logger.debug("scheduled job %s changed concurrently; retrying", key)
        raise ConflictError(f"scheduled job {key!r} kept changing; gave up after {UPDATE_ATTEMPTS} attempts")

    async def update_if_unchanged(self, record: ScheduledJob, new: ScheduledJob) -> ScheduledJob:
        """Write `new` only if the entry is still at `record.revision`; ConflictError otherwise."""
        kv = await self.get_kv()
        revision = await kv_write_checked(kv, self.settings, record.key, new.to_bytes(), record.revision)
        if revision is None:
            raise ConflictError(f"scheduled job {record.key!r} was changed elsewhere since it was read")
        return _with_revision(new, revision)

    async def _check_size(self, record: ScheduledJob) -> None:
        """Before writing: ConfigurationError for a value readers refuse, SerializationError over max payload."""
        conn = await get_connection(self.settings)
        check_payload(conn, record.check().to_bytes(), f"scheduled job {record.key!r}", headers=_KV_WRITE_HEADERS)

    async def _revision(self, key: str) -> int:
        """The current revision of the entry under `key`, readable or not; JobNotFoundError if there is none."""
        kv = await self.get_kv()
        try:
            async with nats_errors(self.settings):
                return (await kv.get(validate_key(key))).revision or 0
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            raise JobNotFoundError(f"no scheduled job named {key!r}") from None

    async def delete(self, key: str) -> bool:
        """Delete the entry under `key` (revision-checked; an unreadable one too); JobNotFoundError if there is none."""
        kv = await self.get_kv()
        for _ in range(UPDATE_ATTEMPTS):
            revision = await self._revision(key)
            if await kv_write_checked(kv, self.settings, key, None, revision) is not None:
                return True
        raise ConflictError(f"scheduled job {key!r} kept changing; could not delete it")

    async def store_job(
        self, job: Job, scheduled_timestamp: float, cron: str | None = None, interval_seconds: float | None = None,
        repeat: int | None = None, *, key: str | None = None, tz: str | None = None, misfire: str = "once",
        paused: bool = False,
    ) -> tuple[ScheduledJob, bool]:
        """Store `job` to run at `scheduled_timestamp` (UTC seconds), then by cron or interval if given."""
        kind = "once"
        if cron is not None or interval_seconds is not None:
            kind = validate_timing(cron=cron, interval_s=interval_seconds, tz=tz, repeat=repeat, misfire=misfire)
        record = new_record(job, key=key or job.job_id, schedule_type=kind, next_run_utc=scheduled_timestamp,
                            cron=cron, tz=tz, interval_s=interval_seconds, repeat=validate_repeat(repeat),
                            misfire=validate_misfire(misfire), paused=paused)
        return await self.store(record)

    async def cancel_job(self, job_id: str) -> bool:
        """Delete the scheduled job `job_id` (id or name)."""
        return await self.delete(job_id)

    async def update_job_status(self, job_id: str, status: str) -> bool:
        """Set `active` or `paused` (revision-checked)."""
        if status not in STATUSES:
            raise ConfigurationError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        await self.update(job_id, lambda record: record.evolve(status=status))
        return True

    async def modify_job(self, job_id: str, **updates: Any) -> bool:
        """Change timing or options of a scheduled job (see `modify.MODIFIABLE`); validated before writing."""
        apply_updates(await self.get(job_id), updates)
        await self.update(job_id, lambda record: apply_updates(record, updates))
        return True

    async def list(self, status: str | None = None, queue: str | None = None) -> list[ScheduledJob]:
        """Every record (optionally one status / queue), sorted by next run.

        A record that cannot be read is logged and listed as an `unreadable` stand-in
        (`ScheduledJob.unreadable`) when no filter is given.
        """
        kv = await self.get_kv()
        records: list[ScheduledJob] = []
        async with nats_errors(self.settings):
            if (await kv.status()).values == 0:
                return []
            watcher = await kv.watchall()
            try:
                # nats-py's "initial values done" marker (None) can arrive before the values when they
                # are delivered while it asks for the consumer's info: end at the entry with no more
                # pending (delta 0) instead; deletes are read too, so that last entry always comes
                while True:
                    entry = await watcher.updates(timeout=LIST_TIMEOUT_S)
                    if entry is None:
                        continue
                    if entry.operation not in KV_DELETE_OPERATIONS and entry.value is not None:
                        records.append(read_listed(entry.key, entry.value, entry.revision or 0))
                    if not entry.delta:
                        break
            finally:
                await watcher.stop()
        return sorted(
            (r for r in records if (status is None or r.status == status) and (queue is None or r.queue_name == queue)),
            key=lambda r: r.next_run_utc,
        )


def read_listed(key: str, value: bytes, revision: int) -> ScheduledJob:
    """The record of one listed entry, or its `unreadable` stand-in (logged once here)."""
    try:
        return ScheduledJob.from_bytes(value, revision)
    except SerializationError as e:
        logger.warning("unreadable scheduled job %r (revision %d): %s", key, revision, e)
        return ScheduledJob.unreadable(key, revision, e)



def _with_revision(record: ScheduledJob, revision: int) -> ScheduledJob:
    return replace(record, revision=revision)
