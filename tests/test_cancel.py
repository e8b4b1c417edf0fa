"""Cancelling jobs against a real nats-server and real workers: queued, delayed, waiting and running jobs.

Thread-mode and coroutine jobs run in a Worker in the test's loop; process-mode jobs in its child
processes; the restart case uses worker processes (`naq worker`).
"""

from __future__ import annotations

import asyncio
import pickle
import random
from collections.abc import AsyncIterator
from pathlib import Path

import jobs
import pytest
from pids import alive, wait_gone
from polling import eventually, eventually_async
from test_worker import running_worker, spawn_worker, stream_count  # noqa: F401 - spawn_worker is a fixture

from naq_ipy import JobExecutionError, Queue, cancel
from naq_ipy.status import results
from naq_ipy.status.cancel import Outcome, job_ids, who
from naq_ipy.status.results import fetch_status, read_status, wait_for_end
from naq_ipy.wire.connection import close_all, get_connection

END_S = 20.0


@pytest.fixture
async def url(nats_url: str) -> AsyncIterator[str]:
    """The clean server's URL; the test loop's pooled connections are closed afterwards."""
    yield nats_url
    await close_all()


async def _status(job_id: str, url: str) -> results.JobStatus | None:
    return await fetch_status(job_id, url=url)


async def test_queued_job_cancelled_never_runs_when_a_worker_starts(url: str, tmp_path: Path) -> None:
    """Cancelled before any worker was up: `cancel requested`, shown `cancelled` meanwhile; the worker that
    comes later records it and drops the job; its side effect never happens."""
    queue = Queue(nats_url=url)
    evidence = tmp_path / "ran.txt"
    doomed = await queue.enqueue(jobs.touch, str(evidence))
    report = await cancel(doomed, url)
    assert report[doomed.job_id] is Outcome.REQUESTED
    status = await _status(doomed.job_id, url)
    assert status is not None and status.status == results.CANCELLED and status.cancelled_by == who()
    assert await read_status(await get_connection(url), doomed.job_id) is None  # no worker wrote it yet
    later = await queue.enqueue(jobs.touch, str(tmp_path / "later.txt"), "later")
    async with running_worker(url, concurrency=1) as worker:
        assert await later.result(timeout=END_S) == "later"
    assert not evidence.exists()
    with pytest.raises(JobExecutionError, match="cancelled"):
        await doomed.result(timeout=1)
    recorded = await read_status(await get_connection(url), doomed.job_id)
    assert recorded is not None and recorded.status == results.CANCELLED
    assert recorded.cancelled_by == who() and recorded.worker_id == worker.worker_id


async def test_a_worker_of_another_queue_records_the_cancel_at_once(url: str, tmp_path: Path) -> None:
    """Every worker watches the requests: a job queued where no worker serves is `cancelled` by the worker of
    another queue within the call, and the worker of its own queue, started later, drops it."""
    evidence = tmp_path / "ran.txt"
    doomed = await Queue("elsewhere", nats_url=url).enqueue(jobs.touch, str(evidence))
    async with running_worker(url, "default") as worker:
        assert await doomed.cancel() is Outcome.CANCELLED
        recorded = await read_status(await get_connection(url), doomed.job_id)
        assert recorded is not None and recorded.status == results.CANCELLED
        assert recorded.worker_id == worker.worker_id and recorded.cancelled_by == who()
    async with running_worker(url, "elsewhere") as own:
        await eventually(lambda: own.processed == 1, END_S, "the cancelled job to be dropped")
    assert not evidence.exists()


async def test_outcomes_already_finished_and_not_found(url: str) -> None:
    """Cancelling a finished job changes nothing and says so; an unknown id is `not found`; a second cancel too."""
    queue = Queue(nats_url=url)
    done = await queue.enqueue(jobs.add, 1, 2)
    async with running_worker(url, concurrency=1):
        assert await done.result(timeout=END_S) == 3
    report = await cancel([done, "no-such-job"], url)
    assert dict(report.outcomes) == {done.job_id: Outcome.ALREADY_FINISHED, "no-such-job": Outcome.NOT_FOUND}
    assert (await _status(done.job_id, url)).status == results.FINISHED  # type: ignore[union-attr]
    assert await done.result(timeout=1) == 3
    assert await _status("no-such-job", url) is None
    assert report.summary() == "1 already finished, 1 not found"


