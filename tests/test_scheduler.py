"""The scheduler against a real nats-server: fires, exactly-once across processes, pause, modify, clock, restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest

from naq_ipy.client.job import Job, read_header
from naq_ipy.client.queue import Queue
from naq_ipy.errors import JobNotFoundError
from naq_ipy.schedules.record import ScheduledJob, new_record
from naq_ipy.schedules.scheduler import Scheduler, run_now, run_now_sync
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.wire.connection import get_connection
from naq_ipy.wire.names import JOB_STREAM_NAME, SCHEDULED_JOBS_KV_NAME
from naq_ipy.wire.server import NatsServer

QUEUE = "sched"
logger = logging.getLogger(__name__)


def work(x: int = 0) -> int:
    """The scheduled function (no worker runs here: only the queued messages are read)."""
    return x


@dataclass(frozen=True)
class Run:
    """One queued message of a fire, read back from the jobs stream."""

    job_id: str
    msg_id: str
    stored_at: float
    due: float
    schedule_key: str | None


async def queued_runs(url: str, *, skip_key: str | None = None) -> list[Run]:
    """Every message queued on `naq.queue.sched`, oldest first, read without consuming it (but `skip_key`'s)."""
    conn = await get_connection(url)
    try:
        info = await conn.js.stream_info(JOB_STREAM_NAME)
    except nats.js.errors.NotFoundError:
        return []
    runs = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
        msg = await conn.js.get_msg(JOB_STREAM_NAME, seq=seq)
        header, _ = read_header(msg.data or b"")
        assert msg.time is not None
        runs.append(Run(header["job_id"], (msg.headers or {}).get("Nats-Msg-Id", ""), msg.time.timestamp(),
                        header["enqueue_time"], header["schedule_key"]))
    return [run for run in runs if skip_key is None or run.schedule_key != skip_key]


def quarter_after(delay_s: float) -> float:
    """A time about `delay_s` from now on a 0.25 s grid: exact in binary, so run ids are predictable."""
    return math.ceil((time.time() + delay_s) * 4) / 4


async def store(url: str, key: str, next_run_utc: float, schedule_type: str = "interval",
                **options: Any) -> ScheduledJob:
    """Store a scheduled entry of `work` on QUEUE."""
    job = Job(work, queue_name=QUEUE)
    record = new_record(job, key=key, schedule_type=schedule_type, next_run_utc=next_run_utc, **options)
    stored, _ = await ScheduledJobManager(url).store(record)
    return stored


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll `check` until it is true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def entry_gone(url: str, key: str) -> bool:
    try:
        await ScheduledJobManager(url).get(key)
    except JobNotFoundError:
        return True
    return False


CAUGHT_UP = "zz-caught-up"


async def caught_up(url: str, timeout_s: float = 10.0) -> None:
    """Wait until the running scheduler(s) fired a one-off entry due now, so they are past all that was due.

    Negative checks wait for this rather than a fixed sleep: a fire that should not happen would
    have happened by then (the timer fires every due entry of one pass together and advances them
    before the next pass). `queued_runs(url, skip_key=CAUGHT_UP)` leaves its run out.
    """
    await store(url, CAUGHT_UP, time.time(), interval_s=3600.0, repeat=1)

    async def fired() -> bool:
        return any(run.schedule_key == CAUGHT_UP for run in await queued_runs(url))

    await wait_until(fired, timeout_s, "the scheduler to fire an entry due now")


@contextlib.asynccontextmanager
async def running(url: str, **options: Any) -> AsyncIterator[Scheduler]:
    """An in-process scheduler, ready (clock synced, entries loaded) inside the block, stopped after."""
    scheduler = Scheduler(url, **options)
    task = asyncio.create_task(scheduler.run())
    try:
        await scheduler.wait_ready(10)
        yield scheduler
    finally:
        await scheduler.stop()
        await task


def interval_runs(start: float, step: float, count: int) -> list[float]:
    """Due times on an interval grid, stepped the way the scheduler steps them."""
    dues = [start]
    while len(dues) < count:
        dues.append(dues[-1] + step)
    return dues


@pytest.mark.slow
async def test_interval_fires_repeat_times_on_time_then_the_entry_is_gone(nats_url: str) -> None:
    async with running(nats_url):
        start = quarter_after(1.0)
        await store(nats_url, "tick", start, interval_s=1.0, repeat=3)
        await wait_until(lambda: entry_gone(nats_url, "tick"), 8, "the entry to finish")
        await caught_up(nats_url)
    runs = await queued_runs(nats_url, skip_key=CAUGHT_UP)
    dues = interval_runs(start, 1.0, 3)
    assert [r.job_id for r in runs] == [f"tick.{int(d * 1000)}" for d in dues]
    assert [r.msg_id for r in runs] == [f"tick:{int(d * 1000)}" for d in dues]
    assert [r.due for r in runs] == dues and {r.schedule_key for r in runs} == {"tick"}
    lags_ms = [(r.stored_at - r.due) * 1000 for r in runs]
    print(f"fire lag due -> server timestamp: p50 {statistics.median(lags_ms):.1f}ms max {max(lags_ms):.1f}ms")
    assert min(lags_ms) > -10, "fired before its due time"
    assert max(lags_ms) < 500


@pytest.mark.slow
async def test_three_scheduler_processes_enqueue_every_fire_exactly_once(nats_url: str, tmp_path: Path) -> None:
    logs = [tmp_path / f"scheduler{i}.log" for i in range(3)]
    processes = []
    for i, log in enumerate(logs):
        with log.open("wb") as out:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "naq_ipy.cli", "scheduler", "--url", nats_url, "--id", f"proc{i}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out))
    try:
        async def all_synced() -> bool:
            return all("clock offset" in log.read_text() for log in logs)

        await wait_until(all_synced, 20, "three schedulers to sync their clocks")
        start = quarter_after(1.0)
        keys = [f"multi{k}" for k in range(4)]
        for k, key in enumerate(keys):
            await store(nats_url, key, start + k * 0.25, interval_s=1.0, repeat=5)

        async def all_done() -> bool:
            return all([await entry_gone(nats_url, key) for key in keys])

        await wait_until(all_done, 15, "every entry to finish")
        await caught_up(nats_url)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(10) for process in processes]
    runs = await queued_runs(nats_url, skip_key=CAUGHT_UP)
    ids = [r.job_id for r in runs]
    expected = {f"{key}.{int(due * 1000)}" for k, key in enumerate(keys)
                for due in interval_runs(start + k * 0.25, 1.0, 5)}
    assert len(ids) == 20 and set(ids) == expected, f"duplicates: {sorted(i for i in ids if ids.count(i) > 1)}"
    texts = [log.read_text() for log in logs]
    fires = sum(text.count(" fired ") - text.count(f" fired {CAUGHT_UP} ") for text in texts)
    assert fires == 20, "a duplicate publish was logged as a fire"
    assert codes == [0, 0, 0], texts


