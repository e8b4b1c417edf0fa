"""Soak bench: 100,000 no-op jobs through 2 worker processes — jobs/s, worker RSS over the run, nothing lost.

Run by hand from the repository root (takes a few minutes on 2 cores):

    .venv/bin/python bench/soak.py [--jobs 100000] [--workers 2] [--concurrency 10]

The workers start idle (their RSS is sampled), then the jobs are enqueued in pipelined chunks
while the workers run them; RSS is sampled at every 10% of the jobs done and at the end. Every
job id must end `finished` in `naq_job_status`. The report goes to stdout and to
`bench/results/soak.txt`; the exit code is 1 when a job was lost or did not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    BENCH_DIR,
    cpu_s,
    load_average,
    mem_total_gib,
    rss_mib,
    run_and_report,
    say,
    start_processes,
    stop_all,
)
from peers import noop

from naq_ipy.client.queue import Queue
from naq_ipy.status.results import JobStatus
from naq_ipy.wire.connection import Connection, close_all, get_connection
from naq_ipy.wire.names import JOB_STATUS_KV_NAME, JOB_STREAM_NAME
from naq_ipy.wire.server import NatsServer, find_server_binary

RESULTS_FILE = BENCH_DIR / "results" / "soak.txt"
QUEUE = "soak"
CHUNK = 5000
POLL_S = 0.25


def machine_line() -> str:
    """Date, cores, RAM, Python and nats-server versions, load average."""
    server = subprocess.run([find_server_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC - nproc {os.cpu_count()}, RAM {mem_total_gib():.1f} GiB,"
            f" Python {platform.python_version()}, {server}; load average {load_average()}")


@dataclass
class Workers:
    """The worker processes and what was sampled of them."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    rss: list[tuple[int, list[float]]] = field(default_factory=list)  # (jobs done, MiB per worker)

    def sample(self, done: int) -> None:
        """Record every worker's RSS at `done` jobs."""
        self.rss.append((done, [rss_mib(p.pid) for p in self.procs]))

    def stop(self) -> list[int | str]:
        """SIGTERM all, wait; their exit codes."""
        return stop_all(self.procs, timeout_s=60)


def start_workers(url: str, count: int, concurrency: int, workdir: Path) -> Workers:
    """`count` worker processes on QUEUE, ready (their start line logged)."""
    command = ["naq_ipy.cli", "worker", QUEUE, "-c", str(concurrency), "--url", url]
    return Workers(*start_processes([command] * count, "started on", workdir, "worker"))


async def enqueue_all(queue: Queue, n: int, ids: list[str]) -> float:
    """Enqueue `n` no-op jobs in pipelined chunks, adding their ids to `ids` chunk by chunk; seconds taken."""
    started = time.perf_counter()
    for first in range(0, n, CHUNK):
        jobs = await queue.enqueue_many([(noop, ())] * min(CHUNK, n - first))
        ids += [job.job_id for job in jobs]
    return time.perf_counter() - started


async def left_in_stream(conn: Connection) -> int:
    """Messages still in the job stream (acked ones are removed: work-queue retention)."""
    return (await conn.js.stream_info(JOB_STREAM_NAME)).state.messages


async def follow(conn: Connection, workers: Workers, n: int, ids: list[str], enqueue: asyncio.Task[float]) -> None:
    """Sample RSS at every 10% of jobs done until the stream is empty after the last enqueue."""
    next_mark = n // 10
    while True:
        await asyncio.sleep(POLL_S)
        enqueued = len(ids)
        done = enqueued - await left_in_stream(conn)
        while next_mark and done >= next_mark:
            workers.sample(next_mark)
            say(f"  {next_mark:,} jobs done, worker RSS {mib(workers.rss[-1][1])} MiB")
            next_mark = next_mark + n // 10 if next_mark < n else 0
        if enqueue.done() and done == n:
            return


async def read_statuses(conn: Connection) -> dict[str, JobStatus]:
    """Every status record, by job id (one KV watch)."""
    kv = await conn.kv(JOB_STATUS_KV_NAME)
    statuses: dict[str, JobStatus] = {}
    watcher = await kv.watchall(ignore_deletes=True)
    try:
        while True:
            entry = await watcher.updates(timeout=10)
            if entry is None:
                continue
            if entry.value:
                statuses[entry.key] = JobStatus.from_bytes(entry.value)
            if not entry.delta:
                return statuses
    finally:
        await watcher.stop()


