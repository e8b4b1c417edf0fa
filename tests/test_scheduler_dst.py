"""A real scheduler process across both of Berlin's daylight-saving changes of 2026, on an injected clock.

The process (tests/clock_hooks.py) lives a few seconds before the change; the entries are stored
with the next run the client would compute then. cron(8)'s rule (README "Cron in a time zone"): a
fixed-time job in the skipped hour runs right after the jump; a wildcard job runs on real time, so
a per-second job fires every second through either change, none lost, none twice.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from polling import eventually_async
from test_scheduler import queued_runs, store
from test_worker import TESTS_DIR

from naq_ipy.rules.times import next_cron_run
from naq_ipy.schedules.store import ScheduledJobManager

pytestmark = pytest.mark.slow

BERLIN = "Europe/Berlin"
SPRING_FORWARD = datetime(2026, 3, 29, 1, 0, tzinfo=UTC).timestamp()  # 02:00 CET -> 03:00 CEST
FALL_BACK = datetime(2026, 10, 25, 1, 0, tzinfo=UTC).timestamp()  # 03:00 CEST -> 02:00 CET
LEAD_S = 4.0  # the process starts this long before the change
READY_S = 2.0  # the first runs are due this long after it started: time to connect and load the entries


async def store_cron(url: str, key: str, expr: str, now: float) -> None:
    """Store a Berlin cron entry whose next run is the first one due once the scheduler is ready."""
    await store(url, key, next_cron_run(expr, datetime.fromtimestamp(now + READY_S - 0.5, UTC), BERLIN).timestamp(),
                schedule_type="cron", cron=expr, tz=BERLIN)


async def run_scheduler_until(url: str, start: float, log: Path, done: asyncio.Future[None]) -> None:
    """Run the shifted scheduler process (its clock at `start`) until `done`, then stop it."""
    python_path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(TESTS_DIR / "clock_hooks.py"), "--url", url],
                                env={**os.environ, "PYTHONPATH": python_path, "NAQ_TEST_CLOCK_START": str(start)},
                                stdout=subprocess.DEVNULL, stderr=out)
    try:
        await done
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


async def dues(url: str, key: str) -> list[float]:
    """Due times of the queued runs of `key`."""
    return [run.due for run in await queued_runs(url) if run.schedule_key == key]


async def fired_past(url: str, key: str, when: float) -> bool:
    """Whether a run of `key` due at `when` or later is queued."""
    return any(due >= when for due in await dues(url, key))


def assert_every_second(seconds: list[float]) -> None:
    """Whole seconds, one after another: none skipped, none repeated."""
    assert seconds and all(s == int(s) for s in seconds)
    assert [b - a for a, b in zip(seconds, seconds[1:], strict=False)] == [1.0] * (len(seconds) - 1), seconds


async def test_spring_forward_runs_the_skipped_fixed_time_job_once_right_after_the_jump(
    nats_url: str, tmp_path: Path,
) -> None:
    start = SPRING_FORWARD - LEAD_S
    await store_cron(nats_url, "half-past-two", "30 2 * * *", start)  # 02:30 does not exist that night
    await store_cron(nats_url, "every-second", "* * * * * *", start)
    watched = asyncio.ensure_future(eventually_async(
        lambda: fired_past(nats_url, "every-second", SPRING_FORWARD + 2), True, "fires after the change", 60))
    await run_scheduler_until(nats_url, start, tmp_path / "scheduler.log", watched)
    assert await dues(nats_url, "half-past-two") == [SPRING_FORWARD], (tmp_path / "scheduler.log").read_text()
    entry = await ScheduledJobManager(nats_url).get("half-past-two")
    assert entry.run_count == 1
    assert entry.next_run_utc == datetime(2026, 3, 30, 0, 30, tzinfo=UTC).timestamp()  # 02:30 CEST next day
    seconds = await dues(nats_url, "every-second")
    assert_every_second(seconds)
    assert seconds[0] <= SPRING_FORWARD - 1 and seconds[-1] >= SPRING_FORWARD + 2


async def test_fall_back_fires_a_wildcard_job_on_real_time_and_each_hour_once(nats_url: str, tmp_path: Path) -> None:
    start = FALL_BACK - LEAD_S
    await store_cron(nats_url, "hourly", "0 * * * *", start)
    await store_cron(nats_url, "every-second", "* * * * * *", start)
    watched = asyncio.ensure_future(eventually_async(
        lambda: fired_past(nats_url, "every-second", FALL_BACK + 2), True, "fires after the change", 60))
    await run_scheduler_until(nats_url, start, tmp_path / "scheduler.log", watched)
    assert await dues(nats_url, "hourly") == [FALL_BACK], (tmp_path / "scheduler.log").read_text()
    entry = await ScheduledJobManager(nats_url).get("hourly")
    assert entry.next_run_utc == FALL_BACK + 3600  # 02:00 CET, then 03:00 CET: real hours
    seconds = await dues(nats_url, "every-second")
    assert_every_second(seconds)
    assert seconds[0] <= FALL_BACK - 1 and seconds[-1] >= FALL_BACK + 2
