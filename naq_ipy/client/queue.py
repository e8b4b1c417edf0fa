"""Queue: enqueue jobs on `naq.queue.<name>` and manage scheduled jobs in `naq_scheduled_jobs`.

Option keywords (`max_retries`, `retry_delay`, `depends_on`, `timeout`, `result_ttl`,
`job_id`) configure the job and never reach the function; use `Queue.job()` +
`enqueue_job()` to pass a function keyword arguments of those names.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import nats.js.errors

from naq_ipy.client.bridge import sync_twin
from naq_ipy.client.job import JOB_OPTIONS, Job, serialize_many
from naq_ipy.errors import ConfigurationError, RefusedError
from naq_ipy.rules.times import parse_duration, to_timestamp
from naq_ipy.schedules.fires import next_regular_run
from naq_ipy.schedules.record import ScheduledJob, ScheduleState, first_run_utc, validate_interval, validate_timing
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.wire.connection import Connection, get_connection, nats_errors, publish
from naq_ipy.wire.names import JOB_STREAM_NAME, queue_subject
from naq_ipy.wire.publish import publish_many
from naq_ipy.wire.settings import DEFAULT_QUEUE_NAME, ConnectionSettings, validate_queue_name, validate_schedule_name
from naq_ipy.wire.signing import signed_headers

logger = logging.getLogger(__name__)

Call = tuple[Callable[..., Any], tuple[Any, ...]] | tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword arguments into (job options, the function's own kwargs)."""
    if not kwargs:
        return {}, {}
    options = {k: kwargs[k] for k in JOB_OPTIONS if k in kwargs}
    return options, {k: v for k, v in kwargs.items() if k not in JOB_OPTIONS}


