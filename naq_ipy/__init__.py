"""naq_ipy: a job queue and scheduler on NATS JetStream, driven from Jupyter.

`%load_ext naq_ipy` loads the IPython magics; the core below never imports IPython.
"""

import sys
from typing import Any

from naq_ipy import moved
from naq_ipy.client.bridge import run_sync, set_loop_mode
from naq_ipy.client.job import Job
from naq_ipy.client.queue import Queue
from naq_ipy.client.shortcuts import (
    cancel_scheduled_job,
    cancel_scheduled_job_sync,
    enqueue,
    enqueue_at,
    enqueue_at_sync,
    enqueue_in,
    enqueue_in_sync,
    enqueue_sync,
    get_scheduled_job,
    get_scheduled_job_sync,
    list_scheduled_jobs,
    list_scheduled_jobs_sync,
    modify_scheduled_job,
    modify_scheduled_job_sync,
    pause_scheduled_job,
    pause_scheduled_job_sync,
    purge_queue,
    purge_queue_sync,
    resume_scheduled_job,
    resume_scheduled_job_sync,
    schedule,
    schedule_sync,
)
from naq_ipy.errors import (
    ConfigurationError,
    ConflictError,
    JobExecutionError,
    JobNotFoundError,
    NaqConnectionError,
    NaqException,
    PermissionDeniedError,
    RefusedError,
    SerializationError,
    SignatureError,
)
from naq_ipy.rules.retry import ExponentialBackoff
from naq_ipy.rules.times import next_cron_runs
from naq_ipy.schedules.record import ScheduledJob
from naq_ipy.schedules.scheduler import run_now, run_now_sync
from naq_ipy.status.cancel import CancelReport, cancel, cancel_sync
from naq_ipy.status.output import fetch_output
from naq_ipy.status.progress import progress, progress_async
from naq_ipy.status.results import fetch_result
from naq_ipy.status.waiting import WaitResult, recent_runs, wait_sync
from naq_ipy.wire.settings import ConnectionSettings

__version__ = "0.1.0"

moved.install()

__all__ = [
    "ConfigurationError", "ConflictError", "ConnectionSettings", "ExponentialBackoff", "Job",
    "JobExecutionError", "JobNotFoundError", "NaqConnectionError", "NaqException", "PermissionDeniedError",
    "CancelReport", "Queue", "QueueMonitor", "RefusedError", "ScheduledJob", "ScheduledJobsPanel",
    "SerializationError", "SignatureError", "WaitResult", "cancel", "cancel_scheduled_job", "cancel_scheduled_job_sync",
    "cancel_sync", "enqueue", "enqueue_at", "enqueue_at_sync",
    "enqueue_in", "enqueue_in_sync", "enqueue_sync", "fetch_result", "get_scheduled_job", "get_scheduled_job_sync",
    "list_scheduled_jobs", "list_scheduled_jobs_sync", "modify_scheduled_job", "modify_scheduled_job_sync",
    "next_cron_runs", "pause_scheduled_job", "pause_scheduled_job_sync", "progress", "progress_async", "purge_queue",
    "purge_queue_sync", "recent_runs", "resume_scheduled_job", "resume_scheduled_job_sync", "run_now",
    "run_now_sync", "run_sync", "schedule",
    "schedule_sync", "set_loop_mode", "wait",
    "fetch_output",
]


_PANELS = ("ScheduledJobsPanel", "QueueMonitor")


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """`naq_ipy.ScheduledJobsPanel` / `naq_ipy.QueueMonitor`, imported (with ipywidgets) on first use."""
    if name in _PANELS:
        from naq_ipy.ipython import panels

        return getattr(panels, name)
    raise AttributeError(f"module 'naq_ipy' has no attribute {name!r}")


def wait(jobs: Any, timeout: float | None = None, raise_on_failure: bool = False, *,
         url: str | ConnectionSettings | None = None) -> WaitResult:
    """Wait until `jobs` (Jobs or ids) end; inside a Jupyter kernel with one live progress bar for them all."""
    if "ipykernel" in sys.modules:  # only a kernel shows widgets: the IPython face is imported only then
        from naq_ipy.ipython.livewait import wait_with_bar

        return wait_with_bar(jobs, timeout, raise_on_failure, url=url)
    return wait_sync(jobs, timeout, raise_on_failure, url=url)


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """`%load_ext naq_ipy`: register the magics (IPython is imported only here)."""
    from naq_ipy.ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """`%unload_ext naq_ipy`: remove the magics and stop what the extension started."""
    from naq_ipy.ipython import unload_ipython_extension as unload

    unload(ipython)