def test_job_ids_accepts_jobs_ids_and_lists() -> None:
    """Ids from a Job, an id, a list of both; duplicates once; anything else is a clear error."""
    job = Queue().job(jobs.add, (1, 2))
    assert job_ids([job, "abc", job.job_id]) == [job.job_id, "abc"]
    assert job_ids("abc") == ["abc"]
    with pytest.raises(Exception, match="cancel takes Jobs or job ids"):
        job_ids([3])
    with pytest.raises(Exception, match="invalid job id"):
        job_ids("has space")


async def test_delayed_job_cancelled_leaves_the_schedule_store(url: str) -> None:
    """`enqueue_in`: cancelled at once, its schedule entry deleted."""
    queue = Queue(nats_url=url)
    later = await queue.enqueue_in(3600, jobs.add, 1, 2)
    assert (await cancel([later], url))[later.job_id] is Outcome.REQUESTED  # no worker runs
    assert (await _status(later.job_id, url)).status == results.CANCELLED  # type: ignore[union-attr]
    assert [r.job_id for r in await queue.list_scheduled_jobs()] == []
    soon = await queue.enqueue_in(3600, jobs.add, 1, 2)
    async with running_worker(url, concurrency=1):
        assert (await cancel([soon], url))[soon.job_id] is Outcome.CANCELLED
        assert (await read_status(await get_connection(url), later.job_id)).status == results.CANCELLED  # type: ignore[union-attr]
    assert [r.job_id for r in await queue.list_scheduled_jobs()] == []


async def test_running_busy_thread_job_stops_and_the_slot_runs_the_next(url: str, tmp_path: Path) -> None:
    """A pure-Python loop in a thread is interrupted; the one slot then runs the next job; no retry."""
    queue = Queue(nats_url=url)
    evidence = str(tmp_path / "spin.txt")
    spinning = await queue.enqueue(jobs.busy_loop, evidence, max_retries=3)
    following = await queue.enqueue(jobs.add, 2, 3)
    async with running_worker(url, concurrency=1) as worker:
        await eventually(lambda: jobs.marks(evidence, "start"), END_S, "the loop to start")
        assert await spinning.cancel() is Outcome.CANCELLED
        ended = await wait_for_end(spinning.job_id, END_S, url)
        assert ended.status == results.CANCELLED and ended.cancelled_by == who()
        assert await following.result(timeout=END_S) == 5
        await eventually(lambda: worker.free_slots == 1, END_S, "the slot to be free")
    assert jobs.marks(evidence, "start") and not jobs.marks(evidence, "end")
    assert len(jobs.marks(evidence, "start")) == 1  # not retried


async def test_running_coroutine_job_is_cancelled(url: str, tmp_path: Path) -> None:
    """A coroutine job's task is cancelled: it never reaches its end."""
    queue = Queue(nats_url=url)
    evidence = str(tmp_path / "async.txt")
    sleeper = await queue.enqueue(jobs.slow_async, evidence, 60)
    async with running_worker(url, concurrency=1):
        await eventually(lambda: jobs.marks(evidence, "start"), END_S, "the coroutine to start")
        assert await sleeper.cancel() is Outcome.CANCELLED
        assert (await wait_for_end(sleeper.job_id, END_S, url)).status == results.CANCELLED
        assert await (await queue.enqueue(jobs.square_async, 4)).result(timeout=END_S) == 16
    assert not jobs.marks(evidence, "end")


@pytest.mark.slow
async def test_running_process_job_child_is_killed_and_replaced(url: str, tmp_path: Path) -> None:
    """Process mode: the sleeping child is gone, the next job runs in a new child."""
    queue = Queue(nats_url=url)
    evidence = str(tmp_path / "child.txt")
    sleeper = await queue.enqueue(jobs.sleep_reporting_pid, evidence, 60)
    async with running_worker(url, concurrency=1, process_pool=True):
        lines = await eventually(lambda: Path(evidence).exists() and Path(evidence).read_text(), END_S,
                                 "the child to start")
        pid = int(lines.split()[-1])
        assert alive(pid)
        assert (await cancel(sleeper.job_id, url))[sleeper.job_id] is Outcome.CANCELLED
        assert (await wait_for_end(sleeper.job_id, END_S, url)).status == results.CANCELLED
        assert await asyncio.to_thread(wait_gone, [pid]) == []
        next_pid = await (await queue.enqueue(jobs.getpid)).result(timeout=END_S)
        assert next_pid != pid
    assert not jobs.marks(evidence, "end")


