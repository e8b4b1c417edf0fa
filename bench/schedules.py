"""Schedule soak: 1,000 interval schedules (every 1 s) for 5 minutes with 2 scheduler processes.

Run by hand from the repository root (takes the soak time plus about a minute):

    .venv/bin/python bench/schedules.py [--schedules 1000] [--minutes 5] [--schedulers 2]

Each schedule fires `minutes * 60` runs onto a queue no worker reads, first runs spread over one
second (offsets i/1024 s: exact in binary, so due times add up exactly). Afterwards every queued
run is read back: fire lag = the message's server timestamp - its due time (both on the server's
clock), duplicates = runs queued twice, missed = grid points never queued. The report goes to
stdout and to `bench/results/schedules.txt`; the exit code is 1 on any duplicate or missed fire.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import nats.errors
from common import BENCH_DIR, cpu_s, load_average, percentile, rss_mib, run_and_report, say, start_processes, stop_all
from nats.js import api
from peers import noop
from soak import machine_line

from naq_ipy.client.job import read_header
from naq_ipy.client.queue import Queue
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.wire.connection import Connection, close_all, get_connection
from naq_ipy.wire.names import JOB_STREAM_NAME, queue_subject
from naq_ipy.wire.server import NatsServer

RESULTS_FILE = BENCH_DIR / "results" / "schedules.txt"
QUEUE = "soak-sched"
LEAD_S = 15.0  # first runs this long after the bench starts storing entries
SPREAD = 1024


@dataclass(frozen=True)
class Fire:
    """One queued run read back from the stream."""

    key: str
    job_id: str
    due: float
    stored_at: float


def start_schedulers(url: str, count: int, workdir: Path) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    """`count` scheduler processes, each synced to the server's clock."""
    commands = [["naq_ipy.cli", "scheduler", "--url", url, "--id", f"soak{i}"] for i in range(count)]
    return start_processes(commands, "clock offset", workdir, "scheduler")


async def store_entries(url: str, count: int, repeat: int, start: float) -> list[float]:
    """Store `count` schedules every 1 s for `repeat` runs; their first due times."""
    queue = Queue(QUEUE, url)
    firsts = [start + i / SPREAD for i in range(count)]
    for i, first in enumerate(firsts):
        await queue.schedule(noop, interval=1.0, repeat=repeat, name=f"s{i:04d}", start_at=first)
    if time.time() > start:
        say(f"warning: storing took past the first due time by {time.time() - start:.1f}s")
    return firsts


async def wait_all_done(url: str, deadline: float) -> bool:
    """Wait until the schedule store is empty (every entry used up its repeat); False at the deadline."""
    manager = ScheduledJobManager(url)
    while time.time() < deadline:
        await asyncio.sleep(2.0)
        if not await manager.list():
            return True
    return False


