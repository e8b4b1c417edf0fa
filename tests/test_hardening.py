"""Issue #19, probed as an adversary would: no secret in any pickle, forged results refused before
they are unpickled, hostile stored records never stop a scheduler or a listing, names checked whole,
slow pickles loaded off the worker's loop, poison headers rejected once, the failed store bounded.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import math
import pickle
import struct
import time
from pathlib import Path
from typing import Any

import cloudpickle
import jobs
import pytest
from IPython.core.error import UsageError
from magic_shell import RaisingShell
from nats.js import JetStreamContext
from polling import eventually, wait_until
from test_auth import PASSWORDS
from test_auth import server as server  # noqa: F401 - the fixture: a server with the recommended permissions
from test_scheduler import entry_gone, quarter_after, queued_runs, store
from test_scheduler import running as running_scheduler
from test_scheduler import wait_until as wait_until_async
from test_signing import KEY, Bomb, forged, keyed
from test_worker import running_worker, stream_count
from test_worker import url as url  # noqa: F401 - the `url` fixture, shared

from naq_ipy import (
    ConfigurationError,
    ConnectionSettings,
    Job,
    PermissionDeniedError,
    Queue,
    ScheduledJobsPanel,
    SignatureError,
)
from naq_ipy.cli.main import main as naq_main
from naq_ipy.errors import NaqConnectionError, SerializationError
from naq_ipy.rules.records import decode_object
from naq_ipy.schedules.fires import ScheduleView
from naq_ipy.schedules.record import new_record
from naq_ipy.schedules.scheduler import Scheduler
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.status.results import FINISHED, JobStatus, fetch_status, write_status
from naq_ipy.wire.connection import connect, get_connection
from naq_ipy.wire.names import FAILED_STREAM_NAME, JOB_STATUS_KV_NAME, SCHEDULED_JOBS_KV_NAME, WORKERS_KV_NAME
from naq_ipy.wire.server import NatsServer, free_port
from naq_ipy.wire.settings import (
    DEFAULT_FAILED_MAX_AGE_S,
    DEFAULT_FAILED_MAX_BYTES,
    SCHEDULE_NAME_MAX,
    redact_url,
    validate_key,
    validate_queue_name,
    validate_schedule_name,
)
from naq_ipy.wire.signing import signature
from naq_ipy.worker.consumer import Worker, list_workers, read_heartbeat
from naq_ipy.worker.failed_store import list_failed

SECRET = "S3cret"


def with_secret(url: str) -> str:
    """`url` with user `alice` and password SECRET (a server without auth ignores them)."""
    return url.replace("nats://", f"nats://alice:{SECRET}@")


# --- 1. secrets never travel in pickles ---


def test_pickles_of_settings_queues_and_jobs_hold_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAQ_SIGNING_KEYS", KEY)
    url = with_secret("nats://127.0.0.1:4222")
    settings = ConnectionSettings.resolve(url, token="T0ken-x", password="Pa55-x")
    queue = Queue("q", settings)
    objects = [settings, queue, queue.job(jobs.add, (1, 2)), Job(jobs.add, url=url), [queue.job(jobs.add)]]
    for obj in objects:
        data = cloudpickle.dumps(obj)
        leaked = [s for s in (SECRET, KEY, "T0ken-x", "Pa55-x", "alice") if s.encode() in data]
        assert not leaked, f"{leaked} in the pickle of {obj!r}"
    monkeypatch.setenv("NAQ_PASSWORD", "from-this-env")
    back = pickle.loads(cloudpickle.dumps(settings))  # resolved where it is unpickled
    assert back.url == "nats://127.0.0.1:4222" and back.password == "from-this-env"
    assert back.signing_keys == (KEY,) and back.token is None


async def test_a_job_returning_the_jobs_it_enqueued_writes_no_secret(
    url: str, raw_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret_url = with_secret(url)
    monkeypatch.setenv("NAQ_URL", secret_url)  # the worker's own environment: where its children resolve
    monkeypatch.setenv("NAQ_SIGNING_KEYS", KEY)
    queue = Queue("parents", secret_url)
    async with running_worker(secret_url, ["parents", "kids"]):
        parent = await queue.enqueue(jobs.enqueue_children, 3)
        children = await parent.result(timeout=20)
        assert [await child.result(timeout=20) for child in children] == [0, 2, 4]
        passing = await Queue("nobody", secret_url).enqueue(jobs.identity, children[0])
    status = await (await (await get_connection(url)).kv(JOB_STATUS_KV_NAME)).get(parent.job_id)
    assert status.value is not None and b"result_inline" in status.value
    stored = [(await raw_js.get_msg("naq_jobs", seq=seq)).data or b""
              for seq in range((await raw_js.stream_info("naq_jobs")).state.first_seq,
                               (await raw_js.stream_info("naq_jobs")).state.last_seq + 1)]
    assert len(stored) == 1 and passing.job_id.encode() in stored[0]
    for data in [status.value, *stored]:
        assert SECRET.encode() not in data and KEY.encode() not in data


# --- 2. a forged result is refused before it is unpickled ---


async def test_a_forged_finished_status_is_refused_and_never_unpickled(url: str, tmp_path: Path) -> None:
    path = str(tmp_path / "marks")
    signed = keyed(url, KEY)
    async with running_worker(signed, "signed"):
        genuine = await Queue("signed", signed).enqueue(jobs.add, 2, 3)
        assert await genuine.result(timeout=10) == 5
        victim = await Queue("idle", signed).enqueue(jobs.add, 1, 1)  # no worker serves `idle`
        kv = await (await get_connection(url)).kv(JOB_STATUS_KV_NAME)  # the adversary: writes statuses, no key
        bomb = base64.b64encode(cloudpickle.dumps(Bomb(path))).decode()
        await kv.put(victim.job_id, JobStatus(job_id=victim.job_id, status=FINISHED, result_inline=bomb,
                                              updated_at=time.time()).to_bytes())
        with pytest.raises(SignatureError, match=f"status of job {victim.job_id} refused .unsigned status record"):
            await victim.result(timeout=10)
        copied = (await kv.get(genuine.job_id)).value  # a genuine signed record, moved to another job's key
        assert copied is not None and b'"sig":"' in copied
        await kv.put(victim.job_id, copied)
        with pytest.raises(SignatureError, match="bad signature"):
            await victim.result(timeout=10)
        assert await genuine.result(timeout=10) == 5
    assert not Path(path).exists(), "a forged result was unpickled"


async def test_a_notebook_cannot_write_a_status_even_holding_the_key(server: NatsServer, tmp_path: Path) -> None:
    """The recommended permissions: `naq-notebook`, holding the shared signing key, signs a forged `finished`
    status with a pickle inlined under another user's job. The server refuses it (statuses are written by
    workers only; a cancel is a request), nothing is stored or unpickled, and the owner reads the real result."""
    path = str(tmp_path / "marks")
    notebook = ConnectionSettings.resolve(server.url, user="naq-notebook", password=PASSWORDS["notebook"],
                                          signing_key=[KEY])
    worker = ConnectionSettings.resolve(server.url, user="naq-worker", password=PASSWORDS["worker"],
                                        signing_key=[KEY])
    victim = await Queue("reports", notebook).enqueue(jobs.add, 1, 1)
    bomb = base64.b64encode(cloudpickle.dumps(Bomb(path))).decode()
    forged = JobStatus(job_id=victim.job_id, status=FINISHED, result_inline=bomb, updated_at=time.time())
    with pytest.raises(PermissionDeniedError, match="permission denied by NATS at"):
        await write_status(await get_connection(notebook), forged)  # signed with the key: still refused
    assert await fetch_status(victim.job_id, notebook) is None
    async with running_worker(worker, "reports"):
        assert await victim.result(timeout=10) == 2
    recorded = await fetch_status(victim.job_id, notebook)
    assert recorded is not None and recorded.status == FINISHED and recorded.worker_id is not None
    assert not Path(path).exists(), "a forged result was unpickled"


async def test_a_job_signed_for_one_queue_is_refused_on_another(
    url: str, tmp_path: Path, raw_js: JetStreamContext,
) -> None:
    path = str(tmp_path / "marks")
    data = forged(path, queue="q2").serialize()
    async with running_worker(keyed(url, KEY), "q1") as worker:
        await raw_js.publish("naq.queue.q1", data, headers={"Naq-Signature": signature(data, KEY, "q2")})
        await eventually(lambda: worker.failed == 1, what="the rejection")
    assert not Path(path).exists()
    assert [e.reason for e in await list_failed(url)] == ["bad signature"]


# --- 3, 4, 6: hostile schedule records ---


def hostile_records(good: bytes) -> dict[str, bytes]:
    """Records a user with write access to the schedule store could leave there, by key."""
    data = json.loads(good)

    def variant(key: str, **changes: Any) -> bytes:
        return json.dumps({**data, "key": key, **changes}).encode()

    return {
        "stringtime": variant("stringtime", next_run_utc="soon"),
        "nested": b"[" * 100_000,
        "hugetime": variant("hugetime", next_run_utc=1e300),
        "pasttime": variant("pasttime", next_run_utc=-1e15),
        "nantime": variant("nantime", next_run_utc=math.nan),
        "tinyinterval": variant("tinyinterval", interval_s=5e-324, next_run_utc=time.time()),
    }


@pytest.mark.slow
async def test_hostile_records_never_stop_a_scheduler(nats_url: str) -> None:
    kv = await (await get_connection(nats_url)).kv(SCHEDULED_JOBS_KV_NAME)
    good = await store(nats_url, "good", quarter_after(1.0), interval_s=0.25, repeat=3)
    hostile = hostile_records(good.to_bytes())
    for key, value in hostile.items():
        await kv.put(key, value)
    async with running_scheduler(nats_url) as scheduler:
        await wait_until_async(lambda: entry_gone(nats_url, "good"), 10, "the good schedule to fire 3 times")
        assert scheduler.corrupt_keys == set(hostile)
        await store(nats_url, "later", quarter_after(0.3), schedule_type="once")  # made after the junk
        await wait_until_async(lambda: entry_gone(nats_url, "later"), 10, "a schedule made afterwards")
    assert sorted(r.schedule_key for r in await queued_runs(nats_url)) == ["good", "good", "good", "later"]
    second = Scheduler(nats_url)  # another scheduler started beside the junk starts and stops cleanly
    task = asyncio.create_task(second.run())
    await second.wait_ready(10)
    await second.stop()
    await task


def test_listings_show_good_records_and_unreadable_rows(
    ip: RaisingShell, nats_url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    good, _ = Queue("sched", nats_url).schedule_job_sync(Job(jobs.add, queue_name="sched"), interval=3600,
                                                         name="good")
    hostile = hostile_records(good.to_bytes())

    async def put_all() -> None:
        kv = await (await get_connection(nats_url)).kv(SCHEDULED_JOBS_KV_NAME)
        for key, value in hostile.items():
            await kv.put(key, value)

    asyncio.run(put_all())
    listed = {r.key: r.status for r in asyncio.run(ScheduledJobManager(nats_url).list())}
    assert listed == {"good": "active", **dict.fromkeys(hostile, "unreadable")}
    assert naq_main(["list-scheduled", "--url", nats_url]) == 0
    out = capsys.readouterr().out
    assert all(key in out for key in ["good", *hostile]) and out.count("unreadable") >= 2 * len(hostile)
    table = repr(ip.run_line_magic("naq", "list"))
    assert all(key in table for key in ["good", *hostile]) and "unreadable" in table
    panel = ScheduledJobsPanel(url=nats_url)
    try:
        assert panel.wait_loaded(5) and panel.widget is not None
        wait_until(lambda: set(panel.slot_keys) >= {"good", *hostile}, what="every row in the panel")
        assert "unreadable" in panel._repr_html_()
    finally:
        panel.close()
    ip.run_line_magic("naq", "cancel nested")  # an unreadable entry can still be removed
    assert "nested" not in {r.key for r in asyncio.run(ScheduledJobManager(nats_url).list())}
    assert "RecursionError" not in caplog.text


@pytest.mark.parametrize("when", [1e300, -1e15, math.inf, math.nan])
def test_an_out_of_range_time_is_refused_before_anything_is_stored(nats_url: str, when: float) -> None:
    with pytest.raises(ConfigurationError, match="invalid time"):
        Queue("q", nats_url).enqueue_at_sync(when, jobs.add, 1, 1)
    assert asyncio.run(ScheduledJobManager(nats_url).list()) == []


def test_an_interval_below_the_minimum_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="interval must be a duration of 0.1 s"):
        Queue("q", "nats://127.0.0.1:1").schedule_sync(jobs.add, interval=5e-324)


# --- 5, 9, 10: names checked whole ---


@pytest.mark.parametrize("name", ["q1\n", "-q", "--process-pool", "q\n1"])
def test_queue_names_are_matched_whole_and_never_start_with_a_dash(name: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        validate_queue_name(name)
    with pytest.raises(ConfigurationError):
        validate_key(name, "job id")


def test_schedule_names_leave_room_for_their_run_ids() -> None:
    longest = "a" * SCHEDULE_NAME_MAX
    assert validate_key(f"{validate_schedule_name(longest)}.now-{'9' * 13}", "job id")
    with pytest.raises(ConfigurationError, match=f"max {SCHEDULE_NAME_MAX}"):
        validate_schedule_name(longest + "a")
    with pytest.raises(ConfigurationError, match="invalid schedule name"):
        Queue("q", "nats://127.0.0.1:1").schedule_sync(jobs.add, interval=60, name=longest + "a")


@pytest.mark.parametrize("line", ["worker start -q=--process-pool", "worker start --queue=--worker-id"])
def test_options_cannot_be_smuggled_in_as_queue_names(ip: RaisingShell, line: str) -> None:
    with pytest.raises(UsageError, match="invalid queue name"):
        ip.run_line_magic("naq", line)


# --- 8: one redaction everywhere ---


@pytest.mark.parametrize(("url", "shown"), [
    (f"alice:{SECRET}@127.0.0.1:4222", "***@127.0.0.1:4222"),
    (f"nats://alice:pa/{SECRET}#x@10.0.0.1:4222", "nats://***@10.0.0.1:4222"),
    (f"nats://alice:p#?{SECRET}@h:1, tls://tok{SECRET}@h2:2", "nats://***@h:1,tls://***@h2:2"),
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
])
def test_credentials_are_redacted_in_every_form_of_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    texts = [repr(ConnectionSettings.resolve(url)), repr(Queue("q", url)), repr(Scheduler(url)),
             repr(Worker("q", url=url)), ConnectionSettings.resolve(url).safe_url]
    assert not [text for text in texts if SECRET in text]


async def test_an_unreachable_url_without_scheme_is_named_redacted() -> None:
    url = f"alice:{SECRET}@127.0.0.1:{free_port()}"
    with pytest.raises(NaqConnectionError) as caught:
        await connect(ConnectionSettings.resolve(url, connect_timeout_s=1))
    assert SECRET not in str(caught.value) and "***@127.0.0.1" in str(caught.value)


# --- 6, 11, strict decoding of the other records ---


async def test_a_poison_header_is_rejected_once_by_a_worker_without_keys(
    url: str, raw_js: JetStreamContext, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    header = b"[" * 100_000
    async with running_worker(url, "poison") as worker:
        await raw_js.publish("naq.queue.poison", struct.pack(">4sBI", b"NAQJ", 1, len(header)) + header + b"x")
        good = await Queue("poison", url).enqueue(jobs.add, 1, 2)
        assert await good.result(timeout=10) == 3
        await eventually(lambda: worker.failed == 1, what="the rejection")

        async def acked() -> bool:
            return await stream_count(raw_js) == 0

        await wait_until_async(acked, 5, "the poison message to be acked")
    [entry] = await list_failed(url)
    assert "nested too deep" in entry.reason and "outcome not recorded" not in caplog.text


async def test_the_failed_store_is_bounded(url: str) -> None:
    conn = await get_connection(url)
    await conn.ensure_stream(FAILED_STREAM_NAME)
    config = (await conn.js.stream_info(FAILED_STREAM_NAME)).config
    assert config.max_bytes == DEFAULT_FAILED_MAX_BYTES and config.max_age == DEFAULT_FAILED_MAX_AGE_S
    assert 0 < (config.max_msg_size or 0) <= conn.max_payload


@pytest.mark.parametrize("raw", [
    b"[" * 100_000, b'{"job_id":"a","status":"finished","updated_at":"now"}',
    b'{"job_id":"a","status":"finished","attempts":true}', b'{"job_id":"a","status":"running","finished_at":1e300}',
    b'{"job_id":"a","status":{"nested":[1]}}', b'{"status":"finished"}', b"x" * (2 << 20),
])
def test_status_records_are_decoded_strictly(raw: bytes) -> None:
    with pytest.raises(SerializationError, match="corrupt job status record"):
        JobStatus.from_bytes(raw)


async def test_a_bad_heartbeat_is_skipped_and_the_good_ones_listed(url: str) -> None:
    kv = await (await get_connection(url)).kv(WORKERS_KV_NAME)
    good = {"worker_id": "w1", "queues": ["q"], "heartbeat_at": time.time(), "pid": 1}
    await kv.put("w1", json.dumps(good).encode())
    await kv.put("w2", b"[" * 100_000)
    await kv.put("w3", json.dumps({**good, "worker_id": "w3", "queues": [[["deep"]]]}).encode())
    assert [w["worker_id"] for w in await list_workers(url)] == ["w1"]
    with pytest.raises(SerializationError, match="heartbeat_at"):
        read_heartbeat(json.dumps({**good, "heartbeat_at": "later"}).encode())


def test_the_decoder_names_what_is_wrong() -> None:
    with pytest.raises(SerializationError, match="rec: nested too deep"):
        decode_object(b'{"a":' * 50_000, "rec")
    with pytest.raises(SerializationError, match="rec: not a JSON object"):
        decode_object(b"[]", "rec")
    with pytest.raises(SerializationError, match="over the 10 a record may have"):
        decode_object(b"{}" * 6, "rec", max_bytes=10)


# --- 7: pickles load off the worker's loop ---


@pytest.mark.slow
@pytest.mark.parametrize("process_pool", [False, True], ids=["thread", "process"])
async def test_a_slow_to_unpickle_argument_does_not_stall_the_worker(
    url: str, tmp_path: Path, process_pool: bool,
) -> None:
    marks, gate = str(tmp_path / "marks"), str(tmp_path / "gate")
    async with running_worker(url, "load", concurrency=2, process_pool=process_pool):
        queue = Queue("load", url)
        slow = await queue.enqueue(jobs.identity, jobs.SlowToLoad(marks, gate, 20.0))
        await eventually(lambda: jobs.marks(marks, "loading"), timeout_s=20, what="the argument to start loading")
        # while it loads, the worker's loop fetches and runs another job, which opens the gate
        other = await queue.enqueue(jobs.create_file, gate)
        assert await other.result(timeout=20) == gate
        assert await slow.result(timeout=30) is True
        beats = [w["heartbeat_at"] for w in await list_workers(url)]
    assert len(beats) == 1 and len(jobs.marks(marks, "loading")) == 1


def test_copies_of_settings_keep_their_credentials() -> None:
    settings = ConnectionSettings.resolve(with_secret("nats://127.0.0.1:4222"), password="Pa55-x", signing_key=KEY)
    assert copy.copy(settings) == copy.deepcopy(settings) == settings and copy.deepcopy(settings).password == "Pa55-x"


def test_a_failing_fire_is_retried_alone_without_delaying_other_schedules() -> None:
    view = ScheduleView()
    for revision, key in enumerate(("failing", "other"), 1):
        record = new_record(Job(jobs.add, queue_name="q"), key=key, schedule_type="interval", next_run_utc=100.0,
                            interval_s=1.0)
        assert view.apply(key, revision, None, record.to_bytes())
    view.fire_failed("failing", 100.0, 0.25, 5.0)
    view.fire_failed("failing", 100.25, 0.25, 5.0)
    assert [r.key for r in view.due(100.3)] == ["other"] and view.next_due() == 100.0
    view.fire_done("other")
    assert [r.key for r in view.due(100.75)] == ["failing", "other"]
