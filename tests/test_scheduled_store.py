"""The scheduled-job store: records after pause / resume / modify / cancel, revision checks and races."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.js import JetStreamContext

from naq_ipy import ConfigurationError, ConflictError, JobNotFoundError, Queue, ScheduledJob, SerializationError
from naq_ipy.client.job import read_header
from naq_ipy.rules.retry import ExponentialBackoff
from naq_ipy.rules.times import next_cron_run
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.wire.connection import get_connection
from naq_ipy.wire.settings import ConnectionSettings

Snapshot = Callable[..., Awaitable[dict[str, tuple[bytes, int]]]]


def add(a: int, b: int = 0) -> int:
    return a + b


async def _record(kv_snapshot: Snapshot, key: str) -> ScheduledJob:
    store = await kv_snapshot()
    assert key in store, f"{key!r} not in {list(store)}"
    return ScheduledJob.from_bytes(*store[key])


async def test_records_are_versioned_json_under_str_keys(nats_url: str, kv_snapshot: Snapshot) -> None:
    await Queue("q", nats_url).schedule(add, 1, interval=60, name="every-minute")
    store = await kv_snapshot()
    assert list(store) == ["every-minute"] and all(isinstance(k, str) for k in store)
    data = json.loads(store["every-minute"][0])
    assert data["v"] == 1 and data["key"] == "every-minute" and data["status"] == "active"
    for name in ("job_id", "queue_name", "func_name", "job_data", "schedule_type", "next_run_utc", "cron", "tz",
                 "interval_s", "repeat", "run_count", "last_run_utc", "status", "created_at", "updated_at"):
        assert name in data
    assert b"\x80" not in store["every-minute"][0]  # JSON, not a pickle


async def test_pause_and_resume_write_the_status(nats_url: str, kv_snapshot: Snapshot) -> None:
    queue = Queue("q", nats_url)
    await queue.schedule(add, 1, interval=60, name="s")
    before = await _record(kv_snapshot, "s")
    assert await queue.pause_scheduled_job("s") is True
    paused = await _record(kv_snapshot, "s")
    assert paused.status == "paused" and paused.next_run_utc == before.next_run_utc
    assert paused.revision > before.revision > 0
    assert await queue.pause_scheduled_job("s") is True  # idempotent
    assert await queue.resume_scheduled_job("s") is True
    resumed = await _record(kv_snapshot, "s")
    assert resumed.status == "active" and resumed.next_run_utc == before.next_run_utc
    assert resumed.job() == before.job() and resumed.created_at == before.created_at


async def test_resume_skips_missed_runs_unless_catch_up(nats_url: str, kv_snapshot: Snapshot) -> None:
    queue = Queue("q", nats_url)
    past = time.time() - 3600
    await queue.schedule(add, interval=60, name="skip", start_at=past, paused=True)
    await queue.schedule(add, interval=60, name="catch", start_at=past, paused=True)
    await queue.enqueue_at(past, add, job_id="once-late")
    await queue.pause_scheduled_job("once-late")
    now = time.time()
    await queue.resume_scheduled_job("skip")
    await queue.resume_scheduled_job("catch", catch_up=True)
    await queue.resume_scheduled_job("once-late")
    skipped = (await _record(kv_snapshot, "skip")).next_run_utc
    assert now < skipped <= time.time() + 60  # the next run after now, not the missed ones
    assert (await _record(kv_snapshot, "catch")).next_run_utc == past
    assert (await _record(kv_snapshot, "once-late")).next_run_utc == past  # a one-off still runs, late


async def test_cancel_deletes_and_a_second_cancel_raises(nats_url: str, kv_snapshot: Snapshot) -> None:
    queue = Queue("q", nats_url)
    await queue.schedule(add, interval=60, name="gone")
    await queue.schedule(add, interval=60, name="stays")
    assert await queue.cancel_scheduled_job("gone") is True
    assert list(await kv_snapshot()) == ["stays"]
    with pytest.raises(JobNotFoundError, match="gone"):
        await queue.cancel_scheduled_job("gone")
    with pytest.raises(JobNotFoundError, match="gone"):
        await queue.get_scheduled_job("gone")
    for action in (queue.pause_scheduled_job, queue.resume_scheduled_job):
        with pytest.raises(JobNotFoundError):
            await action("gone")
    with pytest.raises(JobNotFoundError):
        await queue.modify_scheduled_job("gone", interval=5)
    assert [r.key for r in await queue.list_scheduled_jobs()] == ["stays"]
    await queue.schedule(add, interval=30, name="gone")  # the name can be used again after a cancel
    assert (await _record(kv_snapshot, "gone")).interval_s == 30.0


async def test_unknown_names_raise_job_not_found(nats_url: str) -> None:
    queue = Queue("q", nats_url)
    with pytest.raises(JobNotFoundError, match="never-was"):
        await queue.get_scheduled_job("never-was")
    with pytest.raises(JobNotFoundError):
        await queue.cancel_scheduled_job("never-was")


# --- modify: every field ---


def _header(record: ScheduledJob) -> dict[str, Any]:
    return read_header(record.job_data)[0]


async def _modified(q: Queue, kv_snapshot: Snapshot, key: str, /, **updates: Any) -> ScheduledJob:
    before = await _record(kv_snapshot, key)
    assert await q.modify_scheduled_job(key, **updates) is True
    after = await _record(kv_snapshot, key)
    assert after.revision > before.revision > 0
    assert after.created_at == before.created_at and after.updated_at >= before.updated_at
    return after


async def test_modify_timing_fields(nats_url: str, kv_snapshot: Snapshot) -> None:
    queue = Queue("q", nats_url)
    await queue.schedule(add, 1, interval=60, name="m")
    now = datetime.now(UTC)
    rec = await _modified(queue, kv_snapshot, "m", cron="0 3 * * *")
    assert (rec.schedule_type, rec.cron, rec.interval_s, rec.tz) == ("cron", "0 3 * * *", None, None)
    assert rec.next_run == next_cron_run("0 3 * * *", now)
    rec = await _modified(queue, kv_snapshot, "m", tz="America/New_York")
    assert rec.tz == "America/New_York" and rec.next_run == next_cron_run("0 3 * * *", now, "America/New_York")
    start = time.time()
    rec = await _modified(queue, kv_snapshot, "m", interval="2m")
    assert (rec.schedule_type, rec.interval_s, rec.cron, rec.tz) == ("interval", 120.0, None, None)
    assert start + 120 <= rec.next_run_utc <= time.time() + 120
    when = datetime(2033, 3, 4, 5, 6, tzinfo=UTC)
    rec = await _modified(queue, kv_snapshot, "m", next_run=when)
    assert rec.next_run == when and rec.interval_s == 120.0
    rec = await _modified(queue, kv_snapshot, "m", repeat=5)
    assert rec.repeat == 5
    rec = await _modified(queue, kv_snapshot, "m", repeat=None)
    assert rec.repeat is None
    rec = await _modified(queue, kv_snapshot, "m", misfire="all")
    assert rec.misfire == "all" and rec.next_run == when


async def test_modify_job_fields_rewrites_the_stored_header(nats_url: str, kv_snapshot: Snapshot) -> None:
    queue = Queue("q", nats_url)
    job = await queue.schedule(add, 1, b=2, interval=60, name="h")
    body = read_header((await _record(kv_snapshot, "h")).job_data)[1]
    rec = await _modified(queue, kv_snapshot, "h", queue="other-queue")
    assert rec.queue_name == "other-queue" and _header(rec)["queue_name"] == "other-queue"
    rec = await _modified(queue, kv_snapshot, "h", max_retries=4)
    assert _header(rec)["max_retries"] == 4
    rec = await _modified(queue, kv_snapshot, "h", retry_delay=[1, 10])
    assert _header(rec)["retry_delay"] == [1.0, 10.0]
    rec = await _modified(queue, kv_snapshot, "h", retry_delay=ExponentialBackoff(base_s=3))
    assert _header(rec)["retry_delay"]["exp"]["base_s"] == 3
    rec = await _modified(queue, kv_snapshot, "h", timeout="5m")
    assert _header(rec)["timeout"] == 300.0
    rec = await _modified(queue, kv_snapshot, "h", timeout=None)
    assert _header(rec)["timeout"] is None
    assert read_header(rec.job_data)[1] == body  # the pickled call was never touched
    stored = rec.job()
    assert (stored.queue_name, stored.max_retries, stored.job_id, stored.args, stored.kwargs) == (
        "other-queue", 4, job.job_id, (1,), {"b": 2})
    assert [r.key for r in await Queue("other-queue", nats_url).list_scheduled_jobs()] == ["h"]


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ({"colour": "red"}, "cannot modify colour"),
        ({"interval": 5, "status": "paused"}, "cannot modify status"),
        ({"cron": "61 * * * *"}, "invalid cron"),
        ({"interval": 0}, "interval"),
        ({"interval": -5}, "duration"),
        ({"cron": "* * * * *", "interval": 5}, "exactly one"),
        ({"tz": "Nowhere/Atlantis"}, "tz applies to cron"),
        ({"cron": "* * * * *", "tz": "Nowhere/Atlantis"}, "unknown time zone"),
        ({"repeat": 0}, "repeat"),
        ({"misfire": "sometimes"}, "misfire"),
        ({"queue": "with.dot"}, "queue name"),
        ({"max_retries": -1}, "max_retries"),
        ({"retry_delay": "soon"}, "retry delay"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "never"}, "duration"),
        ({"next_run": "tomorrow"}, "invalid time"),
    ],
)
async def test_bad_modify_writes_nothing(
    nats_url: str, kv_snapshot: Snapshot, updates: dict[str, Any], message: str
) -> None:
    queue = Queue("q", nats_url)
    await queue.schedule(add, 1, interval=60, name="bad")
    before = await kv_snapshot()
    with pytest.raises(ConfigurationError, match=message):
        await queue.modify_scheduled_job("bad", **updates)
    assert await kv_snapshot() == before  # same bytes, same revision


# --- revision checks and races between connections ---


async def test_update_if_unchanged_refuses_a_stale_record(nats_url: str, kv_snapshot: Snapshot) -> None:
    queue = Queue("q", nats_url)
    manager = ScheduledJobManager(nats_url)
    await queue.schedule(add, interval=60, name="r")
    stale = await manager.get("r")
    await queue.pause_scheduled_job("r")
    with pytest.raises(ConflictError, match="changed elsewhere"):
        await manager.update_if_unchanged(stale, stale.evolve(run_count=stale.run_count + 1))
    assert (await _record(kv_snapshot, "r")).status == "paused"
    fresh = await manager.get("r")
    written = await manager.update_if_unchanged(fresh, fresh.evolve(run_count=1))
    assert written.revision > fresh.revision and (await _record(kv_snapshot, "r")).run_count == 1


async def test_update_gives_up_with_conflict_error_when_always_beaten(
    nats_url: str, raw_js: JetStreamContext
) -> None:
    await Queue("q", nats_url).schedule(add, interval=60, name="busy")
    manager = ScheduledJobManager(nats_url)
    other_kv = await raw_js.key_value("naq_scheduled_jobs")
    calls = 0

    def change(record: ScheduledJob) -> ScheduledJob:
        nonlocal calls
        calls += 1
        return record.evolve(run_count=calls)

    original_get = manager.get

    async def get_then_be_beaten(key: str) -> ScheduledJob:
        record = await original_get(key)
        await other_kv.put(key, record.to_bytes())  # another client writes between our read and our update
        return record

    manager.get = get_then_be_beaten  # type: ignore[method-assign]
    with pytest.raises(ConflictError, match="gave up"):
        await manager.update("busy", change)
    assert calls == 5


@pytest.mark.parametrize("other", ["second-connection", "bridge-thread"])
async def test_pause_racing_modify_loses_neither(
    nats_url: str, kv_snapshot: Snapshot, caplog: pytest.LogCaptureFixture, other: str
) -> None:
    # other settings give other pooled connections on this loop; "bridge-thread" pauses from another loop too
    conn_a, conn_b, conn_c = (ConnectionSettings(url=nats_url, connect_timeout_s=s) for s in (2.0, 2.5, 2.7))
    queue_a, queue_b, queue_c = Queue("q", conn_a), Queue("q", conn_b), Queue("q", conn_c)
    assert len({id((await get_connection(c)).nc) for c in (conn_a, conn_b, conn_c)}) == 3
    await queue_a.schedule(add, interval=60, name="race")
    caplog.set_level(logging.DEBUG, logger="naq_ipy.schedules.store")

    async def pause() -> bool:
        if other == "bridge-thread":
            return await asyncio.to_thread(queue_a.pause_scheduled_job_sync, "race")
        return await queue_a.pause_scheduled_job("race")

    for round_ in range(20):
        results = await asyncio.gather(
            pause(),
            queue_b.modify_scheduled_job("race", interval=100 + round_),
            queue_c.modify_scheduled_job("race", max_retries=round_),
        )
        assert results == [True, True, True]
        record = await _record(kv_snapshot, "race")
        assert record.status == "paused", f"round {round_}: the pause was lost"
        assert record.interval_s == 100 + round_, f"round {round_}: the interval change was lost"
        assert _header(record)["max_retries"] == round_, f"round {round_}: the retries change was lost"
        await queue_b.resume_scheduled_job("race")
        assert (await _record(kv_snapshot, "race")).status == "active"
    conflicts = [r for r in caplog.records if "changed concurrently" in r.getMessage()]
    assert conflicts, "no round produced a write conflict: the race was never exercised"


async def test_corrupt_record_is_skipped_by_list_and_refused_by_get(
    nats_url: str, raw_js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    queue = Queue("q", nats_url)
    await queue.schedule(add, interval=60, name="good")
    kv = await raw_js.key_value("naq_scheduled_jobs")
    await kv.put("broken", b"\x80\x04pickled-python-object")
    await kv.put("old-version", json.dumps({"v": 0, "key": "old-version"}).encode())
    with caplog.at_level(logging.WARNING, logger="naq_ipy.schedules.store"):
        assert [r.key for r in await queue.list_scheduled_jobs()] == ["good"]
    assert {"'broken'", "'old-version'"} <= {r.getMessage().split()[3].rstrip(":") for r in caplog.records}
    with pytest.raises(SerializationError, match="corrupt scheduled-job record"):
        await queue.get_scheduled_job("broken")


async def test_list_never_ends_before_the_values(nats_url: str) -> None:
    # nats-py's watcher can report "initial values done" before delivering them; list must not trust it
    queue = Queue("q", nats_url)
    short = []
    for i in range(300):
        await queue.schedule(add, interval=60, name=f"k{i % 3}")
        if len(await queue.list_scheduled_jobs()) != min(i + 1, 3):
            short.append(i)
    assert short == []
    await queue.cancel_scheduled_job("k2")  # a delete marker as the newest message: list still ends
    assert sorted(r.key for r in await queue.list_scheduled_jobs()) == ["k0", "k1"]
