"""Data-sized jobs: arguments and results above the payload threshold go through the Object Store.

Real server, real worker processes (or a Worker in the test's loop); the store is read back raw.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import time
from pathlib import Path

import nats.js.errors
import numpy as np
import payload_jobs
import pytest
import test_worker
from IPython.core.error import UsageError
from magic_shell import RaisingShell, schedules
from nats.js import JetStreamContext, api
from polling import eventually, eventually_async
from test_worker import Spawn, running_worker

from naq_ipy import Queue, RefusedError, SerializationError
from naq_ipy.client.job import read_header
from naq_ipy.client.offload import Packer
from naq_ipy.schedules.scheduler import run_now
from naq_ipy.status import results
from naq_ipy.status.payload_sweep import (
    RECENT_UPLOAD_S,
    drop_payloads,
    job_payload_names,
    sweep_forever,
    sweep_payloads,
)
from naq_ipy.status.results import fetch_status
from naq_ipy.wire import payloads
from naq_ipy.wire.connection import get_connection
from naq_ipy.wire.payloads import PayloadRef
from naq_ipy.wire.settings import ConnectionSettings
from naq_ipy.wire.signing import BAD_SIGNATURE, refusal, signed_headers

MB = 1_000_000
HOUR = 3600.0

url = test_worker.url  # fixtures shared with the worker tests: a clean server; worker processes
spawn_worker = test_worker.spawn_worker


async def objects(url: str) -> dict[str, dict[str, object]]:
    """Live objects of the payload store, by name."""
    return await payloads.list_objects(await get_connection(url))


async def chunk_messages(raw_js: JetStreamContext) -> int:
    """Messages in the payload bucket's stream (chunks and metas)."""
    try:
        return (await raw_js.stream_info(payloads.STREAM_NAME)).state.messages
    except nats.js.errors.NotFoundError:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["numpy", "pandas", "bytes"])