async def read_fires(conn: Connection) -> list[Fire]:
    """Every run queued on QUEUE, read (and acked: removed) through one pull consumer."""
    sub = await conn.js.pull_subscribe(queue_subject(QUEUE), durable="soak-reader", stream=JOB_STREAM_NAME,
                                       config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL))
    fires = []
    try:
        while True:
            try:
                batch = await sub.fetch(1000, timeout=5)
            except nats.errors.TimeoutError:
                break
            for msg in batch:
                header, _ = read_header(msg.data)
                fires.append(Fire(header["schedule_key"], header["job_id"], header["enqueue_time"],
                                  msg.metadata.timestamp.timestamp()))
                await msg.ack()
            if batch[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return fires


def tally(fires: list[Fire], firsts: list[float], repeat: int) -> dict[str, int]:
    """Queued, unique, duplicate, missed and off-grid fires against each schedule's grid."""
    seen: dict[str, Counter[float]] = defaultdict(Counter)
    for fire in fires:
        seen[fire.key][fire.due] += 1
    missed = off_grid = 0
    for i, first in enumerate(firsts):
        grid = {first + k for k in range(repeat)}
        dues = seen.get(f"s{i:04d}", Counter())
        missed += len(grid - set(dues))
        off_grid += len(set(dues) - grid)
    unique = len({fire.job_id for fire in fires})
    return {"queued": len(fires), "unique": unique, "duplicates": len(fires) - unique, "missed": missed,
            "off_grid": off_grid, "expected": len(firsts) * repeat}


def report(args: argparse.Namespace, head: str, counts: dict[str, int], fires: list[Fire],
           logs: list[Path], usage: list[str], finished: bool) -> str:
    """The report text."""
    lags = sorted((fire.stored_at - fire.due) * 1000 for fire in fires)
    per_scheduler = [log.read_text().count(" fired ") for log in logs]
    warnings = [log.read_text().count(" WARNING ") for log in logs]
    lines = [
        f"# naq_ipy schedule soak - {head}",
        f"# {args.schedules:,} interval schedules every 1 s for {args.minutes:g} min ({counts['expected']:,} fires "
        f"expected), {args.schedulers} scheduler processes, first runs spread over 1 s, no worker",
        "",
        f"fire lag (server timestamp of the queued run - due): p50 {statistics.median(lags):.1f} ms, "
        f"p99 {percentile(lags, 99):.1f} ms, max {lags[-1]:.1f} ms, min {lags[0]:.1f} ms",
        f"queued {counts['queued']:,}; unique runs {counts['unique']:,}; duplicate fires {counts['duplicates']}; "
        f"missed fires {counts['missed']}; off-grid fires {counts['off_grid']}",
        f"all entries used up their repeat in time: {finished}",
        f"fires logged per scheduler: {per_scheduler} (a fire another scheduler had published already is "
        "deduplicated by JetStream and not logged as fired); warnings logged: " f"{warnings}",
        *usage,
        f"# load average at the end {load_average()}",
    ]
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace, workdir: Path) -> tuple[str, bool]:
    """Serve, schedule, soak, read back; (report, all fires exactly once)."""
    repeat = int(args.minutes * 60)
    with NatsServer(store_dir=workdir / "nats") as server:
        head = machine_line()
        conn = await get_connection(server.url)
        await conn.ensure_stream()
        procs, logs = start_schedulers(server.url, args.schedulers, workdir)
        usage: list[str] = []
        try:
            usage_start = [f"scheduler RSS at start: {', '.join(f'{rss_mib(p.pid):.1f}' for p in procs)} MiB"]
            start = math.ceil(time.time() + LEAD_S)
            firsts = await store_entries(server.url, args.schedules, repeat, start)
            say(f"{args.schedules} schedules stored; firing from {start} for {repeat} s")
            finished = await wait_all_done(server.url, start + repeat + 60)
            usage += [*usage_start,
                      f"scheduler RSS at end: {', '.join(f'{rss_mib(p.pid):.1f}' for p in procs)} MiB",
                      f"scheduler CPU: {', '.join(f'{cpu_s(p.pid):.1f}' for p in procs)} s; "
                      f"nats-server CPU: {cpu_s(server.pid or 0):.1f} s"]
        finally:
            usage.append(f"scheduler exit codes after SIGTERM: {stop_all(procs)}")
        say("reading the queued runs back")
        fires = await read_fires(conn)
        await close_all()
    counts = tally(fires, firsts, repeat)
    ok = finished and counts["duplicates"] == counts["missed"] == counts["off_grid"] == 0
    return report(args, head, counts, fires, logs, usage, finished), ok


def main(argv: list[str] | None = None) -> int:
    """Run the schedule soak; exit 1 on any duplicate or missed fire."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1000, help="interval schedules (default 1,000)")
    parser.add_argument("--minutes", type=float, default=5.0, help="soak time (default 5)")
    parser.add_argument("--schedulers", type=int, default=2, help="scheduler processes (default 2)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help=f"report file (default {RESULTS_FILE})")
    args = parser.parse_args(argv)
    return run_and_report(lambda workdir: run(args, workdir), args.output, "naq-schedules-")


if __name__ == "__main__":
    sys.exit(main())
