"""Waiting on many jobs (`naq_ipy.wait`) and a schedule's recent runs, against a real nats-server and worker."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import jobs
import pytest
from nats.aio.msg import Msg
from test_worker import running_worker

import naq_ipy
import naq_ipy.status.results
from naq_ipy import ConfigurationError, JobExecutionError, Queue, WaitResult
from naq_ipy.status.results import FAILED, FINISHED, RUNNING, JobStatus, wait_for_end, write_status
from naq_ipy.status.waiting import recent_runs, wait
from naq_ipy.views.jobs import render_runs, wait_text
from naq_ipy.wire.connection import close_all, get_connection
from naq_ipy.wire.names import run_due_ms


@pytest.fixture
async def url(nats_url: str) -> AsyncIterator[str]:
    """The clean server's URL; the test loop's pooled connections are closed afterwards."""
    yield nats_url
    await close_all()


async def test_wait_over_fifty_jobs_returns_when_all_ended_and_the_counts_add_up(url: str) -> None:
    queue = Queue("default", url)
    calls = [(jobs.add, (i, 1)) for i in range(45)] + [(jobs.boom, (f"no {i}",)) for i in range(5)]
    updates: list[WaitResult] = []
    async with running_worker(url, concurrency=10):
        enqueued = await queue.enqueue_many(calls)
        result = await wait(enqueued, timeout=30, on_update=updates.append)
    assert result.complete and (result.total, result.done, result.failed) == (50, 45, 5)
    assert result.done + result.failed == 50 and result.running == result.queued == 0
    assert set(result.failed_ids) == {job.job_id for job in enqueued[45:]}
    ended = [update.ended for update in updates]
    assert ended == sorted(ended) and (updates[-1].done, updates[-1].failed) == (45, 5)


async def test_the_sync_wait_over_fifty_jobs_through_the_bridge(url: str) -> None:
    queue = Queue("default", url)
    async with running_worker(url, concurrency=10):
        enqueued = await queue.enqueue_many([(jobs.add, (i, 1)) for i in range(50)])
        result = await asyncio.to_thread(naq_ipy.wait, enqueued, 30)
    assert (result.done, result.failed, result.complete) == (50, 0, True)
    assert repr(result).startswith("<WaitResult 50 of 50 ended: 50 done, 0 failed, 0 running, 0 queued")


async def test_raise_on_failure_stops_at_the_first_failed_job_with_its_traceback(url: str) -> None:
    queue = Queue("default", url)
    async with running_worker(url):
        good, bad = await queue.enqueue(jobs.add, 1, 2), await queue.enqueue(jobs.boom, "kaput")
        with pytest.raises(JobExecutionError) as info:
            await wait([good, bad.job_id], timeout=30, raise_on_failure=True, url=url)
    assert info.value.job_id == bad.job_id and "RuntimeError: kaput" in str(info.value)
    assert "Traceback" in (info.value.remote_traceback or "")


async def test_a_timeout_returns_the_counts_so_far(url: str) -> None:
    queue = Queue("nobody", url)
    enqueued = await queue.enqueue_many([(jobs.add, (i, 1)) for i in range(3)])
    started = time.monotonic()
    result = await wait(enqueued, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert not result.complete and (result.queued, result.ended) == (3, 0)
    nothing = await wait([])
    assert (nothing.total, nothing.complete) == (0, True)
    with pytest.raises(ConfigurationError):
        await wait([42], timeout=1)  # type: ignore[list-item]


async def test_recent_runs_are_the_latest_runs_of_that_schedule_only(url: str) -> None:
    conn = await get_connection(url)
    for job_id, state in [("tick.1000", FINISHED), ("tick.3000", FAILED), ("tick.now-2000", RUNNING),
                          ("tick.sub.9000", FINISHED), ("ticker.9000", FINISHED), ("tick", FINISHED)]:
        await write_status(conn, JobStatus(job_id=job_id, status=state, schedule_key="tick", error=(
            "ValueError: bad" if state == FAILED else None), started_at=time.time() - 5, finished_at=time.time()))
    runs = await recent_runs("tick", limit=2, url=url)
    assert [run.job_id for run in runs] == ["tick.3000", "tick.now-2000"]
    assert [run.job_id for run in await recent_runs("tick", url=url)] == ["tick.3000", "tick.now-2000", "tick.1000"]
    assert await recent_runs("nothing", url=url) == []
    with pytest.raises(ConfigurationError):
        await recent_runs("tick", limit=0, url=url)
    page = render_runs(runs)
    assert "<td style='text-align:left;padding:1px 8px'>3000</td>" in page and "ValueError: bad" in page
    assert "now-2000" in page and "running" in page and "failed" in page


def test_run_ids_and_texts() -> None:
    ids = ("a.b.5", "a.b.now-7", "a.b.c.5", "a.bc.5", "a.b")
    assert [run_due_ms(job_id, "a.b") for job_id in ids] == [5, 7, None, None, None]
    assert "no runs recorded" in render_runs([], "recent runs of x")
    result = WaitResult(total=5, done=2, failed=1, running=1, elapsed_s=2.5)
    assert (result.queued, result.ended, result.complete) == (1, 3, False)
    assert wait_text(result) == "3 of 5 ended: 2 done, 1 failed, 1 running, 1 queued · 2.5 s"


def test_the_scheduled_jobs_panel_shows_the_recent_runs_of_the_selected_row(nats_url: str) -> None:
    from naq_ipy.ipython.schedules_panel import ScheduledJobsPanel

    async def record_runs() -> None:
        conn = await get_connection(nats_url)
        await write_status(conn, JobStatus(job_id="tick.1000", status=FINISHED, schedule_key="tick"))
        await write_status(conn, JobStatus(job_id="tick.2000", status=FAILED, schedule_key="tick",
                                           error="ValueError: bad tick"))

    Queue("default", nats_url).schedule_sync(jobs.add, 1, 2, interval=3600, name="tick")
    asyncio.run(record_runs())
    panel = ScheduledJobsPanel(url=nats_url)
    try:
        assert panel.wait_loaded(5) and panel.widget is not None
        panel.controls.runs.click()
        assert panel.status_error and "select exactly one" in panel.status_text
        panel.select_keys(["tick"])
        panel.controls.runs.click()
        deadline = time.monotonic() + 10
        while "tick" not in panel.controls.runs_table.value and time.monotonic() < deadline:
            time.sleep(0.02)
        table = panel.controls.runs_table.value
        assert "recent runs of tick" in table and "ValueError: bad tick" in table
        assert table.index(">2000<") < table.index(">1000<")
    finally:
        panel.close()


def test_the_wait_bar_and_redrawing_while_a_cell_blocks() -> None:
    from naq_ipy.ipython.livewait import WaitBar, run_redrawing

    bar = WaitBar(3)
    other = threading.Thread(target=bar.update, args=(WaitResult(3, done=1, running=1),))
    other.start()
    other.join()
    assert bar.bar.value == 0  # another thread only hands over the counts
    redraws: list[int] = []

    def redraw() -> None:
        redraws.append(bar.bar.value)
        bar.redraw()

    assert run_redrawing(asyncio.sleep(0.5, "slept"), redraw) == "slept"
    assert len(redraws) >= 2 and bar.bar.value == 1 and "1 done, 0 failed, 1 running, 1 queued" in bar.label.value
    bar.update(WaitResult(3, done=2, failed=1))
    assert (bar.bar.value, bar.bar.bar_style) == (3, "danger")
    with pytest.raises(ZeroDivisionError):
        run_redrawing(_divide_by_zero(), lambda: None)


async def _divide_by_zero() -> float:
    await asyncio.sleep(0.3)
    return 1 / 0


async def test_fetch_status_refuses_a_bad_job_id_naming_it(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^invalid job id 'no spaces': use letters"):
        await naq_ipy.status.results.fetch_status("no spaces", url)


async def test_waiting_for_a_job_that_ended_is_one_status_read_and_no_watch(url: str) -> None:
    conn = await get_connection(url)
    consumers: list[str] = []  # a KV watch is a consumer: its create request is seen by a plain subscriber

    async def on_create(msg: Msg) -> None:
        consumers.append(msg.subject)

    spy = await conn.nc.subscribe("$JS.API.CONSUMER.CREATE.>", cb=on_create)
    await write_status(conn, JobStatus(job_id="ended1", status=FINISHED, updated_at=time.time()))
    assert (await wait_for_end("ended1", 5, url)).status == FINISHED
    await conn.nc.flush()
    assert consumers == []
    await write_status(conn, JobStatus(job_id="later1", status=RUNNING, updated_at=time.time()))
    waiting = asyncio.create_task(wait_for_end("later1", 5, url))
    while not consumers:  # not ended yet: watched until it ends
        await asyncio.sleep(0.01)
    await write_status(conn, JobStatus(job_id="later1", status=FAILED, error="boom", updated_at=time.time()))
    assert (await waiting).status == FAILED
    await spy.unsubscribe()
