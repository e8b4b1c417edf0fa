"""Scheduler fire lag: interval entries fired by a scheduler subprocess, timed from due to job start."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import percentile, say, spawn, wait_for_log
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from peers import noop, wait_for_count

from naq_ipy.client.job import read_header
from naq_ipy.client.queue import Queue
from naq_ipy.status.results import FINISHED, JobStatus
from naq_ipy.wire.connection import Connection
from naq_ipy.wire.names import JOB_STATUS_KV_NAME, queue_subject

LAG_LEAD_S = 2.0  # first scheduled run this long after the entries are written
LAG_TARGET_MS = 100.0


@dataclass
class LagRun:
    """Fire lag samples (ms) per run id."""

    expected: int
    start_ms: dict[str, float] = field(default_factory=dict)
    publish_ms: dict[str, float] = field(default_factory=dict)


def due_of(run_id: str) -> float:
    """The due time (UTC seconds) encoded in a scheduled run id `<key>.<due ms>`."""
    return int(run_id.rsplit(".", 1)[1]) / 1000


async def follow_runs(conn: Connection, lag: LagRun) -> None:
    """Record start lag of every finished scheduled run (keys with two tokens) until cancelled."""
    kv = await conn.kv(JOB_STATUS_KV_NAME)
    watcher = await kv.watch("*.*", ignore_deletes=True)
    try:
        async for entry in watcher:
            if entry is None or not entry.value or entry.operation is not None:
                continue
            status = JobStatus.from_bytes(entry.value)
            if status.status == FINISHED and status.started_at is not None:
                lag.start_ms[entry.key] = 1000 * (status.started_at - due_of(entry.key))
    finally:
        await watcher.stop()


async def observe_publishes(conn: Connection, lag: LagRun, queue: str) -> Subscription:
    """A core subscription on the queue subject: arrival time - due = publish lag (plus one hop)."""

    async def seen(msg: Msg) -> None:
        arrived = time.time()
        job_id = read_header(msg.data)[0].get("job_id", "")
        if "." in job_id:
            lag.publish_ms.setdefault(job_id, 1000 * (arrived - due_of(job_id)))

    return await conn.nc.subscribe(queue_subject(queue), cb=seen)


async def schedule_entries(url: str, queue_name: str, count: int, repeat: int) -> None:
    """`count` interval entries (1 s, `repeat` runs), first runs staggered over one second."""
    queue = Queue(queue_name, url)
    base = time.time() + LAG_LEAD_S
    for i in range(count):
        await queue.schedule(noop, interval=1, repeat=repeat, name=f"lag{i:04d}", start_at=base + i / count)


async def run_lag(conn: Connection, url: str, queue: str, count: int, repeat: int, workdir: Path) -> LagRun:
    """One Scheduler subprocess + the running worker; time every run from due to start."""
    lag = LagRun(expected=count * repeat)
    scheduler = spawn("naq_ipy.cli", ["scheduler", "--url", url], workdir / "scheduler.log")
    try:
        await wait_for_log(scheduler, "clock offset")
        follower = asyncio.create_task(follow_runs(conn, lag))
        sub = await observe_publishes(conn, lag, queue)
        await schedule_entries(url, queue, count, repeat)
        await asyncio.sleep(LAG_LEAD_S + repeat)
        await wait_for_count(lambda: len(lag.start_ms), lag.expected, stall_s=5.0)
        await sub.unsubscribe()
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    finally:
        code = scheduler.stop()
        say(f"scheduler exited with code {code}")
    return lag


def lag_lines(lag: LagRun) -> list[str]:
    """The fire-lag lines of the report."""
    start, pub = list(lag.start_ms.values()), list(lag.publish_ms.values())
    verdict = "OK" if percentile(start, 99) < LAG_TARGET_MS else "ABOVE TARGET"
    return [
        f"Scheduler fire lag ({lag.expected} runs expected: entries x repeat, interval 1 s; "
        f"{len(start)} finished): job start - due p50 {percentile(start, 50):.1f} ms, "
        f"p99 {percentile(start, 99):.1f} ms, max {max(start, default=float('nan')):.1f} ms "
        f"(target p99 < {LAG_TARGET_MS:g} ms: {verdict})",
        f"Publish lag (message seen by a core subscriber - due, {len(pub)} runs): "
        f"p50 {percentile(pub, 50):.1f} ms, p99 {percentile(pub, 99):.1f} ms, "
        f"max {max(pub, default=float('nan')):.1f} ms",
    ]
