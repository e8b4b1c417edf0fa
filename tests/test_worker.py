"""Worker against a real nats-server: running, redelivery, retries, timeouts, dependencies, shutdown, heartbeats.

Crash and signal tests run workers as real processes (`python -m naq_ipy.cli worker`) with the
job functions of `tests/jobs.py`; the rest run a Worker in the test's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import jobs
import pytest
from nats.js import JetStreamContext
from polling import eventually, eventually_async

from naq_ipy import ConfigurationError, JobExecutionError, NaqException, Queue
from naq_ipy.status.results import FAILED, FINISHED, fetch_status
from naq_ipy.wire.connection import close_all
from naq_ipy.wire.server import NatsServer
from naq_ipy.worker.consumer import Worker, list_workers

TESTS_DIR = Path(__file__).parent
Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
async def url(nats_url: str) -> AsyncIterator[str]:
    """The clean server's URL; the test loop's pooled connections are closed afterwards."""
    yield nats_url
    await close_all()


@contextlib.asynccontextmanager
async def running_worker(url: str, queues: str | list[str] = "default", **options: Any) -> AsyncIterator[Worker]:
    """A Worker running in this loop (heartbeat every 0.5 s unless given), stopped on exit."""
    options.setdefault("heartbeat_s", 0.5)
    worker = Worker(queues, url=url, **options)
    task = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: worker.started_at or task.done(), what="the worker to start")
        if task.done():
            task.result()  # raises why it could not start
        yield worker
    finally:
        await worker.stop()
        await task


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Spawn]:
    """`spawn_worker(url, *args)`: a worker process (log in `proc.log_path`); all are killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(url: str, *args: str) -> subprocess.Popen[bytes]:
        python_path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": python_path}
        log_path = tmp_path / f"worker{len(procs)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "naq_ipy.cli", "worker", "--url", url, "--heartbeat", "0.5",
                                     *args],
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
        proc.log_path = log_path  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def stream_count(raw_js: JetStreamContext) -> int:
    """Messages left in the job stream (work-queue retention: acked ones are gone)."""
    return (await raw_js.stream_info("naq_jobs")).state.messages


async def test_runs_twenty_jobs_and_records_them_finished(url: str, raw_js: JetStreamContext) -> None:
    queue = Queue("default", url)
    enqueued = await queue.enqueue_many([(jobs.add, (i, 100)) for i in range(19)])
    enqueued.append(await queue.enqueue(jobs.square_async, 7))
    async with running_worker(url, concurrency=5) as worker:
        results = [await job.result(timeout=10) for job in enqueued]
        statuses = [await fetch_status(job.job_id, url) for job in enqueued]
    assert results == [i + 100 for i in range(19)] + [49]
    assert all(s is not None and s.status == FINISHED and s.attempts == 1 for s in statuses)
    assert {s.worker_id for s in statuses if s} == {worker.worker_id}
    assert all(s and s.started_at and s.finished_at and s.finished_at >= s.started_at for s in statuses)
    assert worker.processed == 20 and worker.failed == 0
    assert await stream_count(raw_js) == 0


async def test_an_idle_queue_does_not_hold_the_only_slot(url: str) -> None:
    async with running_worker(url, ["idle", "busy"], concurrency=1):
        await asyncio.sleep(0.2)  # both fetch loops are waiting for messages now
        started = time.monotonic()
        enqueued = await Queue("busy", url).enqueue_many([(jobs.add, (i, i)) for i in range(5)])
        assert [await job.result(timeout=10) for job in enqueued] == [0, 2, 4, 6, 8]
        assert time.monotonic() - started < 1.5, "each job waited for the idle queue's fetch to expire"


@pytest.mark.slow
async def test_job_of_a_killed_worker_is_redelivered_and_finishes_once(
    url: str, spawn_worker: Spawn, tmp_path: Path,
) -> None:
    path = str(tmp_path / "marks")
    first = spawn_worker(url, "--ack-wait", "2")
    job = await Queue("default", url).enqueue(jobs.slow, path, 1.5, "done")
    await eventually(lambda: jobs.marks(path, "start"), what="the job to start in the first worker")
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    async with running_worker(url, concurrency=2):
        assert await job.result(timeout=15) == "done"
        status = await fetch_status(job.job_id, url)
        live = await list_workers(url)
    assert len(jobs.marks(path, "start")) == 2 and len(jobs.marks(path, "end")) == 1
    assert status is not None and status.status == FINISHED and status.attempts == 2
    assert all(w["pid"] != first.pid for w in live), "the killed worker's heartbeat should have expired"


@pytest.mark.slow
async def test_job_longer_than_ack_wait_runs_exactly_once(url: str, tmp_path: Path, raw_js: JetStreamContext) -> None:
    path = str(tmp_path / "marks")
    async with running_worker(url, concurrency=2, ack_wait_s=1) as worker:
        job = await Queue("default", url).enqueue(jobs.slow, path, 4, "long")
        assert await job.result(timeout=15) == "long"
        # acked (gone from the work-queue stream): no redelivery can come any more
        await eventually_async(lambda: stream_count(raw_js), 0, "the job's ack")
    assert len(jobs.marks(path, "start")) == 1 and worker.processed == 1
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.attempts == 1