@pytest.mark.slow
async def test_dependents_of_a_cancelled_job_end_naming_it(url: str, tmp_path: Path) -> None:
    """A job waiting for a cancelled dependency fails, the reason naming it; a waiting job itself can be cancelled."""
    queue = Queue(nats_url=url)
    evidence = str(tmp_path / "dep.txt")
    first = await queue.enqueue(jobs.slow, evidence, 3)  # its thread sits in time.sleep: a stop waits for it
    dependent = await queue.enqueue(jobs.touch, str(tmp_path / "dependent.txt"), depends_on=first)
    waiting = await queue.enqueue(jobs.touch, str(tmp_path / "waiting.txt"), depends_on=dependent)
    async with running_worker(url, concurrency=2) as worker:
        await eventually(lambda: jobs.marks(evidence, "start"), END_S, "the first job to start")
        await eventually(lambda: len(worker.heartbeat()["waiting_jobs"]) == 2, END_S, "both to wait")
        report = await cancel([waiting], url)
        assert report[waiting.job_id] is Outcome.CANCELLED
        await eventually(lambda: not worker.heartbeat()["waiting_jobs"][1:], END_S, "the cancelled one to go")
        assert (await cancel(first, url))[first.job_id] is Outcome.CANCELLED
        assert (await _status(first.job_id, url)).status == results.STOPPING  # type: ignore[union-attr]
        ended = await wait_for_end(dependent.job_id, END_S, url)
        assert ended.status == results.FAILED and ended.error == f"dependency {first.job_id} cancelled"
        assert (await wait_for_end(first.job_id, END_S, url)).status == results.CANCELLED
    assert (await _status(waiting.job_id, url)).status == results.CANCELLED  # type: ignore[union-attr]
    assert not (tmp_path / "dependent.txt").exists() and not (tmp_path / "waiting.txt").exists()
    assert not jobs.marks(evidence, "end")  # interrupted as soon as its sleep returned


@pytest.mark.slow
async def test_thousand_queued_jobs_cancelled_in_one_call(url: str, tmp_path: Path) -> None:
    """1,000 queued jobs: one call cancels them all; a worker started later runs none of them."""
    queue = Queue(nats_url=url)
    evidence = str(tmp_path / "many.txt")
    fanned = await queue.enqueue_many([(jobs.touch, (evidence,)) for _ in range(1000)])
    report = await cancel(fanned, url)
    assert report.summary() == "1,000 cancel requested"  # no worker runs
    statuses = await asyncio.gather(*(_status(job.job_id, url) for job in fanned))
    assert {s.status for s in statuses if s is not None} == {results.CANCELLED} and None not in statuses
    marker = await queue.enqueue(jobs.add, 1, 1)
    conn = await get_connection(url)

    async def recorded() -> set[str | None]:
        return {r.status if r else None for r in await asyncio.gather(*(read_status(conn, j.job_id) for j in fanned))}

    async with running_worker(url, concurrency=10):
        assert await marker.result(timeout=60) == 2
        await eventually_async(recorded, {results.CANCELLED}, "every cancel recorded by the worker", 60)
        await eventually_async(lambda: stream_count(conn.js), 0, "the cancelled jobs dropped", 60)
    assert not Path(evidence).exists()
    assert (await cancel(fanned, url)).summary() == "1,000 cancelled"


@pytest.mark.slow
async def test_cancel_racing_the_finish_has_one_answer(url: str, tmp_path: Path) -> None:
    """Many times: a cancel sent as the job ends leaves `finished` + result or `cancelled` without one."""
    queue = Queue(nats_url=url)
    rng = random.Random(14)
    seen: set[str] = set()
    async with running_worker(url, concurrency=4):
        for _ in range(60):
            job = await queue.enqueue(jobs.slow, str(tmp_path / "race.txt"), rng.uniform(0, 0.01), "value")
            await asyncio.sleep(rng.uniform(0, 0.02))
            said = await job.cancel()
            ended = await wait_for_end(job.job_id, END_S, url)
            seen.add(ended.status)
            if ended.status == results.FINISHED:
                assert said is Outcome.ALREADY_FINISHED
                assert await job.result(timeout=1) == "value"
            else:
                assert said is Outcome.CANCELLED and ended.status == results.CANCELLED
                assert ended.result_inline is None
                with pytest.raises(JobExecutionError, match="cancelled"):
                    await job.result(timeout=1)
            await asyncio.sleep(0.05)  # a late write would show in the next read
            assert (await _status(job.job_id, url)).status == ended.status  # type: ignore[union-attr]
    assert seen <= {results.FINISHED, results.CANCELLED}


