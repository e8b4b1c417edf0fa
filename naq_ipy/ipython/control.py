"""The `%naq` subcommands: status, the kernel's processes, schedules, results and panels.

`Control(engine).handlers()` is the dispatch table the `%naq` magic looks commands up in; the control
uses the engine, never the reverse.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

import nats.js.errors

from naq_ipy.client.bridge import run_sync
from naq_ipy.client.job import Job
from naq_ipy.errors import ConfigurationError, JobNotFoundError
from naq_ipy.ipython.commands import NaqEngine, wait_seconds
from naq_ipy.ipython.liveoutput import OutputRelay
from naq_ipy.ipython.livewait import run_redrawing, wait_with_bar
from naq_ipy.local.processes import PROCESSES
from naq_ipy.rules.times import format_relative, from_timestamp, resolve_zone
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.status.cancel import Outcome, cancel_sync, names_schedule
from naq_ipy.status.output import read_output, relay_output
from naq_ipy.status.results import fetch_result, fetch_status
from naq_ipy.status.workers import idle_queue_hint, list_workers
from naq_ipy.views.schedules import every, schedules_table
from naq_ipy.views.tables import Table
from naq_ipy.wire.connection import Connection, get_connection, nats_errors
from naq_ipy.wire.names import (
    FAILED_STREAM_NAME,
    JOB_STATUS_KV_NAME,
    JOB_STREAM_NAME,
    RESULTS_KV_NAME,
    SCHEDULED_JOBS_KV_NAME,
    SCHEDULER_CLOCK_KV_NAME,
    kv_stream,
)
from naq_ipy.wire.server import is_reachable
from naq_ipy.wire.settings import default_url, redact_url, validate_key, validate_queue_name

Handler = Callable[[argparse.Namespace], Any]

STATUS_TIMEOUT_S = 10.0
# the scheduler rewrites its clock key every 60 s: older than this, it is gone
SCHEDULER_FRESH_S = 150.0
_COUNTED_STREAMS = (
    ("jobs waiting", JOB_STREAM_NAME),
    ("failed jobs", FAILED_STREAM_NAME),
    ("scheduled jobs", kv_stream(SCHEDULED_JOBS_KV_NAME)),
    ("job statuses", kv_stream(JOB_STATUS_KV_NAME)),
    ("results", kv_stream(RESULTS_KV_NAME)),
)


async def _stream_count(conn: Connection, stream: str) -> str:
    try:
        async with nats_errors(conn.settings):
            info = await conn.js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return "0 (not created yet)"
    return f"{info.state.messages:,}"


async def _live_schedulers(conn: Connection) -> list[str]:
    try:
        async with nats_errors(conn.settings):
            kv = await conn.js.key_value(SCHEDULER_CLOCK_KV_NAME)
            watcher = await kv.watchall(ignore_deletes=True)
    except nats.js.errors.BucketNotFoundError:
        return []
    live: list[str] = []
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.created is not None and time.time() - entry.created.timestamp() < SCHEDULER_FRESH_S:
                live.append(entry.key)
    finally:
        await watcher.stop()
    return live


async def server_facts(url: str) -> list[tuple[str, str]]:
    """Message counts of naq's streams and buckets, live workers and schedulers at `url`."""
    conn = await get_connection(url)
    rows = [(label, await _stream_count(conn, stream)) for label, stream in _COUNTED_STREAMS]
    workers = [f"{w.get('worker_id')} on {','.join(w.get('queues', []))}" for w in await list_workers(url)]
    schedulers = await _live_schedulers(conn)
    for label, names in (("workers alive", workers), ("schedulers alive", schedulers)):
        rows.append((label, f"{len(names)}: {'; '.join(names)}" if names else "0"))
    return rows