async def test_a_50_mb_argument_and_result_round_trip_through_a_worker_process(
    url: str, spawn_worker: Spawn, kind: str,
) -> None:
    if kind == "numpy":
        value = np.random.default_rng(1).random(50 * MB // 8)
    elif kind == "pandas":
        pd = pytest.importorskip("pandas")
        value = pd.DataFrame({"a": np.arange(25 * MB // 8, dtype="f8"), "b": np.ones(25 * MB // 8)})
    else:
        value = np.random.default_rng(2).bytes(50 * MB)
    spawn_worker(url)
    job = await Queue("default", url).enqueue(payload_jobs.doubled, value)
    back = await job.result(timeout=60)
    expected = value * 2
    if kind == "pandas":
        assert back.equals(expected)
    elif kind == "numpy":
        assert np.array_equal(back, expected)
    else:
        assert back == expected
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.status == results.FINISHED
    assert status.args_bytes is not None and status.args_bytes >= 50 * MB
    assert status.result_bytes is not None and status.result_bytes >= 50 * MB


async def test_below_the_threshold_nothing_changes(url: str, raw_js: JetStreamContext) -> None:
    async with running_worker(url):
        job = await Queue("default", url).enqueue(payload_jobs.total, np.ones(1000))
        assert await job.result(timeout=10) == 1000.0
    assert await chunk_messages(raw_js) == 0
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.args_bytes is None and status.result_bytes is None


async def test_a_fan_out_stores_the_shared_value_once_and_each_process_reads_it_once(
    url: str, raw_js: JetStreamContext, tmp_path: Path,
) -> None:
    shared = np.random.default_rng(3).random(2 * MB)  # 16 MB
    path = str(tmp_path / "readers")
    queue = Queue("default", url)
    fanned = await queue.enqueue_many([(payload_jobs.total, (shared, i)) for i in range(20)])
    more = await queue.enqueue_many([(payload_jobs.reader_pid, (shared, path)) for _ in range(5)])
    stored = await objects(url)
    assert list(stored) == [payloads.NAME_PREFIX + sha(shared)]
    assert (await raw_js.stream_info(payloads.STREAM_NAME)).state.bytes < shared.nbytes * 1.01
    async with running_worker(url, concurrency=4):
        totals = [await job.result(timeout=30) for job in fanned]
        [await job.result(timeout=30) for job in more]
    assert totals == pytest.approx([float(shared.sum()) + i for i in range(20)])
    addresses = {line.split()[1] for line in Path(path).read_text().splitlines()}
    assert len(addresses) == 1, "every job of the worker process should share the one cached copy"


async def test_a_value_over_the_cap_is_refused_before_anything_is_written(
    url: str, raw_js: JetStreamContext, stream_msgs,  # noqa: ANN001
) -> None:
    settings = ConnectionSettings.resolve(url, payload_max_bytes=10 * MB)
    queue = Queue("default", settings)
    with pytest.raises(SerializationError, match=r"^the call of job .* is 16 MB \(16,000,\d+ bytes\), over the "
                                                 r"payload cap of 10 MB \(NAQ_PAYLOAD_MAX\)$"):
        await queue.enqueue(payload_jobs.total, np.ones(2 * MB))
    with pytest.raises(SerializationError, match="over the payload cap"):
        await queue.enqueue_many([(payload_jobs.total, (np.ones(10),)), (payload_jobs.total, (np.ones(2 * MB),))])
    assert await stream_msgs() == []
    assert await chunk_messages(raw_js) == 0


async def test_a_full_store_refuses_and_leaves_no_partial_object(
    url: str, raw_js: JetStreamContext, stream_msgs,  # noqa: ANN001
) -> None:
    await raw_js.create_object_store("naq_payloads", config=api.ObjectStoreConfig(max_bytes=5 * MB))
    with pytest.raises(RefusedError, match="payload"):
        await Queue("default", url).enqueue(payload_jobs.total, np.ones(2 * MB))
    assert await stream_msgs() == []
    assert await chunk_messages(raw_js) == 0
    assert await objects(url) == {}


@pytest.mark.slow
async def test_a_worker_killed_while_reading_a_payload_leaves_the_job_to_another(
    url: str, spawn_worker: Spawn, raw_js: JetStreamContext,
) -> None:
    value = np.random.default_rng(4).random(40 * MB)  # 320 MB: its read takes long enough to be caught
    first = spawn_worker(url, "--ack-wait", "2")
    await eventually(lambda: first.log_path.read_text().count("started") or first.poll() is not None,
                     what="the first worker to start")
    job = await Queue("default", url).enqueue(payload_jobs.total, value)

    async def reading() -> bool:
        return (await raw_js.stream_info(payloads.STREAM_NAME)).state.consumer_count > 0

    deadline = time.monotonic() + 20
    while not await reading():
        assert time.monotonic() < deadline, "the worker never started reading the payload"
        await asyncio.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    assert await fetch_status(job.job_id, url) is None, "the job should not have run in the killed worker"
    async with running_worker(url):
        assert await job.result(timeout=60) == pytest.approx(float(value.sum()))
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.status == results.FINISHED and status.attempts == 2


async def test_a_corrupted_object_is_refused(url: str) -> None:
    good, bad = np.ones(MB), np.zeros(MB)
    conn = await get_connection(url)
    name = payloads.NAME_PREFIX + sha(good)
    await payloads.store(conn, PayloadRef(name, good.nbytes), memoryview(bad).cast("B"), HOUR)  # a wrong body
    async with running_worker(url):
        job = await Queue("default", url).enqueue(payload_jobs.total, good)
        status = await eventually_ended(job.job_id, url)
    assert status.status == results.REJECTED
    assert status.error is not None and f"payload {name} is corrupt" in status.error


async def eventually_ended(job_id: str, url: str) -> results.JobStatus:
    """The job's status once it ended."""
    return await results.wait_for_end(job_id, 30, url)


def test_the_digest_is_signed_so_a_swapped_payload_is_refused() -> None:
    settings = ConnectionSettings.resolve("nats://127.0.0.1:1", signing_key="k1")
    packed_job = Queue("default", settings).job(payload_jobs.total, (np.ones(MB),))
    data = packed_job.serialize(Packer(settings))
    header, _ = read_header(data)
    assert header["payload"]["buffers"][0][0].startswith("sha256-")
    headers = signed_headers(settings, data, "default")
    assert refusal(data, headers, settings, "default") is None
    swapped = data.replace(header["payload"]["buffers"][0][0].encode(), b"sha256-" + b"0" * 64)
    assert swapped != data and refusal(swapped, headers, settings, "default") == BAD_SIGNATURE


async def test_payloads_of_finished_jobs_are_gone_after_their_ttl(url: str) -> None:
    async with running_worker(url):
        job = await Queue("default", url).enqueue(payload_jobs.ones, MB, result_ttl=60)
        argument = await Queue("default", url).enqueue(payload_jobs.total, np.full(MB, 2.0), result_ttl=60)
        assert (await job.result(timeout=10)).shape == (MB,)
        assert await argument.result(timeout=10) == 2 * MB
    conn = await get_connection(url)
    assert len(await objects(url)) == 2
    assert await sweep_payloads(conn) == [], "nothing is past its keep-until yet"
    gone = await sweep_payloads(conn, now=time.time() + 61)
    assert len(gone) == 1, "the result's TTL has passed; the argument waits for its hour"
    assert len(await sweep_payloads(conn, now=time.time() + HOUR + 1)) == 1
    assert await objects(url) == {}


@pytest.mark.slow
async def test_a_schedule_with_a_large_captured_value_still_fires_after_a_day_of_sweeps(url: str) -> None:
    value = np.random.default_rng(5).random(MB)
    queue = Queue("default", url)
    await queue.schedule(payload_jobs.total, value, interval=HOUR, name="daily-big")
    waiting = await queue.enqueue_in(2 * HOUR, payload_jobs.total, value, 1)
    conn = await get_connection(url)
    start = time.time()
    for hour in range(1, 25):
        assert await sweep_payloads(conn, now=start + hour * HOUR) == []
    assert len(await objects(url)) == 1
    run_id = await run_now("daily-big", url)
    async with running_worker(url):
        assert await eventually_ended(run_id, url)
        assert await fetch_status(run_id, url) is not None
        assert await results.fetch_result(run_id, 10, url) == pytest.approx(float(value.sum()))
    await queue.cancel_scheduled_job("daily-big")
    await queue.cancel_scheduled_job(waiting.job_id)
    assert await sweep_payloads(conn, now=start + 25 * HOUR) != []
    assert await objects(url) == {}


async def test_purge_drops_the_payloads_only_the_purged_jobs_used(url: str) -> None:
    kept, dropped = np.ones(MB), np.zeros(MB)
    await Queue("other", url).enqueue(payload_jobs.total, kept)
    purged = Queue("default", url)
    await purged.enqueue_many([(payload_jobs.total, (dropped, i)) for i in range(3)])
    await purged.enqueue(payload_jobs.total, kept)
    conn = await get_connection(url)
    assert len(await objects(url)) == 2
    assert await purged.purge() == 4
    assert len(await objects(url)) == 2, "uploads this recent are spared: a new job may be on its way"
    later = time.time() + RECENT_UPLOAD_S + 1
    assert await drop_payloads(conn, now=later) == [payloads.NAME_PREFIX + sha(dropped)]
    assert list(await objects(url)) == [payloads.NAME_PREFIX + sha(kept)], "the other queue's job still needs it"


async def test_drop_payloads_of_cancelled_jobs_takes_only_theirs(url: str, stream_msgs) -> None:  # noqa: ANN001
    first, second = np.ones(MB), np.zeros(MB)
    for value in (first, second):
        await Queue("default", url).enqueue(payload_jobs.total, value)
    datas = [msg.data or b"" for msg in await stream_msgs()]
    assert [job_payload_names(data) for data in datas] == [{payloads.NAME_PREFIX + sha(v)} for v in (first, second)]
    await Queue("default", url).purge()
    later = time.time() + RECENT_UPLOAD_S + 1
    conn = await get_connection(url)
    assert await drop_payloads(conn, datas[:1], now=later) == [payloads.NAME_PREFIX + sha(first)]
    assert list(await objects(url)) == [payloads.NAME_PREFIX + sha(second)]


def sha(array: np.ndarray) -> str:
    """Hex SHA-256 of an array's memory."""
    return hashlib.sha256(array.data).hexdigest()


@pytest.mark.slow
async def test_a_process_pool_worker_reads_the_payload_in_its_child(url: str) -> None:
    value = np.random.default_rng(6).random(MB)
    async with running_worker(url, process_pool=True):
        job = await Queue("default", url).enqueue(payload_jobs.doubled, value, max_retries=1)
        assert np.array_equal(await job.result(timeout=60), value * 2)
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.attempts == 1 and status.result_bytes == value.nbytes


@pytest.fixture
def capped_at_10_mb(monkeypatch: pytest.MonkeyPatch) -> None:
    """Payloads above 10 MB are refused (set before the shell loads naq_ipy)."""
    monkeypatch.setenv("NAQ_PAYLOAD_MAX", str(10 * MB))


@pytest.mark.slow
def test_the_magics_pass_a_large_value_and_refuse_one_over_the_cap(
    capped_at_10_mb: None, ip: RaisingShell, nats_url: str, spawn_worker: Spawn,
) -> None:
    spawn_worker(nats_url)
    ip.run_cell("import numpy as np, payload_jobs\nbig = np.random.default_rng(7).random(1_000_000)")
    total = ip.run_line_magic("naq_enqueue", "--wait 30 payload_jobs.total(big)")
    assert total == pytest.approx(float(ip.user_ns["big"].sum()))
    assert re.search(r"payload store +8\.0 MB", repr(ip.run_line_magic("naq", "status")))
    with pytest.raises(UsageError, match=r"is 16 MB \(16,000,\d+ bytes\), over the payload cap of 10 MB"):
        ip.run_line_magic("naq_enqueue", "payload_jobs.total(np.ones(2_000_000))")


async def test_a_result_the_full_store_refuses_fails_the_job_once(url: str, raw_js: JetStreamContext) -> None:
    await raw_js.create_object_store("naq_payloads", config=api.ObjectStoreConfig(max_bytes=5 * MB))
    async with running_worker(url):
        job = await Queue("default", url).enqueue(payload_jobs.ones, MB, max_retries=2)
        status = await eventually_ended(job.job_id, url)
    assert status.status == results.FAILED and status.attempts == 1
    assert status.error is not None and status.error.startswith("RefusedError: the payload store naq_payloads refused")
    assert await chunk_messages(raw_js) == 0


async def test_chunks_of_a_writer_that_died_are_invisible_and_swept_after_an_hour(
    url: str, raw_js: JetStreamContext,
) -> None:
    conn = await get_connection(url)
    await payloads.ensure_bucket(conn)
    await raw_js.publish("$O.naq_payloads.C.deadwriter", b"x" * 1000)  # chunks, and no meta: the writer died
    assert await objects(url) == {}
    assert await sweep_payloads(conn) == [] and await chunk_messages(raw_js) == 1, "a writer may still be busy"
    await sweep_payloads(conn, now=time.time() + HOUR + 1)
    assert await chunk_messages(raw_js) == 0


def test_the_job_display_shows_payload_sizes() -> None:
    from naq_ipy.views.jobs import job_text

    status = results.JobStatus(job_id="j1", status=results.FINISHED, args_bytes=152_000_000, result_bytes=8_000_139)
    assert "args 152 MB · result 8.0 MB" in job_text("j1", "score", status)
    assert "args" not in job_text("j1", "score", results.JobStatus(job_id="j1", status=results.FINISHED))


async def test_retries_and_dependencies_carry_large_values(url: str, tmp_path: Path) -> None:
    value = np.random.default_rng(8).random(MB)
    queue = Queue("default", url)
    flaky = await queue.enqueue(payload_jobs.fails_once, value, str(tmp_path / "failed"), max_retries=1)
    after = await queue.enqueue(payload_jobs.total, value, 1, depends_on=flaky)
    async with running_worker(url, concurrency=2):
        assert await after.result(timeout=30) == pytest.approx(float(value.sum()) + 1)
        assert await flaky.result(timeout=30) == pytest.approx(float(value.sum()))
    status = await fetch_status(flaky.job_id, url)
    assert status is not None and status.attempts == 2 and status.args_bytes == value.nbytes
    assert len(await objects(url)) == 1


def test_a_cell_schedule_captures_a_large_value_through_the_store(ip: RaisingShell, nats_url: str) -> None:
    ip.run_cell("import numpy as np\nbig = np.random.default_rng(9).random(1_000_000)")
    ip.run_cell_magic("naq_schedule", "--interval 1h big_sum", "float(big.sum())")
    [record] = schedules(nats_url)
    assert len(record.job_data) < 100_000, "the captured array should live in the payload store"
    header, _ = read_header(record.job_data)
    assert [size for _, size in header["payload"]["buffers"]] == [8_000_000]


async def test_the_periodic_sweep_runs_with_its_clock(url: str) -> None:
    conn = await get_connection(url)
    value = memoryview(np.ones(MB)).cast("B")
    await payloads.store(conn, PayloadRef(payloads.NAME_PREFIX + sha(np.ones(MB)), value.nbytes), value, keep_s=0)
    sweeping = asyncio.create_task(sweep_forever(conn, clock=lambda: time.time() + 1, interval_s=0.05))
    try:
        deadline = time.monotonic() + 10
        while await objects(url):
            assert time.monotonic() < deadline, "the periodic sweep never removed the expired object"
            await asyncio.sleep(0.05)
    finally:
        sweeping.cancel()


@pytest.mark.slow
async def test_cancelling_data_sized_jobs_drops_their_payloads(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delayed job's payload goes at its cancel; a queued one's when a worker drops its cancelled message."""
    from naq_ipy.status import payload_sweep

    monkeypatch.setattr(payload_sweep, "RECENT_UPLOAD_S", -1.0)  # as if uploaded long ago
    delayed_value, queued_value, kept = np.ones(MB), np.zeros(MB), np.full(MB, 3.0)
    queue = Queue("default", url)
    delayed = await queue.enqueue_in(HOUR, payload_jobs.total, delayed_value)
    queued = await queue.enqueue(payload_jobs.total, queued_value)
    await queue.enqueue_in(HOUR, payload_jobs.total, kept)
    assert len(await objects(url)) == 3
    await delayed.cancel()
    assert payloads.NAME_PREFIX + sha(delayed_value) not in await objects(url)
    await queued.cancel()
    async with running_worker(url):
        await eventually_async(lambda: stored_names(url), {payloads.NAME_PREFIX + sha(kept)},
                               "the cancelled queued job's payload to be dropped")


async def stored_names(url: str) -> set[str]:
    """Names of the live objects of the payload store."""
    return set(await objects(url))


def test_payload_settings_survive_pickling_without_secrets() -> None:
    import pickle

    settings = ConnectionSettings.resolve("nats://u:secret@127.0.0.1:1", payload_threshold_bytes=1000,
                                          payload_max_bytes=10 * MB, payload_cache_bytes=5 * MB)
    copied = pickle.loads(pickle.dumps(settings))
    assert (copied.payload_threshold_bytes, copied.payload_max_bytes, copied.payload_cache_bytes) == (1000, 10 * MB,
                                                                                                      5 * MB)
    assert "secret" not in copied.url


@pytest.mark.parametrize("spec", [{"buffers": [["sha256-x", 1]]}, {"body": None}, {"buffers": [], "extra": 1}, [1]])
def test_a_status_with_a_malformed_result_payload_is_refused(spec: object) -> None:
    import json

    raw = json.dumps({"job_id": "j1", "status": "finished", "updated_at": 1.0, "result_payload": spec}).encode()
    with pytest.raises(SerializationError, match="result_payload"):
        results.JobStatus.from_bytes(raw)


def test_a_status_names_its_result_payload_inside_the_signature() -> None:
    from naq_ipy.errors import SignatureError
    from naq_ipy.status.results import check_signed

    settings = ConnectionSettings.resolve("nats://127.0.0.1:1", signing_key="k1")
    spec = {"body": None, "buffers": [[payloads.NAME_PREFIX + "a" * 64, 8]]}
    status = results.JobStatus(job_id="j1", status=results.FINISHED, updated_at=1.0, result_payload=spec)
    stored = results.JobStatus.from_bytes(status.to_bytes(settings))
    check_signed(settings, "j1", stored)
    assert stored.result_payload == spec
    swapped = stored.raw.replace(b"a" * 64, b"b" * 64)
    with pytest.raises(SignatureError, match="refused"):
        check_signed(settings, "j1", results.JobStatus.from_bytes(swapped))