@pytest.mark.slow
async def test_cancel_while_the_worker_is_down_holds_after_restart(url: str, tmp_path: Path, spawn_worker) -> None:  # noqa: F811
    """A running job whose worker died is cancelled; the worker that gets it back drops it without running it."""
    queue = Queue(nats_url=url)
    evidence = str(tmp_path / "restart.txt")
    job = await queue.enqueue(jobs.slow, evidence, 60)
    first = spawn_worker(url, "--concurrency", "1", "--ack-wait", "1")
    await eventually(lambda: jobs.marks(evidence, "start"), END_S, "the job to start")
    first.kill()
    first.wait(10)
    assert (await cancel(job, url))[job.job_id] is Outcome.REQUESTED  # no worker alive records it
    assert (await _status(job.job_id, url)).status == results.STOPPING  # type: ignore[union-attr]
    spawn_worker(url, "--concurrency", "1")
    assert (await wait_for_end(job.job_id, END_S, url)).status == results.CANCELLED
    assert len(jobs.marks(evidence, "start")) == 1


async def test_a_retrying_job_cancelled_is_not_run_again(url: str, tmp_path: Path) -> None:
    """Between attempts (`retrying`, its message delayed): cancelled at once; the redelivery is dropped."""
    queue = Queue(nats_url=url)
    evidence = str(tmp_path / "retry.txt")
    flaky = await queue.enqueue(jobs.fail_times, evidence, 5, max_retries=5, retry_delay=1)
    async with running_worker(url, concurrency=1) as worker:
        await eventually(lambda: jobs.marks(evidence, "start"), END_S, "the first attempt")

        async def retrying() -> bool:
            status = await _status(flaky.job_id, url)
            return status is not None and status.status == results.RETRYING

        while not await retrying():
            await asyncio.sleep(0.02)
        assert (await cancel(flaky, url))[flaky.job_id] is Outcome.CANCELLED
        await eventually(lambda: worker.processed == 1, END_S, "the redelivery to be dropped")
    assert len(jobs.marks(evidence, "start")) == 1
    assert (await _status(flaky.job_id, url)).status == results.CANCELLED  # type: ignore[union-attr]


@pytest.mark.slow
async def test_the_cancel_reaches_a_worker_on_another_cluster_node(nats_cluster: list[str], tmp_path: Path) -> None:
    """Worker connected to one node, cancel sent through another: the running job stops."""
    evidence = str(tmp_path / "spin.txt")
    try:
        spinning = await Queue(nats_url=nats_cluster[0]).enqueue(jobs.busy_loop, evidence)
        async with running_worker(nats_cluster[0], concurrency=1):
            await eventually(lambda: jobs.marks(evidence, "start"), END_S, "the loop to start")
            assert (await cancel(spinning.job_id, nats_cluster[2]))[spinning.job_id] is Outcome.CANCELLED
            assert (await wait_for_end(spinning.job_id, END_S, nats_cluster[2])).status == results.CANCELLED
        assert not jobs.marks(evidence, "end")
    finally:
        await close_all()


async def test_a_job_id_used_again_after_its_end_runs_again(url: str, tmp_path: Path) -> None:
    """The revision-checked `running` write does not mistake an old outcome of the same id for a cancel."""
    from naq_ipy.wire.connection import get_connection, publish
    from naq_ipy.wire.names import queue_subject

    queue = Queue(nats_url=url)
    evidence = str(tmp_path / "again.txt")
    job = queue.job(jobs.touch, (evidence, "v"), job_id="same-id")
    async with running_worker(url, concurrency=1):
        await queue.enqueue_job(job)
        assert await job.result(timeout=END_S) == "v"
        # past the duplicate window a second enqueue of the id is stored: publish it under another msg id
        await publish(await get_connection(url), queue_subject("default"), job.serialize(), msg_id="same-id:again")
        await eventually(lambda: len(jobs.marks(evidence, "ran")) == 2, END_S, "the second run")


@pytest.mark.slow
async def test_a_stop_after_the_call_ended_leaves_the_reused_child_alone() -> None:
    """Process mode: a cancel notice arriving after the job's call returned must not kill the slot's child,
    which already runs the next job."""
    from naq_ipy.client.job import Job
    from naq_ipy.worker.executor import Executor
    from naq_ipy.worker.stopping import StopHandle

    executor = Executor(1, process_pool=True)
    try:
        first, stop = Job(function=jobs.getpid), StopHandle()
        pid = pickle.loads((await executor.run(first, first.serialize(), stop)).data)  # a child's PickledValue
        stop.stop()
        second = Job(function=jobs.getpid)
        assert pickle.loads((await executor.run(second, second.serialize())).data) == pid and alive(pid)
    finally:
        executor.shutdown()
