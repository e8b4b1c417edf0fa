"""Queue against a real nats-server: what each method writes to `naq.queue.<name>` and `naq_scheduled_jobs`."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

import naq_ipy
from naq_ipy import ConfigurationError, Job, Queue, ScheduledJob
from naq_ipy.client.job import read_header
from naq_ipy.rules.retry import ExponentialBackoff
from naq_ipy.rules.times import next_cron_run
from naq_ipy.schedules.store import ScheduledJobManager

Msgs = Callable[..., Awaitable[list[RawStreamMsg]]]
Snapshot = Callable[..., Awaitable[dict[str, tuple[bytes, int]]]]


def add(a: int, b: int = 0) -> int:
    return a + b


def _job_of(msg: RawStreamMsg) -> Job:
    assert msg.data is not None
    return Job.deserialize(msg.data)


async def test_enqueue_lands_on_the_queue_subject(nats_url: str, stream_msgs: Msgs) -> None:
    job = await Queue("reports", nats_url).enqueue(add, 1, b=2)
    (msg,) = await stream_msgs()
    assert msg.subject == "naq.queue.reports"
    assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == job.job_id
    back = _job_of(msg)
    assert back == job
    assert (back.args, back.kwargs, back.queue_name, back.enqueue_time) == ((1,), {"b": 2}, "reports", job.enqueue_time)
    assert back.function(*back.args, **back.kwargs) == 3


async def test_enqueue_options_go_to_the_header_not_the_function(nats_url: str, stream_msgs: Msgs) -> None:
    dep = Job(function=add, job_id="dep-1")
    job = await Queue("q", nats_url).enqueue(
        add, 1, b=5, max_retries=2, retry_delay=ExponentialBackoff(base_s=1, max_s=8), depends_on=[dep, "dep-2"],
        timeout=30, result_ttl=3600, job_id="my-job",
    )
    (msg,) = await stream_msgs("naq.queue.q")
    assert msg.data is not None
    header, _ = read_header(msg.data)
    assert header["job_id"] == "my-job" == job.job_id
    assert header["max_retries"] == 2 and header["timeout"] == 30.0 and header["result_ttl"] == 3600.0
    assert header["depends_on"] == ["dep-1", "dep-2"]
    assert header["retry_delay"] == {"exp": {"base_s": 1, "max_s": 8, "factor": 2.0, "jitter": False}}
    back = _job_of(msg)
    assert back.kwargs == {"b": 5} and back == job


async def test_queue_default_timeout_applies(nats_url: str, stream_msgs: Msgs) -> None:
    queue = Queue("q", nats_url, default_timeout=45)
    await queue.enqueue(add, 1)
    await queue.enqueue(add, 2, timeout=5)
    first, second = await stream_msgs()
    assert _job_of(first).timeout == 45.0 and _job_of(second).timeout == 5.0


async def test_reenqueueing_the_same_job_is_deduplicated(nats_url: str, stream_msgs: Msgs) -> None:
    queue = Queue("dedup", nats_url)
    job = queue.job(add, (1,))
    await queue.enqueue_job(job)
    await queue.enqueue_job(job)
    await queue.enqueue(add, 1, job_id=job.job_id)
    await queue.enqueue_many([job, job])
    assert len(await stream_msgs()) == 1
    await queue.enqueue(add, 1)
    assert len(await stream_msgs()) == 2


async def test_enqueue_job_sends_to_the_jobs_own_queue(nats_url: str, stream_msgs: Msgs) -> None:
    job = Queue("elsewhere", nats_url).job(add, (4,))
    await Queue("default", nats_url).enqueue_job(job)
    (msg,) = await stream_msgs()
    assert msg.subject == "naq.queue.elsewhere" and _job_of(msg) == job


async def test_enqueue_many_pipelines_every_kind_of_call(nats_url: str, stream_msgs: Msgs) -> None:
    queue = Queue("bulk", nats_url)
    prepared = Queue("other", nats_url).job(add, (100,), max_retries=1)
    calls: list[Any] = [(add, (i,)) for i in range(50)] + [(add, (1,), {"b": 2}), prepared]
    jobs = await queue.enqueue_many(calls, max_retries=3, timeout=10)
    msgs = await stream_msgs()
    assert [_job_of(m) for m in msgs] == jobs
    assert [m.subject for m in msgs] == ["naq.queue.bulk"] * 51 + ["naq.queue.other"]
    assert all(j.max_retries == 3 and j.timeout == 10.0 for j in jobs[:51])
    assert jobs[50].kwargs == {"b": 2} and jobs[51].max_retries == 1
    assert await queue.enqueue_many([]) == []


async def test_enqueue_at_stores_a_one_off_record(nats_url: str, stream_msgs: Msgs, kv_snapshot: Snapshot) -> None:
    when = datetime(2031, 5, 6, 7, 8, 9, 500000, tzinfo=UTC)
    job = await Queue("later", nats_url).enqueue_at(when, add, 1, b=2, timeout=9, max_retries=1)
    assert await stream_msgs() == []
    store = await kv_snapshot()
    assert list(store) == [job.job_id]
    raw, revision = store[job.job_id]
    data = json.loads(raw)
    assert data["v"] == 1 and data["schedule_type"] == "once" and data["status"] == "active"
    assert data["next_run_utc"] == when.timestamp() and data["queue_name"] == "later"
    record = ScheduledJob.from_bytes(raw, revision)
    assert record.job() == job and record.job().kwargs == {"b": 2} and record.job().timeout == 9.0
    assert record.next_run == when


async def test_enqueue_in_keeps_every_option(nats_url: str, kv_snapshot: Snapshot) -> None:
    before = time.time()
    job = await Queue("later", nats_url).enqueue_in(timedelta(minutes=5), add, 1, timeout=7, result_ttl=60)
    job2 = await Queue("later", nats_url).enqueue_in("90s", add, 2)
    store = await kv_snapshot()
    record = ScheduledJob.from_bytes(*store[job.job_id])
    assert before + 300 <= record.next_run_utc <= time.time() + 300
    assert record.job().timeout == 7.0 and record.job().result_ttl == 60.0 and record.job().kwargs == {}
    assert before + 90 <= ScheduledJob.from_bytes(*store[job2.job_id]).next_run_utc <= time.time() + 90


async def test_schedule_cron_in_a_zone(nats_url: str, kv_snapshot: Snapshot) -> None:
    before = datetime.now(UTC)
    job = await Queue("cron", nats_url).schedule(add, 1, cron="30 6 * * *", tz="Europe/Berlin", repeat=3,
                                                 name="berlin-morning", max_retries=2)
    store = await kv_snapshot()
    assert list(store) == ["berlin-morning"]
    record = ScheduledJob.from_bytes(*store["berlin-morning"])
    assert (record.schedule_type, record.cron, record.tz, record.repeat) == ("cron", "30 6 * * *", "Europe/Berlin", 3)
    assert record.job_id == job.job_id and record.job() == job and record.job().max_retries == 2
    expected = next_cron_run("30 6 * * *", before, "Europe/Berlin")
    assert record.next_run == expected
    assert record.next_run.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin")).hour == 6
    assert record.run_count == 0 and record.interval_s is None


async def test_schedule_interval_without_name_uses_the_job_id(nats_url: str, kv_snapshot: Snapshot) -> None:
    before = time.time()
    job = await Queue("iv", nats_url).schedule(add, 2, interval=timedelta(seconds=90), misfire="skip")
    store = await kv_snapshot()
    record = ScheduledJob.from_bytes(*store[job.job_id])
    assert (record.schedule_type, record.interval_s, record.cron, record.misfire) == ("interval", 90.0, None, "skip")
    assert before + 90 <= record.next_run_utc <= time.time() + 90
    assert record.repeat is None


async def test_schedule_paused_and_start_at(nats_url: str, kv_snapshot: Snapshot) -> None:
    start = datetime(2032, 1, 1, tzinfo=UTC)
    await Queue("iv", nats_url).schedule(add, interval="1h", name="p", paused=True, start_at=start)
    record = ScheduledJob.from_bytes(*(await kv_snapshot())["p"])
    assert record.status == "paused" and record.next_run == start


async def test_scheduling_the_same_name_again_updates_in_place(nats_url: str, kv_snapshot: Snapshot) -> None:
    queue = Queue("iv", nats_url)
    manager = ScheduledJobManager(nats_url)
    await queue.schedule(add, 1, interval=60, name="same")
    first = await manager.get("same")
    await manager.update("same", lambda r: r.evolve(run_count=4, last_run_utc=123.0, last_run_id="same.1"))
    record, created = await queue.schedule_job(queue.job(add, (2,)), cron="0 * * * *", name="same")
    assert created is False
    store = await kv_snapshot()
    assert list(store) == ["same"]
    stored = ScheduledJob.from_bytes(*store["same"])
    assert stored == record
    assert (stored.schedule_type, stored.cron, stored.interval_s) == ("cron", "0 * * * *", None)
    assert stored.job().args == (2,)
    assert (stored.run_count, stored.last_run_utc, stored.last_run_id) == (4, 123.0, "same.1")
    assert stored.created_at == first.created_at and stored.updated_at >= first.updated_at
    assert store["same"][1] > first.revision
    _, created_again = await queue.schedule_job(queue.job(add, (3,)), interval=5, name="fresh")
    assert created_again is True


async def test_purge_returns_the_count_and_spares_other_queues(nats_url: str, stream_msgs: Msgs) -> None:
    queue, other = Queue("purge-me", nats_url), Queue("keep-me", nats_url)
    await queue.enqueue_many([(add, (i,)) for i in range(7)])
    await other.enqueue(add, 1)
    count = await queue.purge()
    assert count == 7 and type(count) is int
    assert [m.subject for m in await stream_msgs()] == ["naq.queue.keep-me"]
    assert await queue.purge() == 0
    assert await naq_ipy.purge_queue("keep-me", nats_url=nats_url) == 1


async def test_get_and_list_scheduled_jobs(nats_url: str) -> None:
    a, b = Queue("a", nats_url), Queue("b", nats_url)
    await a.schedule(add, interval=300, name="a-late")
    await a.schedule(add, interval=60, name="a-soon")
    await b.schedule(add, interval=120, name="b-mid", paused=True)
    one_off = await a.enqueue_in(30, add, 1)
    listed = await a.list_scheduled_jobs()
    assert [r.key for r in listed] == [one_off.job_id, "a-soon", "a-late"]
    assert all(isinstance(r, ScheduledJob) and r.revision > 0 for r in listed)
    everything = await naq_ipy.list_scheduled_jobs(nats_url=nats_url)
    assert [r.key for r in everything] == [one_off.job_id, "a-soon", "b-mid", "a-late"]
    assert [r.key for r in await naq_ipy.list_scheduled_jobs("paused", nats_url=nats_url)] == ["b-mid"]
    assert [r.key for r in await naq_ipy.list_scheduled_jobs(queue="b", nats_url=nats_url)] == ["b-mid"]
    assert [r.key for r in await a.list_scheduled_jobs(status="paused")] == []
    got = await a.get_scheduled_job("a-soon")
    assert got == listed[1] and got.revision == listed[1].revision
    assert await naq_ipy.get_scheduled_job(one_off.job_id, nats_url=nats_url) == listed[0]


async def test_list_on_an_empty_store(nats_url: str) -> None:
    assert await Queue("x", nats_url).list_scheduled_jobs() == []


async def test_module_helpers_write_the_same(nats_url: str, stream_msgs: Msgs, kv_snapshot: Snapshot) -> None:
    job = await naq_ipy.enqueue(add, 1, queue_name="helpers", nats_url=nats_url, timeout=3)
    at = await naq_ipy.enqueue_at(datetime(2030, 1, 1, tzinfo=UTC), add, 2, queue_name="helpers", nats_url=nats_url)
    inn = await naq_ipy.enqueue_in(60, add, 3, queue_name="helpers", nats_url=nats_url)
    sch = await naq_ipy.schedule(add, 4, cron="*/5 * * * *", name="h", queue_name="helpers", nats_url=nats_url)
    (msg,) = await stream_msgs("naq.queue.helpers")
    assert _job_of(msg) == job and job.timeout == 3.0
    store = await kv_snapshot()
    assert set(store) == {at.job_id, inn.job_id, "h"}
    assert all(ScheduledJob.from_bytes(*v).queue_name == "helpers" for v in store.values())
    assert ScheduledJob.from_bytes(*store["h"]).job() == sch


@pytest.mark.parametrize("count", [1, 100], ids=["enqueue", "enqueue_many"])
async def test_stream_is_recreated_when_deleted_under_a_cached_connection(
    nats_url: str, raw_js: JetStreamContext, stream_msgs: Msgs, count: int
) -> None:
    queue = Queue("q", nats_url)
    await queue.enqueue(add, 1)
    await raw_js.delete_stream("naq_jobs")
    calls = [(add, (i,)) for i in range(count)]
    jobs = [await queue.enqueue(add, 0)] if count == 1 else await queue.enqueue_many(calls)
    assert [_job_of(msg) for msg in await stream_msgs()] == jobs  # each stored once, in order


def test_queue_repr_and_attributes() -> None:
    queue = Queue("reports", nats_url="nats://u:pw@127.0.0.1:4999")
    assert (queue.name, queue.subject, queue.stream_name) == ("reports", "naq.queue.reports", "naq_jobs")
    assert "pw" not in repr(queue) and "reports" in repr(queue)
    with pytest.raises(ConfigurationError):
        Queue("a.b")


def mul(a: int, b: int = 1) -> int:
    return a * b


async def test_enqueue_many_mixes_functions_and_keeps_each_call(nats_url: str, stream_msgs: Msgs) -> None:
    jobs = await Queue("mixed", nats_url).enqueue_many([(add, (1, 2)), (mul, (3,), {"b": 4}), (add, (5,))],
                                                       max_retries=1)
    back = [_job_of(m) for m in await stream_msgs()]
    assert back == jobs and [j.function(*j.args, **j.kwargs) for j in back] == [3, 12, 5]
    assert [j.func_name.rsplit(".", 1)[1] for j in back] == ["add", "mul", "add"]
    assert all(j.max_retries == 1 for j in back) and len({j.job_id for j in back}) == 3