async def test_retries_wait_their_delays_then_succeed(url: str, tmp_path: Path) -> None:
    path = str(tmp_path / "marks")
    async with running_worker(url, concurrency=2):
        job = await Queue("default", url).enqueue(jobs.fail_times, path, 2, max_retries=2, retry_delay=[0.3, 0.6])
        assert await job.result(timeout=10) == 3
    starts = jobs.marks(path, "start")
    assert len(starts) == 3
    assert starts[1] - starts[0] >= 0.3 and starts[2] - starts[1] >= 0.6
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.status == FINISHED and status.attempts == 3


async def test_async_job_is_cancelled_at_its_timeout(url: str, tmp_path: Path) -> None:
    path = str(tmp_path / "marks")
    async with running_worker(url):
        job = await Queue("default", url).enqueue(jobs.slow_async, path, 3, timeout=0.3)
        with pytest.raises(JobExecutionError, match="TimeoutError: job exceeded its timeout of 0.3s; it was cancelled"):
            await job.result(timeout=5)
    assert len(jobs.marks(path, "start")) == 1 and jobs.marks(path, "end") == []


async def test_overrunning_thread_fails_at_its_deadline_but_keeps_its_slot(url: str, tmp_path: Path) -> None:
    first_path, second_path = str(tmp_path / "first"), str(tmp_path / "second")
    async with running_worker(url, concurrency=1):
        queue = Queue("default", url)
        first = await queue.enqueue(jobs.slow, first_path, 1.0, timeout=0.2)
        second = await queue.enqueue(jobs.slow, second_path, 0, "second")
        with pytest.raises(JobExecutionError, match="TimeoutError: job exceeded its timeout of 0.2s"):
            await first.result(timeout=5)
        assert jobs.marks(first_path, "end") == [], "the failure is reported at the deadline, not at the thread's end"
        assert await second.result(timeout=5) == "second"
    status = await fetch_status(second.job_id, url)
    assert status is not None and status.started_at is not None
    first_end = jobs.marks(first_path, "end")[0]
    assert status.started_at >= first_end and jobs.marks(second_path, "start")[0] >= first_end


async def test_dependent_starts_only_after_its_dependency_finished(url: str, tmp_path: Path) -> None:
    a_path, b_path = str(tmp_path / "a"), str(tmp_path / "b")
    queue = Queue("default", url)
    async with running_worker(url, concurrency=2):
        b_job = queue.job(jobs.slow, (b_path, 0, "b"), depends_on="job-a")
        await queue.enqueue_job(b_job)  # waits for a job that is not even enqueued yet
        await asyncio.sleep(0.3)
        a_job = await queue.enqueue(jobs.slow, a_path, 1, "a", job_id="job-a")
        assert await b_job.result(timeout=10) == "b"
        assert await a_job.result(timeout=1) == "a"
    assert jobs.marks(b_path, "start")[0] >= jobs.marks(a_path, "end")[0]
    status = await fetch_status(b_job.job_id, url)
    assert status is not None and status.attempts == 1, "waiting must not nak (that would count as a delivery)"


async def test_dependent_of_a_failed_job_fails_without_running(
    url: str, tmp_path: Path, raw_js: JetStreamContext,
) -> None:
    path = str(tmp_path / "c")
    queue = Queue("default", url)
    async with running_worker(url, concurrency=2):
        broken = await queue.enqueue(jobs.boom)
        dependent = await queue.enqueue(jobs.slow, path, 0, depends_on=broken)
        with pytest.raises(JobExecutionError, match=f"dependency {broken.job_id} failed"):
            await dependent.result(timeout=5)
        await asyncio.sleep(0.3)
        assert await stream_count(raw_js) == 0
    status = await fetch_status(dependent.job_id, url)
    assert status is not None and status.status == FAILED and status.attempts == 1
    assert jobs.marks(path) == []