async def test_paused_entry_never_fires_and_resume_does_not_replay(nats_url: str) -> None:
    async with running(nats_url):
        start = quarter_after(0.25)
        await store(nats_url, "napping", start, interval_s=0.25, paused=True)
        await store(nats_url, "awake", start, interval_s=0.25, repeat=4)  # on the same grid, not paused
        await wait_until(lambda: entry_gone(nats_url, "awake"), 10, "four runs of the entry beside it")
        assert [run.schedule_key for run in await queued_runs(nats_url)] == ["awake"] * 4
        resumed_at = time.time()
        await Queue(QUEUE, nats_url).resume_scheduled_job("napping")

        async def two_runs() -> bool:
            return len([run for run in await queued_runs(nats_url) if run.schedule_key == "napping"]) >= 2

        await wait_until(two_runs, 10, "two runs after the resume")
    runs = [run for run in await queued_runs(nats_url) if run.schedule_key == "napping"]
    assert len(runs) >= 2
    assert min(r.due for r in runs) >= resumed_at - 0.01, "a run missed while paused was replayed"


async def test_modify_from_another_connection_takes_effect(nats_url: str) -> None:
    async with running(nats_url):
        await store(nats_url, "slow", time.time() + 60, interval_s=60.0)
        await caught_up(nats_url)
        assert await queued_runs(nats_url, skip_key=CAUGHT_UP) == []
        await Queue(QUEUE, nats_url).modify_scheduled_job("slow", interval=0.25)

        async def three_runs() -> bool:
            return len(await queued_runs(nats_url, skip_key=CAUGHT_UP)) >= 3

        await wait_until(three_runs, 3, "runs at the new interval")
    dues = [r.due for r in await queued_runs(nats_url, skip_key=CAUGHT_UP)]
    assert all(b - a == pytest.approx(0.25) for a, b in zip(dues, dues[1:], strict=False))


