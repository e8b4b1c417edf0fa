"""The README's delivery promises, each broken on purpose at one point by a hook (no sleeps and hopes).

Each test is named after the promise it guards and fails when the code breaks it: the worker acks
a job only after its outcome is written; a redelivered job whose status ended is not run again; a
long job is kept alive past its ack wait; a result over the inline limit is stored; a scheduler
advances an entry only if nobody changed it since it was read. The hooks patch one function in
this process (a worker or scheduler runs in the test's loop) and raise, pause or interleave there.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cloudpickle
import jobs
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from polling import eventually, eventually_async
from test_scheduler import CAUGHT_UP, QUEUE, caught_up, quarter_after, queued_runs, running, store
from test_worker import running_worker, stream_count, url  # noqa: F401 - url is a fixture

import naq_ipy.schedules.scheduler as scheduler_module
from naq_ipy import Queue
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.status import results
from naq_ipy.status.results import FINISHED, INLINE_RESULT_MAX, fetch_status
from naq_ipy.wire.names import RESULTS_KV_NAME

Snapshot = Callable[..., Awaitable[dict[str, tuple[bytes, int]]]]
ACK_WAIT_S = 1.0  # the consumer's ack wait in these tests: a redelivery comes this soon


class Crash(Exception):
    """What a hook raises where the worker would have died."""


async def consumer_deliveries(raw_js: JetStreamContext, queue: str = "default") -> int:
    """How many messages the queue's consumer has delivered (first deliveries and redeliveries)."""
    info = await raw_js.consumer_info("naq_jobs", f"naq-worker-{queue}")
    return info.delivered.consumer_seq


async def test_a_job_is_acked_only_after_its_outcome_is_recorded(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    # the first outcome write dies: the job's message must still be unacked, so it comes back and the
    # second run records the outcome (a worker that acked first would have lost the job)
    real_write, calls = results.write_outcome, []

    async def write_outcome_dying_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise Crash("died before the outcome was written")
        return await real_write(*args, **kwargs)

    monkeypatch.setattr(results, "write_outcome", write_outcome_dying_once)
    path = str(tmp_path / "marks")
    async with running_worker(url, ack_wait_s=ACK_WAIT_S):
        job = await Queue("default", url).enqueue(jobs.slow, path, 0, "done")
        await eventually(lambda: len(calls) == 2, timeout_s=20,
                         what="the job whose outcome write died to come back (a message acked first is lost)")
        assert await job.result(timeout=20) == "done"
    assert len(calls) == 2 and len(jobs.marks(path, "start")) == 2
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.status == FINISHED and status.attempts == 2


async def test_a_redelivered_job_whose_status_ended_is_not_run_again(
    url: str, tmp_path: Path, raw_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    # the outcome is written, then the ack is lost (the worker dies between the two): the server
    # redelivers the message, and the worker must ack it without running the job a second time
    real_ack, acks = Msg.ack, []

    async def ack_lost_once(msg: Msg) -> None:
        acks.append(msg.metadata.num_delivered)
        if len(acks) == 1:
            raise Crash("died between the outcome write and the ack")
        await real_ack(msg)

    monkeypatch.setattr(Msg, "ack", ack_lost_once)
    path = str(tmp_path / "marks")
    async with running_worker(url, ack_wait_s=ACK_WAIT_S):
        job = await Queue("default", url).enqueue(jobs.slow, path, 0, "once")
        assert await job.result(timeout=20) == "once"
        await eventually(lambda: len(acks) == 2, timeout_s=20, what="the redelivery to be acked")
        await eventually_async(lambda: stream_count(raw_js), 0, "the message to leave the stream")
    assert acks == [1, 2], "the ack of the first delivery was lost, the second acked"
    assert len(jobs.marks(path, "start")) == 1, "the redelivered job ran again"
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.status == FINISHED and status.attempts == 1


async def test_a_job_longer_than_the_ack_wait_is_kept_alive_and_runs_once(
    url: str, tmp_path: Path, raw_js: JetStreamContext  # noqa: F811
) -> None:
    # the job lasts three ack waits: without progress acks the server redelivers it meanwhile
    path = str(tmp_path / "marks")
    async with running_worker(url, concurrency=2, ack_wait_s=ACK_WAIT_S):
        job = await Queue("default", url).enqueue(jobs.slow, path, 3 * ACK_WAIT_S, "long")
        assert await job.result(timeout=20) == "long"
        assert await consumer_deliveries(raw_js) == 1, "the running job's message was delivered again"
    assert len(jobs.marks(path, "start")) == 1
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.attempts == 1


def pickled_size(size: int) -> int:
    """Bytes of `jobs.big_result(size)`'s value once pickled the way the worker pickles results."""
    return len(cloudpickle.dumps(jobs.big_result(size), protocol=5))


def payload_of_pickled_size(target: int) -> int:
    """The `size` whose `big_result` pickles to exactly `target` bytes."""
    size = target - (pickled_size(0) + 8)
    while pickled_size(size) < target:
        size += 1
    assert pickled_size(size) == target
    return size


@pytest.mark.parametrize(("over", "inline"), [(0, True), (1, False), (200_000, False)])
async def test_a_result_over_the_inline_limit_is_stored_and_read_back(
    url: str, kv_snapshot: Snapshot, over: int, inline: bool  # noqa: F811
) -> None:
    size = payload_of_pickled_size(INLINE_RESULT_MAX + over) if over < 1000 else over
    async with running_worker(url):
        job = await Queue("default", url).enqueue(jobs.big_result, size)
        assert await job.result(timeout=20) == jobs.big_result(size)
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.status == FINISHED
    stored = await kv_snapshot(RESULTS_KV_NAME)
    if inline:
        assert status.result_inline is not None and job.job_id not in stored
        assert len(base64.b64decode(status.result_inline)) == INLINE_RESULT_MAX
    else:
        assert status.result_inline is None
        assert job.job_id in stored and len(stored[job.job_id][0]) > INLINE_RESULT_MAX


async def test_a_scheduler_advances_an_entry_only_if_nobody_changed_it_since_it_fired(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # between the scheduler's publish of a run and its advance of the entry, a user pauses it: the
    # advance must lose its revision check and leave the pause alone (a blind put would undo it, and
    # with several schedulers the same blind put lets a fire happen twice)
    manager, real_publish = ScheduledJobManager(nats_url), scheduler_module.publish_run
    paused_revision: list[int] = []

    async def publish_then_pause(conn: Any, record: Any, *args: Any, **kwargs: Any) -> Any:
        ack = await real_publish(conn, record, *args, **kwargs)
        if record.key == "entry" and not paused_revision:
            await Queue(QUEUE, nats_url).pause_scheduled_job("entry")
            paused_revision.append((await manager.get("entry")).revision)
        return ack

    monkeypatch.setattr(scheduler_module, "publish_run", publish_then_pause)
    start = quarter_after(0.5)
    async with running(nats_url):
        await store(nats_url, "entry", start, interval_s=60.0)
        await eventually(lambda: paused_revision, what="the fire and the pause")
        await caught_up(nats_url)  # the entry's advance is over
    after = await manager.get("entry")
    assert paused_revision and after.revision == paused_revision[0], "the scheduler overwrote a change"
    assert after.status == "paused" and after.run_count == 0
    assert [run.schedule_key for run in await queued_runs(nats_url, skip_key=CAUGHT_UP)] == ["entry"]