@pytest.mark.slow
async def test_sigterm_finishes_running_jobs_and_returns_the_rest(
    url: str, spawn_worker: Spawn, tmp_path: Path, raw_js: JetStreamContext,
) -> None:
    paths = {name: str(tmp_path / name) for name in ("first", "waiting", "second", "queued")}
    queue = Queue("default", url)
    proc = spawn_worker(url, "-c", "2", "--grace", "10")
    first = await queue.enqueue(jobs.slow, paths["first"], 2, "first")
    waiting = await queue.enqueue(jobs.slow, paths["waiting"], 0, "waiting", depends_on=first)  # held, no slot
    second = await queue.enqueue(jobs.slow, paths["second"], 2, "second")
    queued = await queue.enqueue(jobs.slow, paths["queued"], 0, "queued")  # both slots busy: never fetched
    await eventually(lambda: jobs.marks(paths["first"], "start") and jobs.marks(paths["second"], "start"),
                     what="two jobs to start")
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert await asyncio.to_thread(proc.wait, 10) == 0
    assert time.monotonic() - sent < 5
    assert [len(jobs.marks(paths[name], "end")) for name in paths] == [1, 0, 1, 0]
    assert await stream_count(raw_js) == 2
    log = proc.log_path.read_text()  # type: ignore[attr-defined]
    assert "got SIGTERM: stopping" in log and f"job {second.job_id} finished in" in log
    async with running_worker(url, concurrency=2):
        assert [await job.result(timeout=5) for job in (first, waiting, second, queued)] == [
            "first", "waiting", "second", "queued"]
    assert [len(jobs.marks(paths[name], "start")) for name in paths] == [1, 1, 1, 1]


async def test_heartbeat_lists_the_worker_and_its_job_then_goes_away(url: str, tmp_path: Path) -> None:
    path = str(tmp_path / "marks")
    async with running_worker(url, ["alpha", "beta"], concurrency=3, heartbeat_s=0.2) as worker:
        job = await Queue("beta", url).enqueue(jobs.slow, path, 1)
        await eventually(lambda: jobs.marks(path, "start"), what="the job to start")
        await asyncio.sleep(0.5)
        (record,) = await list_workers(url)
        await job.result(timeout=5)
    assert record["worker_id"] == worker.worker_id and record["pid"] == os.getpid()
    assert record["queues"] == ["alpha", "beta"] and record["concurrency"] == 3
    assert record["current_jobs"] == [job.job_id]
    assert await list_workers(url) == []


async def test_process_pool_runs_plain_functions_in_another_process(url: str) -> None:
    async with running_worker(url, process_pool=True, concurrency=2):
        queue = Queue("default", url)
        pid = await (await queue.enqueue(jobs.getpid)).result(timeout=20)
        assert await (await queue.enqueue(jobs.square_async, 3)).result(timeout=5) == 9
        with pytest.raises(JobExecutionError, match="RuntimeError: from a child") as caught:
            await (await queue.enqueue(jobs.boom, "from a child")).result(timeout=20)
    assert isinstance(pid, int) and pid != os.getpid()
    assert caught.value.remote_traceback is not None and "in boom" in caught.value.remote_traceback


def _alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_process_pool_kills_an_overrunning_child(url: str, tmp_path: Path) -> None:
    path = str(tmp_path / "marks")
    async with running_worker(url, process_pool=True, concurrency=1):
        queue = Queue("default", url)
        job = await queue.enqueue(jobs.sleep_reporting_pid, path, 5, timeout=1)
        with pytest.raises(JobExecutionError, match="timeout of 1s; its process was killed"):
            await job.result(timeout=20)
        child = int(Path(path).read_text().split()[-1])
        await eventually(lambda: not _alive(child), timeout_s=5, what="the child to be killed")
        pid = await (await queue.enqueue(jobs.getpid)).result(timeout=20)
    assert pid not in (child, os.getpid())
    assert jobs.marks(path, "end") == []


@pytest.mark.parametrize(("func", "args", "message"), [
    (jobs.unpicklable_result, (), "cannot be pickled"),
    (jobs.big_result, (2_000_000,), "too large for the result store"),
])
async def test_a_result_that_cannot_be_stored_fails_the_job_saying_so(
    url: str, func: Callable[..., Any], args: tuple[Any, ...], message: str,
) -> None:
    async with running_worker(url):
        job = await Queue("default", url).enqueue(func, *args, max_retries=3)
        with pytest.raises(JobExecutionError, match=message):
            await job.result(timeout=5)
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.attempts == 1, "a result that cannot be stored is not retried"


async def test_worker_started_before_its_server_connects_once_it_is_up(
    nats_server_factory: Callable[..., NatsServer],
) -> None:
    server = nats_server_factory(start=False)
    worker = Worker("default", url=server.url, heartbeat_s=0.5)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.5)
    assert not task.done()
    server.start()
    try:
        job = await Queue("default", server.url).enqueue(jobs.add, 1, 2)
        assert await job.result(timeout=10) == 3
    finally:
        await worker.stop()
        await task
        await close_all()


async def test_request_stop_works_from_any_thread_and_signals_need_the_main_thread(url: str) -> None:
    worker = Worker("default", url=url)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: worker.started_at, what="the worker to start")
    assert await asyncio.to_thread(worker.install_signal_handlers) is False
    await asyncio.to_thread(worker.request_stop)
    await asyncio.wait_for(task, 5)
    with pytest.raises(NaqException, match="not running"):
        worker.conn  # noqa: B018 - the property raises


@pytest.mark.parametrize("options", [{"concurrency": 0}, {"heartbeat_s": 0}, {"ack_wait_s": -1}, {"queues": "a.b"}])
def test_invalid_worker_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Worker(**options)