async def test_clock_an_hour_fast_still_fires_on_server_time(nats_url: str) -> None:
    async with running(nats_url, clock=lambda: time.time() + 3600) as scheduler:
        assert scheduler.clock_offset_s == pytest.approx(-3600, abs=0.5)
        due = quarter_after(1.0)
        await store(nats_url, "once-off", due, schedule_type="once")
        await wait_until(lambda: entry_gone(nats_url, "once-off"), 5, "the one-off to fire")
    [run] = await queued_runs(nats_url)
    assert run.due == due and run.schedule_key == "once-off"
    assert -0.01 < run.stored_at - due < 0.5, "fired at the host's clock, not the server's"


async def test_corrupt_entries_are_logged_once_and_good_ones_keep_firing(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    kv = await (await get_connection(nats_url)).kv(SCHEDULED_JOBS_KV_NAME)
    good = await store(nats_url, "good", quarter_after(0.5), interval_s=0.25, repeat=2)
    await kv.put("broken", b"\x00 not json")
    await kv.put("wrongver", b'{"v": 99}')
    await kv.put("badjob", replace(good, key="badjob", job_data=b"junk").to_bytes())
    async with running(nats_url) as scheduler:
        await wait_until(lambda: entry_gone(nats_url, "good"), 5, "the good entry to finish")
        assert scheduler.corrupt_keys == {"broken", "wrongver", "badjob"}
        await kv.put("broken", b"still junk")
        await store(nats_url, "later", quarter_after(0.3), schedule_type="once")
        await wait_until(lambda: entry_gone(nats_url, "later"), 5, "the one-off after the junk")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("'broken'" in w for w in warnings) == 2  # once per revision
    assert sum("'wrongver'" in w for w in warnings) == 1 and sum("'badjob'" in w for w in warnings) == 1
    assert {r.schedule_key for r in await queued_runs(nats_url)} == {"good", "later"}


async def test_missed_runs_follow_each_entrys_misfire_policy(nats_url: str) -> None:
    long_ago = quarter_after(-630)  # its grid's next regular run is half a minute away
    await store(nats_url, "m-once", long_ago, interval_s=60.0, misfire="once")
    await store(nats_url, "m-skip", long_ago, interval_s=60.0, misfire="skip")
    await store(nats_url, "m-all", quarter_after(-270), interval_s=60.0, misfire="all")
    manager = ScheduledJobManager(nats_url)

    async def all_advanced() -> bool:
        return all(r.next_run_utc > time.time() for r in await manager.list())

    async with running(nats_url):
        await wait_until(all_advanced, 5, "every entry to move past now")
        await caught_up(nats_url)
    runs = await queued_runs(nats_url, skip_key=CAUGHT_UP)
    by_key = {key: [r.job_id for r in runs if r.schedule_key == key] for key in ("m-once", "m-skip", "m-all")}
    assert by_key["m-once"] == [f"m-once.{int(long_ago * 1000)}"]
    assert by_key["m-skip"] == []
    assert len(by_key["m-all"]) == 5
    assert {r.key: r.run_count for r in await manager.list()} == {"m-once": 1, "m-skip": 0, "m-all": 5}


async def test_a_late_fire_from_a_stale_view_is_checked_against_the_store(nats_url: str) -> None:
    ghost = await store(nats_url, "ghost", time.time() - 700, interval_s=60.0, paused=True)
    await ScheduledJobManager(nats_url).delete("ghost")
    async with running(nats_url) as scheduler:
        # a view frozen past the duplicate window (a suspended host) still has the entry, active and late
        scheduler._view.apply("ghost", ghost.revision, None, replace(ghost, status="active").to_bytes())
        scheduler._wake.set()
        await caught_up(nats_url)
    assert await queued_runs(nats_url, skip_key=CAUGHT_UP) == []


async def test_run_now_publishes_one_run_and_keeps_the_timing(nats_url: str) -> None:
    stored = await store(nats_url, "hourly", time.time() + 3600, interval_s=3600.0)
    run_id = await run_now("hourly", nats_url)
    assert run_id.startswith("hourly.now-")
    await asyncio.sleep(0.002)
    sync_run_id = await asyncio.to_thread(run_now_sync, "hourly", nats_url)  # the twin, on the sync bridge
    runs = await queued_runs(nats_url)
    assert [(r.job_id, r.msg_id, r.schedule_key) for r in runs] == [
        (run_id, run_id, "hourly"), (sync_run_id, sync_run_id, "hourly")]
    after = await ScheduledJobManager(nats_url).get("hourly")
    assert (after.next_run_utc, after.run_count, after.revision) == (stored.next_run_utc, 0, stored.revision)
    with pytest.raises(JobNotFoundError):
        await run_now("no-such-entry", nats_url)


async def test_starts_before_its_server_and_stops_from_another_thread(
    nats_server_factory: Callable[..., NatsServer],
) -> None:
    server = nats_server_factory(start=False)
    scheduler = Scheduler(server.url)
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.5)
    await asyncio.to_thread(server.start)
    await scheduler.wait_ready(15)
    await store(server.url, "first", quarter_after(0.3), schedule_type="once")
    await wait_until(lambda: entry_gone(server.url, "first"), 5, "a fire after a late server start")
    threading.Thread(target=scheduler.request_stop).start()
    await asyncio.wait_for(task, 5)
    assert scheduler._conn is None


