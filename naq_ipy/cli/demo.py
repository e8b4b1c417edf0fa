"""`naq demo`: an end-to-end run on a throwaway embedded server — enqueue, schedule, work, results."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC

from naq_ipy.client.queue import Queue
from naq_ipy.views.schedules import schedules_table
from naq_ipy.wire.connection import get_connection
from naq_ipy.wire.names import JOB_STREAM_NAME
from naq_ipy.wire.server import NatsServer


def build_report(month: str) -> str:
    """A stand-in for real work: a short report for `month`."""
    return f"report for {month}: {sum(range(1000))} rows"


async def tick(label: str) -> str:
    """A scheduled job: says when it ran."""
    return f"{label} at {time.strftime('%H:%M:%S')}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`naq demo [--keep-data]`."""
    parser.add_argument("--seconds", type=float, default=4.0, help="how long to let the schedule fire")


def run(args: argparse.Namespace) -> int:
    """Start a server in a temp dir, a worker and a scheduler in-process, and show jobs running."""
    with tempfile.TemporaryDirectory(prefix="naq-demo-") as tmp, NatsServer(store_dir=tmp) as server:
        print(f"embedded nats-server at {server.url} (data in {tmp})")
        asyncio.run(_demo(server.url, args.seconds))
    print("demo done: server stopped, data removed")
    return 0


async def _demo(url: str, seconds: float) -> None:
    from naq_ipy.schedules.scheduler import Scheduler
    from naq_ipy.worker.consumer import Worker

    queue = Queue("default", url)
    jobs = [await queue.enqueue(build_report, f"2026-{m:02d}") for m in (9, 10, 11)]
    await queue.schedule(tick, "tick", interval=1, repeat=3, name="tick")
    await queue.schedule(build_report, "nightly", cron="0 6 * * *", tz="Europe/Berlin", name="nightly")
    info = await (await get_connection(url)).js.stream_info(JOB_STREAM_NAME)
    print(f"\nstream {JOB_STREAM_NAME}: {info.state.messages} job(s) waiting")
    print(f"\nKV naq_scheduled_jobs:\n{schedules_table(await queue.list_scheduled_jobs(), UTC)!r}")
    worker, scheduler = Worker(["default"], url=url, concurrency=4), Scheduler(url)
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(scheduler.run())]
    print("\nworker and scheduler started; results:")
    for job in jobs:
        print(f"  {job.job_id[:8]} {job.func_name}: {await job.result(timeout=10)!r}")
    await _show_runs(url, "tick", runs=3, timeout_s=seconds + 3)
    await scheduler.stop()
    await worker.stop()
    await asyncio.gather(*tasks)
    remaining = schedules_table(await queue.list_scheduled_jobs(), UTC)
    print(f"\nscheduled jobs now (tick ran out of repeats):\n{remaining!r}")


async def _show_runs(url: str, key: str, runs: int, timeout_s: float) -> None:
    """Print each run of schedule `key` as it finishes (a KV watch on `naq_job_status`)."""
    from naq_ipy.status.results import JobStatus, fetch_result
    from naq_ipy.wire.names import JOB_STATUS_KV_NAME

    kv = await (await get_connection(url)).kv(JOB_STATUS_KV_NAME)
    watcher = await kv.watch(f"{key}.>")
    seen: set[str] = set()
    try:
        async with asyncio.timeout(timeout_s):
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue
                status = JobStatus.from_bytes(entry.value)
                if status.ended and status.job_id not in seen:
                    seen.add(status.job_id)
                    print(f"  schedule {key} run {status.job_id}: {await fetch_result(status.job_id, 5, url)!r}")
                    if len(seen) == runs:
                        return
    except TimeoutError:
        print(f"  only {len(seen)} of {runs} runs of {key} finished in {timeout_s:.0f} s")
    finally:
        await watcher.stop()
