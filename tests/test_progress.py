"""`naq_ipy.progress` from jobs run by a real worker (threads, coroutines, processes) on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import jobs
import nats
import pytest
from conftest import KEEPER_STREAM
from test_worker import running_worker

import naq_ipy
from naq_ipy import ConfigurationError, Queue
from naq_ipy.status.progress import INTERVAL_S, check_fraction, check_message, current_job_id, write_progress
from naq_ipy.status.results import FINISHED, RUNNING, JobStatus, write_status
from naq_ipy.wire.connection import close_all, get_connection
from naq_ipy.wire.names import JOB_STATUS_KV_NAME


@pytest.fixture
async def url(nats_url: str) -> AsyncIterator[str]:
    """The clean server's URL; the test loop's pooled connections are closed afterwards."""
    yield nats_url
    await close_all()


@contextlib.asynccontextmanager
async def recorded(url: str, job_id: str) -> AsyncIterator[list[JobStatus]]:
    """Every status record written for `job_id` while inside the block, in order (a live KV watch)."""
    kv = await (await get_connection(url)).kv(JOB_STATUS_KV_NAME)
    watcher = await kv.watch(job_id)
    seen: list[JobStatus] = []

    async def collect() -> None:
        async for entry in watcher:
            if entry is not None and entry.value:
                seen.append(JobStatus.from_bytes(entry.value, entry.revision or 0))

    task = asyncio.create_task(collect())
    try:
        yield seen
    finally:
        await asyncio.sleep(0.2)  # the last writes are on their way to the watcher
        task.cancel()
        await watcher.stop()


async def run_recorded(url: str, func: Callable[..., Any], *args: Any) -> tuple[Any, list[JobStatus]]:
    """Enqueue `func(*args)`, wait for its result, and return it with every status record it went through."""
    queue = Queue("default", url)
    job = queue.job(func, args)
    async with recorded(url, job.job_id) as seen:
        await queue.enqueue_job(job)
        value = await job.result(timeout=30)
    return value, seen


def reported(seen: list[JobStatus]) -> list[tuple[float | None, str | None]]:
    """The distinct (progress, message) pairs of the running records, in order."""
    pairs: list[tuple[float | None, str | None]] = []
    for status in seen:
        pair = (status.progress, status.message)
        if status.status == RUNNING and status.progress is not None and pair not in pairs:
            pairs.append(pair)
    return pairs


async def stream_names(url: str) -> list[str]:
    """Names of the streams (and so KV buckets) on the server at `url`."""
    nc = await nats.connect(url)
    try:
        return sorted(info.config.name for info in await nc.jetstream().streams_info())
    finally:
        await nc.close()


STEPS = [(0.25, "step 1 of 3"), (0.5, "step 2 of 3"), (1.0, "step 3 of 3")]


def test_outside_a_job_progress_does_nothing_but_still_checks_its_arguments(
    nats_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NAQ_URL", nats_url)  # a server it could write to, if it wrongly tried
    assert current_job_id() is None
    naq_ipy.progress(0.5, "not in a job")
    asyncio.run(naq_ipy.progress_async(1.0))
    assert asyncio.run(stream_names(nats_url)) == [KEEPER_STREAM], "progress outside a job wrote to NATS"
    with pytest.raises(ConfigurationError):
        naq_ipy.progress(float("nan"))
    with pytest.raises(ConfigurationError):
        naq_ipy.progress("half")  # type: ignore[arg-type]
    assert (check_fraction(-1), check_fraction(2), check_fraction(1)) == (0.0, 1.0, 1.0)
    assert check_message("a\n  b") == "a b"
    assert len(check_message("x" * 500) or "") == 200


@pytest.mark.parametrize("process_pool", [False, True], ids=["thread", "process"])
async def test_steps_of_a_plain_function_are_stored_in_order(url: str, process_pool: bool) -> None:
    async with running_worker(url, process_pool=process_pool):
        value, seen = await run_recorded(url, jobs.report_steps, [f for f, _ in STEPS], 0.4)
    assert value == "reported"
    assert reported(seen) == STEPS
    final = seen[-1]
    assert (final.status, final.progress, final.message) == (FINISHED, 1.0, "step 3 of 3")


async def test_steps_of_a_coroutine_are_stored_in_order(url: str) -> None:
    async with running_worker(url):
        value, seen = await run_recorded(url, jobs.report_steps_async, [f for f, _ in STEPS], 0.4)
    assert value == "reported"
    assert reported(seen) == STEPS
    assert (seen[-1].status, seen[-1].progress) == (FINISHED, 1.0)


@pytest.mark.parametrize("process_pool", [False, True], ids=["thread", "process"])
async def test_a_tight_loop_is_rate_limited_and_its_last_value_kept(url: str, process_pool: bool) -> None:
    seconds = 1.5
    async with running_worker(url, process_pool=process_pool):
        calls, seen = await run_recorded(url, jobs.report_tightly, seconds)
    progress_writes = [s for s in seen if s.status == RUNNING and s.progress is not None]
    assert calls > 1000
    assert 2 <= len(progress_writes) <= seconds / INTERVAL_S + 2
    assert (seen[-1].status, seen[-1].progress, seen[-1].message) == (FINISHED, 1.0, "done")


async def test_a_progress_write_never_touches_an_ended_or_missing_record(url: str) -> None:
    conn = await get_connection(url)
    assert not await write_progress(conn, "nobody", 0.5, None)
    await write_status(conn, JobStatus(job_id="ended", status=FINISHED, progress=0.9))
    assert not await write_progress(conn, "ended", 0.1, "late")
    await write_status(conn, JobStatus(job_id="busy", status=RUNNING))
    assert await write_progress(conn, "busy", 0.3, "working")
    kv = await conn.kv(JOB_STATUS_KV_NAME)
    ended, busy = [JobStatus.from_bytes((await kv.get(key)).value or b"") for key in ("ended", "busy")]
    assert (ended.progress, ended.message) == (0.9, None)
    assert (busy.status, busy.progress, busy.message) == (RUNNING, 0.3, "working")
