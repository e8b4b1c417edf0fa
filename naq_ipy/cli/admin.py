"""The `naq` admin subcommands: list, control and inspect jobs from a terminal."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from naq_ipy.client.bridge import run_sync
from naq_ipy.client.queue import Queue
from naq_ipy.errors import ConfigurationError
from naq_ipy.rules.times import from_timestamp, parse_duration, parse_iso_time
from naq_ipy.schedules.record import ScheduleState
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.views.schedules import schedules_table
from naq_ipy.views.tables import format_table


def add_url_argument(parser: argparse.ArgumentParser) -> None:
    """`--url` (default: env NAQ_URL, then nats://127.0.0.1:4222)."""
    parser.add_argument("--url", default=None, help="NATS URL (default: $NAQ_URL or nats://127.0.0.1:4222)")


def add_list_scheduled_arguments(parser: argparse.ArgumentParser) -> None:
    add_url_argument(parser)
    parser.add_argument("--status", choices=[state.value for state in ScheduleState], help="only entries in this state")
    parser.add_argument("--queue", help="only entries of this queue")


def list_scheduled(args: argparse.Namespace) -> int:
    """`naq list-scheduled`."""
    records = run_sync(ScheduledJobManager(args.url).list(status=args.status, queue=args.queue))
    print(repr(schedules_table(records, UTC)) if records else "no scheduled jobs")
    return 0


def add_job_control_arguments(parser: argparse.ArgumentParser) -> None:
    add_url_argument(parser)
    parser.add_argument("job_id", metavar="ID", help="scheduled job id or name")
    parser.add_argument("action", choices=("cancel", "pause", "resume", "reschedule"))
    parser.add_argument("--cron", help="new cron expression (reschedule)")
    parser.add_argument("--tz", help="time zone of the cron expression (reschedule)")
    parser.add_argument("--interval", help="new interval, e.g. 30s, 5m (reschedule)")
    parser.add_argument("--repeat", type=int, help="runs left (reschedule)")
    parser.add_argument("--next-run", help="next run, ISO 8601 (naive = UTC) (reschedule)")


def job_control(args: argparse.Namespace) -> int:
    """`naq job-control ID cancel|pause|resume|reschedule`."""
    queue = Queue(nats_url=args.url)
    if args.action == "reschedule":
        updates = {k: v for k, v in (("cron", args.cron), ("tz", args.tz), ("interval", args.interval),
                                     ("repeat", args.repeat), ("next_run", _optional_time(args.next_run)))
                   if v is not None}
        if not updates:
            raise ConfigurationError("reschedule needs --cron, --interval, --repeat or --next-run")
        run_sync(queue.modify_scheduled_job(args.job_id, **updates))
    else:
        action = getattr(queue, f"{args.action}_scheduled_job")
        run_sync(action(args.job_id))
    print(f"{args.action}: {args.job_id}")
    return 0


def _optional_time(text: str | None) -> datetime | None:
    return None if text is None else parse_iso_time(text)


def add_cancel_arguments(parser: argparse.ArgumentParser) -> None:
    add_url_argument(parser)
    parser.add_argument("job_ids", metavar="ID", nargs="+", help="ids of the jobs to cancel")


def cancel(args: argparse.Namespace) -> int:
    """`naq cancel ID...`: one line per job; exit 0 all cancelled (or requested), 1 some had already ended,
    2 some unknown."""
    from naq_ipy.status.cancel import Outcome
    from naq_ipy.status.cancel import cancel as cancel_jobs

    report = run_sync(cancel_jobs(args.job_ids, args.url))
    for job_id, outcome in report.outcomes.items():
        print(f"{job_id}: {outcome}")
    if report.ids(Outcome.NOT_FOUND):
        return 2
    return 1 if report.ids(Outcome.ALREADY_FINISHED) else 0


def list_workers(args: argparse.Namespace) -> int:
    """`naq list-workers`."""
    from naq_ipy.status.workers import list_workers as fetch

    workers = run_sync(fetch(args.url))
    rows = [[w.get("worker_id"), w.get("host"), w.get("pid"), ",".join(w.get("queues", [])),
             len(w.get("current_jobs", [])), w.get("processed"), w.get("failed")] for w in workers]
    headers = ("worker", "host", "pid", "queues", "running", "processed", "failed")
    print(format_table(headers, rows) if rows else "no live workers")
    return 0


def add_result_arguments(parser: argparse.ArgumentParser) -> None:
    add_url_argument(parser)
    parser.add_argument("job_id", metavar="ID", help="job id")
    parser.add_argument("--wait", nargs="?", const="0", default=None, metavar="SECONDS",
                        help="wait until the job ends (optionally at most SECONDS)")


def result(args: argparse.Namespace) -> int:
    """`naq result ID [--wait [S]]`: prints the status, and the value once finished (exit 1 if it failed)."""
    from naq_ipy.status.results import FINISHED, fetch_result, fetch_status

    if args.wait is not None:
        timeout = parse_duration(args.wait) or None
        print(repr(run_sync(fetch_result(args.job_id, timeout=timeout, url=args.url))))
        return 0
    status = run_sync(fetch_status(args.job_id, url=args.url))
    if status is None:
        raise ConfigurationError(f"no job {args.job_id!r} is known (never enqueued, or its status expired)")
    print(f"{status.job_id}: {status.status}" + (f" ({status.error})" if status.error else ""))
    if status.status == FINISHED:
        print(repr(run_sync(fetch_result(args.job_id, timeout=5, url=args.url))))
    return 1 if status.status in ("failed", "rejected", "cancelled") else 0


def add_logs_arguments(parser: argparse.ArgumentParser) -> None:
    add_url_argument(parser)
    parser.add_argument("job_id", metavar="ID", help="job id")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")


def logs(args: argparse.Namespace) -> int:
    """`naq logs ID [--follow]`: print a job's captured output, its stdout and stderr to ours."""
    run_sync(_print_output(args.job_id, args.follow, args.url))
    return 0


async def _print_output(job_id: str, follow: bool, url: str | None) -> None:
    from naq_ipy.status.output import STDERR, iter_output

    async for chunk in iter_output(job_id, follow=follow, url=url):
        stream = sys.stderr if chunk.stream == STDERR else sys.stdout
        stream.write(chunk.text)
        stream.flush()


def add_failed_arguments(parser: argparse.ArgumentParser) -> None:
    add_url_argument(parser)
    parser.add_argument("--queue", help="only failed jobs of this queue")
    parser.add_argument("--requeue", metavar="ID", help="put this failed job back on its queue")


def failed(args: argparse.Namespace) -> int:
    """`naq failed [--requeue ID]`."""
    from naq_ipy.worker.failed_store import list_failed, requeue_failed

    if args.requeue:
        run_sync(requeue_failed(args.requeue, url=args.url))
        print(f"requeued {args.requeue}")
        return 0
    jobs = run_sync(list_failed(url=args.url, queue=args.queue))
    rows = [[j.job_id, j.queue_name, j.func_name, f"{from_timestamp(j.failed_at):%Y-%m-%d %H:%M:%S}", j.reason]
            for j in jobs]
    print(format_table(("job", "queue", "function", "failed at (UTC)", "reason"), rows) if rows else "no failed jobs")
    return 0


def add_purge_arguments(parser: argparse.ArgumentParser) -> None:
    add_url_argument(parser)
    parser.add_argument("queue", help="queue name")


def purge(args: argparse.Namespace) -> int:
    """`naq purge QUEUE`."""
    count = run_sync(Queue(args.queue, args.url).purge())
    print(f"purged {count} job(s) from {args.queue}")
    return 0