@dataclass
class Outcome:
    """Timings and counts of one soak run."""

    n: int
    enqueue_s: float
    total_s: float
    statuses: dict[str, JobStatus]
    ids: list[str]

    def lost(self) -> int:
        """Enqueued ids with no finished status."""
        return sum(1 for job_id in self.ids if getattr(self.statuses.get(job_id), "status", None) != "finished")

    def processing_s(self) -> float:
        """First start to last finish, from the status records."""
        starts = [s.started_at for s in self.statuses.values() if s.started_at]
        ends = [s.finished_at for s in self.statuses.values() if s.finished_at]
        return max(ends) - min(starts)


def mib(values: list[float]) -> str:
    """Per-worker MiB values, comma-separated."""
    return ", ".join(f"{v:.1f}" for v in values)


def rss_lines(workers: Workers, n: int) -> list[str]:
    """RSS at each sample, and its growth per job from the first 10% on and from the idle start."""
    idle, last = workers.rss[0][1], workers.rss[-1][1]
    warm = next(values for done, values in workers.rss if done > 0)
    per_job = ", ".join(f"{(b - a) * 1024 / (n * 0.9):+.4f}" for a, b in zip(warm, last, strict=True))
    return [
        "worker RSS MiB (per worker) at " + "; ".join(f"{done:,} jobs: {mib(v)}" for done, v in workers.rss),
        f"RSS growth from 10% done to the end: {per_job} KiB/job; from the idle start: "
        + ", ".join(f"{b - a:+.1f}" for a, b in zip(idle, last, strict=True)) + " MiB",
    ]


def report(outcome: Outcome, workers: Workers, cpu: list[float], codes: list[int | str], concurrency: int,
           head: str) -> str:
    """The report text."""
    n, statuses = outcome.n, outcome.statuses
    redelivered = sum(1 for s in statuses.values() if s.attempts > 1)
    warnings = sum(log.read_text().count(" WARNING ") + log.read_text().count(" ERROR ") for log in workers.logs)
    lines = [
        f"# naq_ipy soak bench - {head}",
        f"# {n:,} no-op jobs (async `peers.noop`), {len(workers.procs)} worker processes x concurrency "
        f"{concurrency}, one nats-server, all on loopback",
        "",
        f"enqueue (enqueue_many, chunks of {CHUNK:,}): {n / outcome.enqueue_s:,.0f} jobs/s ({outcome.enqueue_s:.1f} s)",
        f"end to end (first enqueue -> stream empty): {n / outcome.total_s:,.0f} jobs/s ({outcome.total_s:.1f} s)",
        f"processing (first start -> last finish, status records): {n / outcome.processing_s():,.0f} jobs/s",
        f"status records: {dict(Counter(s.status for s in statuses.values()))}; lost (no finished status): "
        f"{outcome.lost()}; redelivered (attempts > 1): {redelivered}",
        f"worker CPU: {', '.join(f'{c:.1f}' for c in cpu)} s ({sum(cpu) / n * 1000:.3f} ms/job)",
        *rss_lines(workers, n),
        f"worker exit codes: {codes}; warnings/errors logged: {warnings}",
        f"# load average at the end {load_average()}",
    ]
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace, workdir: Path) -> tuple[str, bool]:
    """Start a server and the workers, run the jobs, check them; the report."""
    with NatsServer(store_dir=workdir / "nats") as server:
        head = machine_line()
        conn = await get_connection(server.url)
        await conn.ensure_stream()
        workers = start_workers(server.url, args.workers, args.concurrency, workdir)
        try:
            workers.sample(0)
            say(f"workers idle: RSS {mib(workers.rss[0][1])} MiB; enqueuing {args.jobs:,}")
            started = time.perf_counter()
            ids: list[str] = []
            enqueue = asyncio.create_task(enqueue_all(Queue(QUEUE, server.url), args.jobs, ids))
            await follow(conn, workers, args.jobs, ids, enqueue)
            total_s = time.perf_counter() - started
            enqueue_s = enqueue.result()
            cpu = [cpu_s(p.pid) for p in workers.procs]
        finally:
            codes = workers.stop()
        say("reading status records")
        outcome = Outcome(args.jobs, enqueue_s, total_s, await read_statuses(conn), ids)
        await close_all()
    return report(outcome, workers, cpu, codes, args.concurrency, head), outcome.lost() == 0


def main(argv: list[str] | None = None) -> int:
    """Run the soak bench; exit 1 if a job was lost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs in total (default 100,000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=10, help="slots per worker (default 10)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help=f"report file (default {RESULTS_FILE})")
    args = parser.parse_args(argv)
    return run_and_report(lambda workdir: run(args, workdir), args.output, "naq-soak-")


if __name__ == "__main__":
    sys.exit(main())