class Queue:
    """A named job queue on the JetStream stream `naq_jobs`."""

    def __init__(
        self, name: str = DEFAULT_QUEUE_NAME, nats_url: str | ConnectionSettings | None = None,
        default_timeout: float | None = None,
    ) -> None:
        self.name = validate_queue_name(name)
        self.subject = queue_subject(name)
        self.stream_name = JOB_STREAM_NAME
        self.settings = ConnectionSettings.resolve(nats_url)
        self._default_timeout = default_timeout
        self._scheduled_job_manager = ScheduledJobManager(self.settings)
        self._default_job: Job | None = None

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} at {self.settings.safe_url}>"

    async def _connection(self) -> Connection:
        conn = await get_connection(self.settings)
        await conn.ensure_stream()
        return conn

    def job(self, func: Callable[..., Any], args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
            **options: Any) -> Job:
        """Build (not send) a Job for this queue; `options` are job options only."""
        if not options:  # the common case: a copy of this queue's validated defaults
            return self._defaults().for_call(func, args, kwargs)
        unknown = set(options) - JOB_OPTIONS
        if unknown:
            raise ConfigurationError(f"unknown job options: {', '.join(sorted(unknown))}")
        options.setdefault("timeout", self._default_timeout)
        if options.get("job_id") is None:
            options.pop("job_id", None)
        job = Job(function=func, args=tuple(args), kwargs=dict(kwargs or {}), queue_name=self.name, **options)
        job.url = self.settings
        return job

    def _defaults(self) -> Job:
        """This queue's job with default options, validated once: `job()` copies it for each call."""
        if self._default_job is None:  # its function is a placeholder, replaced in every copy
            self._default_job = self.job(print, (), None, timeout=self._default_timeout)
        return self._default_job

    async def enqueue_job(self, job: Job) -> Job:
        """Publish a prepared Job (one round trip); its id is the message id, so a retry is deduplicated."""
        data = job.serialize()
        conn = await self._connection()
        try:
            await publish(conn, queue_subject(job.queue_name), data, msg_id=job.job_id,
                          headers=signed_headers(self.settings, data, job.queue_name))
        except nats.js.errors.APIError as e:  # stored nothing: a full stream, a limit set by an operator
            raise RefusedError(f"NATS at {self.settings.safe_url} refused job {job.job_id} "
                               f"({getattr(e, 'description', None) or e})", refused=[job]) from None
        logger.debug("enqueued %s %s on %s", job.job_id, job.func_name, job.queue_name)
        job.url = job.url or self.settings  # so job.result() asks the server the job went to
        return job

    async def enqueue(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
        """Enqueue `func(*args, **kwargs)` to run now; job options are taken out of `kwargs`."""
        options, func_kwargs = split_options(kwargs)
        return await self.enqueue_job(self.job(func, args, func_kwargs, **options))

    async def enqueue_many(self, calls: Iterable[Job | Call], **options: Any) -> list[Job]:
        """Enqueue many calls (`Job`s or `(func, args[, kwargs])` tuples), pipelined; all or an error."""
        template: Job | None = None
        jobs: list[Job] = []
        for call in calls:
            if isinstance(call, Job):
                jobs.append(call)
            elif template is None:
                template = self.job(call[0], call[1], call[2] if len(call) > 2 else None, **options)
                jobs.append(template)
            else:  # the options were validated once, for the template
                jobs.append(template.for_call(call[0], call[1], call[2] if len(call) > 2 else None,
                                              job_id=template.job_id if "job_id" in options else None))
        subjects = {name: queue_subject(name) for name in {job.queue_name for job in jobs}}
        datas = serialize_many(jobs)
        messages = [(subjects[job.queue_name], data, job.job_id, signed_headers(self.settings, data, job.queue_name))
                    for job, data in zip(jobs, datas, strict=True)]
        try:
            await publish_many(await self._connection(), messages)
        except RefusedError as e:
            refused = [jobs[i] for i in e.refused]
            raise RefusedError(f"{e}; the other {len(jobs) - len(refused)} jobs are queued, the refused ones "
                               "are in this error's `refused`", refused=refused) from None
        for job in jobs:
            job.url = job.url or self.settings
        return jobs

    async def enqueue_at(self, dt: datetime | float, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
        """Run `func` once at `dt` (aware, or naive = UTC; or a unix timestamp)."""
        options, func_kwargs = split_options(kwargs)
        job = self.job(func, args, func_kwargs, **options)
        await self.schedule_job(job, at=dt)
        return job

    async def enqueue_in(self, delta: timedelta | float | str, func: Callable[..., Any], *args: Any,
                         **kwargs: Any) -> Job:
        """Run `func` once after `delta` (timedelta, seconds or duration text like `5m`)."""
        return await self.enqueue_at(time.time() + parse_duration(delta), func, *args, **kwargs)

    async def schedule(
        self, func: Callable[..., Any], *args: Any, cron: str | None = None,
        interval: timedelta | float | str | None = None, repeat: int | None = None, tz: str | None = None,
        name: str | None = None, misfire: str = "once", paused: bool = False,
        start_at: datetime | float | None = None, **kwargs: Any,
    ) -> Job:
        """Run `func` repeatedly by `cron` (in zone `tz`) or every `interval`; `repeat` runs in total.

        `name` is the entry's key: scheduling the same name again updates it in place.
        """
        options, func_kwargs = split_options(kwargs)
        job = self.job(func, args, func_kwargs, **options)
        await self.schedule_job(job, cron=cron, interval=interval, repeat=repeat, tz=tz, name=name,
                                misfire=misfire, paused=paused, start_at=start_at)
        return job

    async def schedule_job(
        self, job: Job, *, cron: str | None = None, interval: timedelta | float | str | None = None,
        repeat: int | None = None, tz: str | None = None, name: str | None = None, misfire: str = "once",
        paused: bool = False, start_at: datetime | float | None = None, at: datetime | float | None = None,
    ) -> tuple[ScheduledJob, bool]:
        """Store a schedule for a prepared job; returns (record, created). `at` alone makes a one-off."""
        key = validate_schedule_name(name if name is not None else job.job_id)
        interval_s = validate_interval(interval) if interval is not None else None
        if at is not None:
            if cron is not None or interval_s is not None:
                raise ConfigurationError("a one-off run (at) cannot also have cron or interval")
            first = to_timestamp(at)
        else:
            validate_timing(cron=cron, interval_s=interval_s, tz=tz, repeat=repeat, misfire=misfire)
            first = to_timestamp(start_at) if start_at is not None else first_run_utc(cron, interval_s, tz)
        await self._connection()
        stored, created = await self._scheduled_job_manager.store_job(
            job, first, cron, interval_s, repeat, key=key, tz=tz, misfire=misfire, paused=paused)
        logger.info("%s schedule %s (%s), next run %s", "created" if created else "updated", stored.key,
                    stored.describe(), stored.next_run.isoformat())
        return stored, created

    async def purge(self) -> int:
        """Remove every waiting job of this queue; returns how many messages were removed."""
        conn = await self._connection()
        request = json.dumps({"filter": self.subject}).encode()
        async with nats_errors(self.settings):
            reply = await conn.nc.request(f"$JS.API.STREAM.PURGE.{self.stream_name}", request, timeout=5)
        answer = json.loads(reply.data)
        if "error" in answer:
            raise ConfigurationError(f"purge of {self.name!r} refused: {answer['error'].get('description')}")
        return int(answer.get("purged", 0))

    async def get_scheduled_job(self, job_id: str) -> ScheduledJob:
        """The scheduled-job record under `job_id` (its id or name)."""
        return await self._scheduled_job_manager.get(job_id)

    async def list_scheduled_jobs(self, status: str | None = None) -> list[ScheduledJob]:
        """This queue's scheduled jobs (optionally `active` or `paused` only), by next run."""
        return await self._scheduled_job_manager.list(status=status, queue=self.name)

    async def cancel_scheduled_job(self, job_id: str) -> bool:
        """Delete a scheduled job; True when deleted, JobNotFoundError when there is none."""
        return await self._scheduled_job_manager.cancel_job(job_id)

    async def pause_scheduled_job(self, job_id: str) -> bool:
        """Stop a scheduled job from firing until resumed."""
        return await self._scheduled_job_manager.update_job_status(job_id, ScheduleState.PAUSED)

    async def resume_scheduled_job(self, job_id: str, catch_up: bool = False) -> bool:
        """Let a paused job fire again; runs missed while paused are skipped unless `catch_up`."""

        def resume(record: ScheduledJob) -> ScheduledJob:
            next_run = record.next_run_utc
            now = time.time()
            if not catch_up and next_run < now and record.schedule_type != "once":
                next_run = next_regular_run(record, now) or next_run
            return record.evolve(status=ScheduleState.ACTIVE, next_run_utc=next_run)

        await self._scheduled_job_manager.update(job_id, resume)
        return True

    async def modify_scheduled_job(self, job_id: str, **updates: Any) -> bool:
        """Change a scheduled job: cron, interval, repeat (runs left from now), next_run, tz, misfire, queue,
        max_retries, retry_delay, timeout. Validated before anything is written."""
        return await self._scheduled_job_manager.modify_job(job_id, **updates)

    enqueue_sync = sync_twin(enqueue)
    enqueue_job_sync = sync_twin(enqueue_job)
    enqueue_many_sync = sync_twin(enqueue_many)
    enqueue_at_sync = sync_twin(enqueue_at)
    enqueue_in_sync = sync_twin(enqueue_in)
    schedule_sync = sync_twin(schedule)
    schedule_job_sync = sync_twin(schedule_job)
    purge_sync = sync_twin(purge)
    get_scheduled_job_sync = sync_twin(get_scheduled_job)
    list_scheduled_jobs_sync = sync_twin(list_scheduled_jobs)
    cancel_scheduled_job_sync = sync_twin(cancel_scheduled_job)
    pause_scheduled_job_sync = sync_twin(pause_scheduled_job)
    resume_scheduled_job_sync = sync_twin(resume_scheduled_job)
    modify_scheduled_job_sync = sync_twin(modify_scheduled_job)