class Control:
    """Handlers of `%naq` subcommands, bound to one engine."""

    def __init__(self, engine: NaqEngine) -> None:
        self.engine = engine

    def handlers(self) -> dict[str, Handler]:
        """The dispatch table: `%naq` command key -> handler."""
        table: dict[str, Handler] = {
            "status": self.status, "list": self.list_schedules, "pause": self.pause, "resume": self.resume,
            "cancel": self.cancel, "run": self.run_schedule, "result": self.result, "jobs": self.jobs,
            "monitor": self.monitor, "wait": self.wait, "logs": self.logs,
            "server start": self.server_start, "server stop": self.server_stop, "server status": self.server_status,
            "worker start": self.worker_start, "scheduler start": self.scheduler_start,
        }
        for kind in ("worker", "scheduler"):
            table[f"{kind} stop"] = functools.partial(self.stop_children, kind)
            table[f"{kind} status"] = functools.partial(self.children_status, kind)
        return table

    def status(self, args: argparse.Namespace) -> Table:
        """URL, reachability, naq's streams and buckets, live workers and schedulers, this kernel's processes."""
        url = self.engine.url(start=False)
        rows: list[tuple[str, str]] = [("url", redact_url(url))]
        if is_reachable(url):
            rows.append(("server", "reachable" + self._owned_server_text()))
            rows += run_sync(server_facts(url), STATUS_TIMEOUT_S)
        else:
            rows.append(("server", "not reachable"))
        mine = {kind: len(PROCESSES.running(kind)) for kind in ("worker", "scheduler")}
        rows.append(("this kernel", f"{mine['worker']} worker(s), {mine['scheduler']} scheduler(s) running"
                     + (f"; logs in {PROCESSES.log_dir}" if PROCESSES.children else "")))
        return Table(("", ""), rows, title="naq status")

    def _owned_server_text(self) -> str:
        server = PROCESSES.server
        if server is None or not server.running:
            return ""
        return f" (started by this kernel: pid {server.pid}, data in {server.store_dir}, log {server.log_file})"

    def server_start(self, args: argparse.Namespace) -> None:
        """Start the embedded nats-server for the configured URL, unless something answers there."""
        configured = self.engine.config.url
        if PROCESSES.server is not None and PROCESSES.server.running:
            self.engine.say(f"this kernel already runs a NATS server at {PROCESSES.server.url}")
        elif is_reachable(configured):
            self.engine.say(f"a NATS server already answers at {redact_url(configured)}; not starting another")
        else:
            self.engine.start_server(configured)

    def server_stop(self, args: argparse.Namespace) -> None:
        """Stop the nats-server this kernel started (never someone else's)."""
        server = PROCESSES.stop_server()
        self.engine.publish_url()
        if server is None:
            self.engine.say("this kernel runs no NATS server")
            return
        now = default_url()
        again = "" if now == server.url else f"; calls without a URL go to {redact_url(now)} again"
        self.engine.say(f"stopped the NATS server at {server.url} (pid {server.pid}){again}")

    def server_status(self, args: argparse.Namespace) -> Table:
        """URL, reachability, and the embedded server's pid, data dir and log."""
        url = self.engine.url(start=False)
        rows = [("url", redact_url(url)), ("reachable", "yes" if is_reachable(url) else "no")]
        server = PROCESSES.server
        if server is not None and server.running:
            rows += [("started by", f"this kernel (pid {server.pid})"), ("data", str(server.store_dir)),
                     ("log", str(server.log_file))]
        return Table(("", ""), rows, title="NATS server")

    def worker_start(self, args: argparse.Namespace) -> None:
        """Start one worker process on the given queues (default: NaqMagics.default_queue)."""
        queues = [validate_queue_name(q) for q in args.queues or [self.engine.config.default_queue]]
        if args.concurrency is not None and args.concurrency < 1:
            raise ConfigurationError(f"-c takes a number of jobs >= 1, got {args.concurrency}")
        argv = [] if args.concurrency is None else ["-c", str(args.concurrency)]
        child = PROCESSES.start("worker", argv, url=self.engine.url(), names=queues)
        self.engine.say(f"started worker pid {child.pid} on {', '.join(queues)} (log {child.log_path})")

    def scheduler_start(self, args: argparse.Namespace) -> None:
        """Start the scheduler process, unless this kernel already runs one."""
        running = PROCESSES.running("scheduler")
        if running:
            self.engine.say(f"this kernel already runs a scheduler (pid {running[0].pid})")
            return
        child = PROCESSES.start("scheduler", [], url=self.engine.url())
        self.engine.say(f"started scheduler pid {child.pid} (log {child.log_path})")

    def stop_children(self, kind: str, args: argparse.Namespace) -> None:
        """Stop this kernel's processes of `kind`."""
        stopped = PROCESSES.stop(kind)
        pids = ", ".join(str(c.pid) for c in stopped)
        self.engine.say(f"stopped {len(stopped)} {kind} process(es): pid {pids}" if stopped
                        else f"this kernel runs no {kind}")

    def children_status(self, kind: str, args: argparse.Namespace) -> Table:
        """This kernel's processes of `kind`, live or exited, with their logs."""
        now = from_timestamp(time.time())
        rows = [(c.pid, c.state(), " ".join(c.command[3:]) or "-",
                 format_relative(from_timestamp(c.started_at), now), str(c.log_path))
                for c in PROCESSES.children if c.kind == kind]
        return Table(("pid", "state", "arguments", "started", "log"), rows, title=f"{kind} processes of this kernel",
                     empty=f"this kernel started no {kind}")

    def list_schedules(self, args: argparse.Namespace) -> Table:
        """Every scheduled job as a table."""
        records = run_sync(ScheduledJobManager(self.engine.url()).list())
        return schedules_table(records, resolve_zone(self.engine.config.timezone))

    def pause(self, args: argparse.Namespace) -> None:
        """Pause a scheduled job by name or id."""
        self.engine.queue(None).pause_scheduled_job_sync(args.key)
        self.engine.say(f"paused schedule {args.key!r}")

    def resume(self, args: argparse.Namespace) -> None:
        """Resume a paused scheduled job; runs missed while paused are skipped."""
        self.engine.queue(None).resume_scheduled_job_sync(args.key)
        self.engine.say(f"resumed schedule {args.key!r}")

    def cancel(self, args: argparse.Namespace) -> None:
        """Cancel jobs (a variable holding Jobs, or a job id), or delete the schedule of that name."""
        value = self.engine.shell.user_ns.get(args.key) if args.key.isidentifier() else None
        if value is not None:
            jobs = [value] if isinstance(value, Job) else list(value) if isinstance(value, list | tuple) else []
            if not jobs or not all(isinstance(job, Job) for job in jobs):
                raise ConfigurationError(f"{args.key!r} must hold a Job or a list of Jobs, got {type(value).__name__}")
            self.engine.say(cancel_sync(jobs, self.engine.url()).text())
            return
        if run_sync(names_schedule(args.key, self.engine.url())):
            self.engine.queue(None).cancel_scheduled_job_sync(args.key)
            self.engine.say(f"cancelled schedule {args.key!r}")
            return
        report = cancel_sync(args.key, self.engine.url())
        if report[args.key] is Outcome.NOT_FOUND:
            raise JobNotFoundError(f"no job or schedule named {args.key!r}")
        self.engine.say(report.text())

    def run_schedule(self, args: argparse.Namespace) -> None:
        """Fire a scheduled job once now, leaving its timing alone."""
        self.engine.fire_now(args.key)

    def _job(self, name: str) -> tuple[str, str | None]:
        """(job id, queue name if known) of a job id or of a variable holding a Job."""
        value = self.engine.shell.user_ns.get(name) if name.isidentifier() else None
        return (value.job_id, value.queue_name) if isinstance(value, Job) else (validate_key(name, "job id"), None)

    def _idle_hint(self, queue_name: str | None, url: str) -> str:
        """' — no worker serves queue …' when nothing would run the job, else ''."""
        workers = run_sync(list_workers(url), STATUS_TIMEOUT_S)
        if queue_name is not None and not any(queue_name in (w.get("queues") or ()) for w in workers):
            return f" — {idle_queue_hint(queue_name)}"
        return "" if workers else " — no worker is running: start one with `%naq worker start -q QUEUE`"

    def logs(self, args: argparse.Namespace) -> None:
        """Write the job's output into the cell (stdout and stderr); with --follow, until the job ends."""
        job_id, _ = self._job(args.job)
        url = self.engine.url()
        relay = OutputRelay()
        try:
            if args.follow:
                with self.engine.waiting(f"job {job_id}", f"%naq logs {job_id} --follow"):
                    run_redrawing(relay_output(job_id, relay.put, url), relay.drain)
            else:
                for chunk in run_sync(read_output(job_id, url), STATUS_TIMEOUT_S):
                    relay.put(chunk)
        finally:
            relay.drain()

    def result(self, args: argparse.Namespace) -> Any:
        """The job's value once it ended (a failure re-raises); its state while it has not."""
        job_id, queue_name = self._job(args.job)
        url = self.engine.url()
        if args.wait is not None:
            with self.engine.waiting(f"job {job_id}", f"%naq result {job_id} --wait"):
                return run_sync(fetch_result(job_id, wait_seconds(args.wait), url))
            return None
        status = run_sync(fetch_status(job_id, url))
        if status is None:
            self.engine.say(f"job {job_id} has no status yet: waiting in its queue, or unknown"
                            + self._idle_hint(queue_name, url))
            return None
        if status.ended:
            return run_sync(fetch_result(job_id, STATUS_TIMEOUT_S, url))
        since = f" for {every(status.duration_s)}" if status.duration_s is not None else ""
        self.engine.say(f"job {job_id} is {status.status}{since}")
        return None

    def wait(self, args: argparse.Namespace) -> list[Any] | None:
        """Wait for the Jobs held in the variable (one live bar); the value is their results in order."""
        value = self.engine.shell.user_ns.get(args.var)
        jobs = [value] if isinstance(value, Job) else list(value) if isinstance(value, list | tuple) else []
        if not jobs or not all(isinstance(job, Job) for job in jobs):
            raise ConfigurationError(f"{args.var!r} must hold a Job or a list of Jobs, got {type(value).__name__}")
        with self.engine.waiting(f"the jobs in {args.var}", f"%naq wait {args.var}"):
            wait_with_bar(jobs, raise_on_failure=True)
            return [job.result_sync() for job in jobs]
        return None

    def jobs(self, args: argparse.Namespace) -> Any:
        """The scheduled-jobs panel."""
        from naq_ipy.ipython.panels import ScheduledJobsPanel

        return ScheduledJobsPanel(queue=None, url=self.engine.url())

    def monitor(self, args: argparse.Namespace) -> Any:
        """The queue monitor panel."""
        from naq_ipy.ipython.panels import QueueMonitor

        return QueueMonitor(url=self.engine.url())