@pytest.mark.slow
async def test_fires_continue_across_a_server_restart(nats_server_factory: Callable[..., NatsServer]) -> None:
    server = nats_server_factory()
    url = server.url
    start = quarter_after(0.5)
    await store(url, "beat", start, interval_s=0.25)

    async def at_least(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return len(await queued_runs(url)) >= count

        return check

    async with running(url):
        await wait_until(await at_least(3), 5, "runs before the restart")
        before = len(await queued_runs(url))
        await asyncio.to_thread(server.restart)
        await wait_until(await at_least(before + 4), 20, "runs after the restart")
        await Queue(QUEUE, url).pause_scheduled_job("beat")  # seen only if the watch came back
        paused_at = time.time()
        await caught_up(url)
    runs = await queued_runs(url, skip_key=CAUGHT_UP)
    assert max(r.due for r in runs) < paused_at + 0.25, "the watch did not see the pause after the restart"
    assert [r.due for r in runs] == interval_runs(start, 0.25, len(runs)), "a run was lost or doubled"
    entry = await ScheduledJobManager(url).get("beat")
    assert entry.run_count == len(runs) and entry.paused
    assert entry.next_run_utc == interval_runs(start, 0.25, len(runs) + 1)[-1]


@pytest.mark.slow
async def test_fires_wait_for_the_watch_to_catch_up_and_each_run_fires_once(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no lag allowed: after every batch of fires the timer waits until the watch delivered its own updates
    monkeypatch.setattr("naq_ipy.schedules.scheduler.WATCH_LAG_MAX", 0)
    start = quarter_after(1.0)
    keys = [f"burst{i}" for i in range(20)]
    async with running(nats_url) as scheduler:
        for key in keys:
            await store(nats_url, key, start, interval_s=0.25, repeat=3)
        for key in keys:
            await wait_until(lambda key=key: entry_gone(nats_url, key), 15, f"{key} to finish")
        assert scheduler._watched_seq >= scheduler._written_seq  # the watch saw every write of ours
    runs = await queued_runs(nats_url)
    assert sorted(r.job_id for r in runs) == sorted(
        f"{key}.{int(due * 1000)}" for key in keys for due in interval_runs(start, 0.25, 3))
