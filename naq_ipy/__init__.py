"""naq_ipy: a job queue and scheduler on NATS JetStream, driven from Jupyter.

`%load_ext naq_ipy` loads the IPython magics; the core below never imports IPython.
"""

from naq_ipy.bridge import run_sync, set_loop_mode
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
)
from naq_ipy.helpers import (
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
from naq_ipy.job import Job
from naq_ipy.progress import progress, progress_async
from naq_ipy.queue import Queue
from naq_ipy.retry import ExponentialBackoff
from naq_ipy.schedule import ScheduledJob
from naq_ipy.settings import ConnectionSettings
from naq_ipy.waiting import WaitResult
from naq_ipy.waiting import wait_sync as wait

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError", "ConflictError", "ConnectionSettings", "ExponentialBackoff", "Job",
    "JobExecutionError", "JobNotFoundError", "NaqConnectionError", "NaqException", "PermissionDeniedError",
    "Queue", "QueueMonitor", "RefusedError", "ScheduledJob", "ScheduledJobsPanel", "SerializationError", "WaitResult",
    "cancel_scheduled_job", "cancel_scheduled_job_sync", "enqueue", "enqueue_at", "enqueue_at_sync",
    "enqueue_in", "enqueue_in_sync", "enqueue_sync", "get_scheduled_job", "get_scheduled_job_sync",
    "list_scheduled_jobs", "list_scheduled_jobs_sync", "modify_scheduled_job", "modify_scheduled_job_sync",
    "pause_scheduled_job", "pause_scheduled_job_sync", "progress", "progress_async", "purge_queue",
    "purge_queue_sync", "resume_scheduled_job", "resume_scheduled_job_sync", "run_sync", "schedule",
    "schedule_sync", "set_loop_mode", "wait",
]


_PANELS = ("ScheduledJobsPanel", "QueueMonitor")


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """`naq_ipy.ScheduledJobsPanel` / `naq_ipy.QueueMonitor`, imported (with ipywidgets) on first use."""
    if name in _PANELS:
        from naq_ipy.ipython import panels

        return getattr(panels, name)
    raise AttributeError(f"module 'naq_ipy' has no attribute {name!r}")


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """`%load_ext naq_ipy`: register the magics (IPython is imported only here)."""
    from naq_ipy.ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """`%unload_ext naq_ipy`: remove the magics and stop what the extension started."""
    from naq_ipy.ipython import unload_ipython_extension as unload

    unload(ipython)
