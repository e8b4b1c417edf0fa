"""The failed-jobs store against a real nats-server: final failures, rejected input, listing, requeue."""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path

import jobs
import pytest
from nats.js import JetStreamContext
from test_worker import running_worker, stream_count
from test_worker import url as url  # noqa: F401 - the `url` fixture, shared

from naq_ipy import Job, JobExecutionError, JobNotFoundError, Queue, SerializationError
from naq_ipy.client.job import read_header
from naq_ipy.status.results import FINISHED, QUEUED, REJECTED, fetch_status
from naq_ipy.wire.connection import connect
from naq_ipy.wire.settings import ConnectionSettings
from naq_ipy.worker.failed_store import list_failed, list_failed_sync, record_failed, requeue_failed


async def test_final_failure_is_listed_with_its_traceback_and_requeue_runs_it_again(url: str, tmp_path: Path) -> None:
    path = str(tmp_path / "marks")
    async with running_worker(url, concurrency=2):
        job = await Queue("default", url).enqueue(jobs.fail_times, path, 2, max_retries=1)
        with pytest.raises(JobExecutionError) as caught:
            await job.result(timeout=10)
        (entry,) = await list_failed(url)
        assert len(jobs.marks(path, "start")) == 2
        header = await requeue_failed(job.job_id, url)
        assert await list_failed(url) == []
        assert await job.result(timeout=10) == 3
    error = caught.value
    assert "ValueError: planned failure 2 of 2" in str(error)
    assert error.remote_traceback is not None and "in fail_times" in error.remote_traceback
    assert "Remote traceback:" in str(error) and "jobs.py" in str(error)
    assert (entry.job_id, entry.queue_name, entry.func_name) == (job.job_id, "default", "jobs.fail_times")
    assert entry.reason == "ValueError: planned failure 2 of 2" and abs(entry.failed_at - time.time()) < 30
    assert header["job_id"] == job.job_id and header["func_name"] == "jobs.fail_times"
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.status == FINISHED and status.attempts == 1


def _with_body(job: Job, body: bytes) -> bytes:
    """The job's wire bytes with the pickled call replaced by `body`."""
    data = job.serialize()
    _, old_body = read_header(data)
    return data[: len(data) - len(old_body)] + body


async def test_rejected_input_is_recorded_acked_and_the_worker_goes_on(
    url: str, raw_js: JetStreamContext,
) -> None:
    good = Job(function=jobs.add, args=(2, 3))
    truncated, wrong_body = Job(function=jobs.add, args=(1, 1)), Job(function=jobs.add, args=(1, 2))
    inputs = {
        "garbage": b"\x00\x01 definitely not a job",
        "plain pickle": pickle.dumps({"not": "a job"}),
        "truncated header": good.serialize()[:12],
        "truncated call": truncated.serialize()[:-3],
        "wrong call type": _with_body(wrong_body, pickle.dumps("a string, not (function, args, kwargs)")),
    }
    async with running_worker(url) as worker:
        for data in inputs.values():
            await raw_js.publish("naq.queue.default", data)
        await Queue("default", url).enqueue_job(good)
        assert await good.result(timeout=10) == 5
        failed = await list_failed(url)
        assert await stream_count(raw_js) == 0
    assert worker.failed == len(inputs)
    by_id = {entry.job_id: entry for entry in failed}
    assert len(failed) == len(inputs) and all(entry.queue_name == "default" for entry in failed)
    # named by their job-stream sequence (publish order); the store's own order depends on the handlers' race
    anonymous = sorted((e for e in failed if e.job_id.startswith("rejected-")), key=lambda e: int(e.job_id[9:]))
    assert [e.reason for e in anonymous][:2] == ["not a naq job: bad magic bytes"] * 2
    assert anonymous[2].reason.startswith("not a naq job: unreadable header")
    assert "cannot unpickle" in by_id[truncated.job_id].reason
    assert "cannot unpickle" in by_id[wrong_body.job_id].reason
    for job in (truncated, wrong_body):
        status = await fetch_status(job.job_id, url)
        assert status is not None and status.status == REJECTED and status.error == by_id[job.job_id].reason


async def test_listing_filters_by_queue_and_a_repeated_record_is_stored_once(url: str) -> None:
    assert await list_failed(url) == []
    conn = await connect(ConnectionSettings.resolve(url))
    try:
        for _ in range(2):  # a worker that crashed before its ack records the same delivery again
            await record_failed(conn, b"job bytes", queue_name="a", reason="Boom:\n  multi\nline", seq=7, job_id="j1")
        await record_failed(conn, b"other", queue_name="b", reason="x" * 2000, seq=8, func_name="mod.f")
    finally:
        await conn.nc.close()
    (only_a,) = await list_failed(url, queue="a")
    assert (only_a.job_id, only_a.reason, only_a.seq) == ("j1", "Boom: multi line", 1)
    (only_b,) = await list_failed(url, queue="b")
    assert only_b.job_id == "rejected-8" and only_b.func_name == "mod.f" and len(only_b.reason) == 500


async def test_requeue_refuses_unknown_ids_and_input_that_is_no_job(url: str) -> None:
    with pytest.raises(JobNotFoundError, match="no failed job 'nope'"):
        await requeue_failed("nope", url)
    conn = await connect(ConnectionSettings.resolve(url))
    try:
        await record_failed(conn, b"garbage", queue_name="default", reason="not a naq job", seq=3)
    finally:
        await conn.nc.close()
    with pytest.raises(SerializationError, match="not a naq job"):
        await requeue_failed("rejected-3", url)
    assert [e.job_id for e in await list_failed(url)] == ["rejected-3"]


async def test_requeue_marks_the_job_queued_before_a_worker_sees_it(url: str) -> None:
    job = Queue("default", url).job(jobs.add, (1, 2))
    conn = await connect(ConnectionSettings.resolve(url))
    try:
        await record_failed(conn, job.serialize(), queue_name="default", reason="RuntimeError: x", seq=1,
                            job_id=job.job_id, func_name=job.func_name)
    finally:
        await conn.nc.close()
    await requeue_failed(job.job_id, url)
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.status == QUEUED and status.func_name == "jobs.add"
    async with running_worker(url):
        assert await job.result(timeout=10) == 3


async def record_two_failures(url: str) -> list[Job]:
    """Record a failed job on `default` and then one on `mail`, as a worker would."""
    failed = [Queue(queue, url).job(jobs.add, (i, 1)) for i, queue in enumerate(("default", "mail"))]
    conn = await connect(ConnectionSettings.resolve(url))
    try:
        for seq, job in enumerate(failed, 1):
            await record_failed(conn, job.serialize(), queue_name=job.queue_name, reason=f"RuntimeError: {seq}",
                                seq=seq, job_id=job.job_id, func_name=job.func_name)
    finally:
        await conn.nc.close()
    return failed


def test_sync_twin_lists_from_plain_code(nats_url: str) -> None:
    assert list_failed_sync(nats_url) == []
    first, second = asyncio.run(record_two_failures(nats_url))
    listed = list_failed_sync(nats_url)
    assert [(e.job_id, e.queue_name, e.reason) for e in listed] == [
        (first.job_id, "default", "RuntimeError: 1"), (second.job_id, "mail", "RuntimeError: 2")]
    assert [e.job_id for e in list_failed_sync(nats_url, queue="mail")] == [second.job_id]
