"""Module-level async helpers (each makes a `Queue` for the call) and their `*_sync` twins."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from naq_ipy.client.bridge import sync_twin
from naq_ipy.client.job import Job
from naq_ipy.client.queue import Queue
from naq_ipy.schedules.record import ScheduledJob
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.wire.settings import DEFAULT_QUEUE_NAME, ConnectionSettings

Url = str | ConnectionSettings | None


async def enqueue(func: Callable[..., Any], *args: Any, queue_name: str = DEFAULT_QUEUE_NAME,
                  nats_url: Url = None, **kwargs: Any) -> Job:
    """Enqueue `func(*args, **kwargs)` on `queue_name` (see `Queue.enqueue`)."""
    return await Queue(queue_name, nats_url).enqueue(func, *args, **kwargs)


async def enqueue_at(dt: datetime | float, func: Callable[..., Any], *args: Any,
                     queue_name: str = DEFAULT_QUEUE_NAME, nats_url: Url = None, **kwargs: Any) -> Job:
    """Run `func` once at `dt` (see `Queue.enqueue_at`)."""
    return await Queue(queue_name, nats_url).enqueue_at(dt, func, *args, **kwargs)


async def enqueue_in(delta: timedelta | float | str, func: Callable[..., Any], *args: Any,
                     queue_name: str = DEFAULT_QUEUE_NAME, nats_url: Url = None, **kwargs: Any) -> Job:
    """Run `func` once after `delta` (see `Queue.enqueue_in`)."""
    return await Queue(queue_name, nats_url).enqueue_in(delta, func, *args, **kwargs)


async def schedule(func: Callable[..., Any], *args: Any, queue_name: str = DEFAULT_QUEUE_NAME,
                   nats_url: Url = None, **kwargs: Any) -> Job:
    """Run `func` by cron or interval (see `Queue.schedule`)."""
    return await Queue(queue_name, nats_url).schedule(func, *args, **kwargs)


async def purge_queue(queue_name: str = DEFAULT_QUEUE_NAME, nats_url: Url = None) -> int:
    """Remove every waiting job of `queue_name`; returns the count removed."""
    return await Queue(queue_name, nats_url).purge()


async def cancel_scheduled_job(job_id: str, nats_url: Url = None) -> bool:
    """Delete a scheduled job (by id or name)."""
    return await Queue(nats_url=nats_url).cancel_scheduled_job(job_id)


async def pause_scheduled_job(job_id: str, nats_url: Url = None) -> bool:
    """Pause a scheduled job."""
    return await Queue(nats_url=nats_url).pause_scheduled_job(job_id)


async def resume_scheduled_job(job_id: str, nats_url: Url = None, catch_up: bool = False) -> bool:
    """Resume a paused scheduled job."""
    return await Queue(nats_url=nats_url).resume_scheduled_job(job_id, catch_up=catch_up)


async def modify_scheduled_job(job_id: str, nats_url: Url = None, **updates: Any) -> bool:
    """Change a scheduled job's timing or options (see `Queue.modify_scheduled_job`)."""
    return await Queue(nats_url=nats_url).modify_scheduled_job(job_id, **updates)


async def get_scheduled_job(job_id: str, nats_url: Url = None) -> ScheduledJob:
    """One scheduled-job record."""
    return await ScheduledJobManager(nats_url).get(job_id)


async def list_scheduled_jobs(status: str | None = None, queue: str | None = None,
                              nats_url: Url = None) -> list[ScheduledJob]:
    """All scheduled jobs, optionally of one status or queue, by next run."""
    return await ScheduledJobManager(nats_url).list(status=status, queue=queue)


enqueue_sync = sync_twin(enqueue)
enqueue_at_sync = sync_twin(enqueue_at)
enqueue_in_sync = sync_twin(enqueue_in)
schedule_sync = sync_twin(schedule)
purge_queue_sync = sync_twin(purge_queue)
cancel_scheduled_job_sync = sync_twin(cancel_scheduled_job)
pause_scheduled_job_sync = sync_twin(pause_scheduled_job)
resume_scheduled_job_sync = sync_twin(resume_scheduled_job)
modify_scheduled_job_sync = sync_twin(modify_scheduled_job)
get_scheduled_job_sync = sync_twin(get_scheduled_job)
list_scheduled_jobs_sync = sync_twin(list_scheduled_jobs)
