"""Users and subject permissions from `docs/nats-permissions.conf`, on a real server.

Every role of the recommended layout does its work without a single permissions violation; the
enqueue-only user can enqueue but not touch schedules, and is told "permission denied" within
the request timeout; no password shows in any log line, error or repr.
"""

from __future__ import annotations

import base64
import logging
import pickle
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import jobs
import nats
import pytest
from polling import eventually, eventually_async
from test_scheduler import quarter_after
from test_scheduler import running as running_scheduler
from test_worker import running_worker

from naq_ipy import ConnectionSettings, JobExecutionError, PermissionDeniedError, Queue
from naq_ipy.status.cancel import Outcome, who
from naq_ipy.status.payload_sweep import sweep_payloads
from naq_ipy.status.results import JobStatus, fetch_result, fetch_status, wait_for_end, write_result, write_status
from naq_ipy.wire import names, payloads
from naq_ipy.wire.connection import close_all, connect, get_connection, kv_put
from naq_ipy.wire.server import NatsServer
from naq_ipy.worker.consumer import list_workers
from naq_ipy.worker.failed_store import list_failed

CONFIG = Path(__file__).parent.parent / "docs" / "nats-permissions.conf"
ROLES = ("admin", "notebook", "enqueue", "worker", "scheduler")
PASSWORDS = {role: f"pw-{role}-Zq8x{len(role)}" for role in ROLES}
BUCKETS = (names.SCHEDULED_JOBS_KV_NAME, names.JOB_STATUS_KV_NAME, names.RESULTS_KV_NAME, names.WORKERS_KV_NAME,
           names.SCHEDULER_CLOCK_KV_NAME, names.CANCEL_REQUESTS_KV_NAME)
DENIAL_BOUND_S = 8.0  # the request timeout (5 s) plus slack


@pytest.fixture
async def server(nats_server_factory: Callable[..., NatsServer], monkeypatch: pytest.MonkeyPatch,
                 caplog: pytest.LogCaptureFixture) -> AsyncIterator[NatsServer]:
    """A server running the example config (passwords from its environment), set up by the admin."""
    caplog.set_level(logging.DEBUG)
    for role, password in PASSWORDS.items():
        monkeypatch.setenv(f"NAQ_{role.upper()}_PASSWORD", password)
    started = nats_server_factory(config_file=CONFIG)
    conn = await connect(as_role(started.url, "admin"))
    await conn.ensure_stream()
    await conn.ensure_stream(names.FAILED_STREAM_NAME)
    await conn.ensure_stream(names.LOGS_STREAM_NAME)
    for bucket in BUCKETS:
        await conn.kv(bucket)
    await payloads.ensure_bucket(conn)
    await conn.nc.close()
    yield started
    await close_all()
    formatter = logging.Formatter()  # formats exc_info too: tracebacks are searched as well
    logged = [formatter.format(r) for when in ("setup", "call", "teardown") for r in caplog.get_records(when)]
    assert any("permission" in line or "fired" in line for line in logged)
    assert_no_password("\n".join(logged))


def as_role(url: str, role: str) -> ConnectionSettings:
    """Settings of user `naq-<role>`."""
    return ConnectionSettings.resolve(url, user=f"naq-{role}", password=PASSWORDS[role])


def assert_no_password(text: str) -> None:
    """No password of any role appears in `text`."""
    leaked = [role for role, password in PASSWORDS.items() if password in text]
    assert not leaked, f"password of {leaked} in: {text[:500]}"


def violations(server: NatsServer) -> list[str]:
    """The server's log lines about refused publishes or subscriptions."""
    return [line for line in server.log_file.read_text().splitlines() if "Violation" in line]


async def test_each_role_of_the_recommended_layout_does_its_work_without_a_violation(
    server: NatsServer, tmp_path: Path,
) -> None:
    path = str(tmp_path / "marks")
    notebook = Queue("reports", as_role(server.url, "notebook"))
    async with running_worker(as_role(server.url, "worker"), "reports"), \
            running_scheduler(as_role(server.url, "scheduler")):
        job = await notebook.enqueue(jobs.add, 2, 3)
        assert await job.result(timeout=10) == 5
        chatty = await notebook.enqueue(jobs.chatty, 3)  # its output: published by the worker, read by the notebook
        assert await chatty.result(timeout=10) == 3
        assert await chatty.logs() == "line 0\nline 1\nline 2\n"
        await notebook.schedule(jobs.mark, path, "tick", interval=0.25, repeat=2, name="ticks",
                                start_at=quarter_after(0.3))
        await eventually(lambda: len(jobs.marks(path, "tick")) == 2, what="two scheduled runs")
        await notebook.schedule(jobs.add, 1, 1, interval=3600, name="hourly")
        await notebook.pause_scheduled_job("hourly")
        await notebook.modify_scheduled_job("hourly", interval=1800)
        assert [r.key for r in await notebook.list_scheduled_jobs()] == ["hourly"]
        assert await notebook.cancel_scheduled_job("hourly")
        failing = await notebook.enqueue(jobs.boom)
        with pytest.raises(Exception, match="boom"):
            await failing.result(timeout=10)
        assert [e.job_id for e in await list_failed(notebook.settings)] == [failing.job_id]
        assert len(await list_workers(notebook.settings)) == 1
        submitted = await Queue("reports", as_role(server.url, "enqueue")).enqueue(jobs.add, 1, 1)
        assert await fetch_result(submitted.job_id, timeout=10, url=notebook.settings) == 2
        large = await Queue("reports", as_role(server.url, "enqueue")).enqueue(jobs.big_result, 2_000_000)
        big = await notebook.enqueue(len, b"x" * 2_000_000)
        assert await big.result(timeout=10) == 2_000_000
        assert len(await fetch_result(large.job_id, timeout=10, url=notebook.settings)) == 2_000_000
    for role in ("worker", "scheduler"):  # both sweep unused payloads
        await sweep_payloads(await get_connection(as_role(server.url, role)), time.time() + 2 * 3600)
    await notebook.purge()
    assert violations(server) == []


@pytest.mark.slow
async def test_enqueue_only_user_enqueues_but_schedules_are_permission_denied(server: NatsServer) -> None:
    await Queue("reports", as_role(server.url, "notebook")).schedule(jobs.add, 1, 1, interval=3600, name="nightly")
    queue = Queue("reports", as_role(server.url, "enqueue"))
    await queue.enqueue(jobs.add, 1, 2)
    await queue.enqueue_many([(jobs.add, (i, i)) for i in range(3)])
    conn = await get_connection(as_role(server.url, "admin"))
    assert (await conn.js.stream_info(names.JOB_STREAM_NAME)).state.messages == 4
    errors = []
    for attempt in (lambda: queue.schedule(jobs.add, 1, 1, interval=60, name="mine"),
                    lambda: queue.pause_scheduled_job("nightly")):
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError, match="permission denied by NATS at") as caught:
            await attempt()
        assert time.monotonic() - started < DENIAL_BOUND_S
        errors.append(caught.value)
    assert all("naq_scheduled_jobs" in str(e) for e in errors), [str(e) for e in errors]
    entry = await (await conn.kv(names.SCHEDULED_JOBS_KV_NAME)).get("nightly")
    assert entry.value is not None and b'"status":"active"' in entry.value.replace(b" ", b"")
    shown = " ".join([*(str(e) for e in errors), *(repr(e) for e in errors), repr(queue), repr(queue.settings)])
    assert_no_password(shown)
    assert violations(server) and all("naq-enqueue" in line for line in violations(server))


@pytest.mark.slow
async def test_notebooks_cannot_write_results(server: NatsServer) -> None:
    """Only workers write result values."""
    conn = await get_connection(as_role(server.url, "notebook"))
    for bucket in (names.RESULTS_KV_NAME,):
        with pytest.raises(PermissionDeniedError, match="permission denied"):
            await kv_put(conn, bucket, "some-job", b'{"job_id":"some-job","status":"finished"}', ttl_s=60)
    assert violations(server) and all("naq-notebook" in line for line in violations(server))


async def test_notebook_may_cancel_jobs_and_enqueue_may_not(server: NatsServer, tmp_path: Path) -> None:
    """`naq-notebook` cancels a queued and a running job (the worker stops it) without a violation;
    `naq-enqueue` is told "permission denied" and its cancel changes nothing."""
    from naq_ipy import cancel

    evidence = str(tmp_path / "spin")
    notebook = Queue("reports", as_role(server.url, "notebook"))
    queued = await notebook.enqueue(jobs.add, 1, 2)
    assert str((await cancel(queued, notebook.settings))[queued.job_id]) == "cancel requested"  # no worker yet
    spinning = await notebook.enqueue(jobs.busy_loop, evidence)
    async with running_worker(as_role(server.url, "worker"), "reports", concurrency=1):
        await eventually(lambda: jobs.marks(evidence, "start"), what="the job to start")
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError, match="permission denied by NATS at"):
            await cancel(spinning, as_role(server.url, "enqueue"))
        assert time.monotonic() - started < DENIAL_BOUND_S
        denied = violations(server)
        assert denied and all("naq-enqueue" in line for line in denied)
        assert (await fetch_status(spinning.job_id, notebook.settings)).status == "running"  # type: ignore[union-attr]
        assert str((await cancel(spinning, notebook.settings))[spinning.job_id]) == "cancelled"
        assert (await wait_for_end(spinning.job_id, 10, notebook.settings)).status == "cancelled"
    assert (await fetch_status(queued.job_id, notebook.settings)).status == "cancelled"  # type: ignore[union-attr]
    assert violations(server) == denied


async def test_notebook_cannot_forge_a_status_but_cancels_through_a_worker(server: NatsServer, tmp_path: Path) -> None:
    """As `naq-notebook` a forged `finished` status (a pickle inlined) is refused by the server and nothing is
    stored; `job.cancel()` as naq-notebook still stops a running job and cancels a job queued where no worker
    serves, end to end through a worker running as naq-worker."""
    notebook = Queue("reports", as_role(server.url, "notebook"))
    victim = await notebook.enqueue(jobs.add, 1, 1)
    inlined = base64.b64encode(pickle.dumps(666)).decode()
    forged = JobStatus(job_id=victim.job_id, status="finished", result_inline=inlined)
    conn = await get_connection(notebook.settings)
    for attempt in (lambda: write_status(conn, forged),
                    lambda: kv_put(conn, names.JOB_STATUS_KV_NAME, victim.job_id, forged.to_bytes())):
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError, match="permission denied by NATS at"):
            await attempt()
        assert time.monotonic() - started < DENIAL_BOUND_S
    admin = await get_connection(as_role(server.url, "admin"))
    assert (await admin.js.stream_info(names.kv_stream(names.JOB_STATUS_KV_NAME))).state.messages == 0
    denied = violations(server)
    assert denied and all("naq-notebook" in line and "naq_job_status" in line for line in denied)
    evidence = str(tmp_path / "spin")
    spinning = await notebook.enqueue(jobs.busy_loop, evidence)
    idle = await Queue("idle", notebook.settings).enqueue(jobs.add, 2, 2)  # no worker serves `idle`
    async with running_worker(as_role(server.url, "worker"), "reports", concurrency=1) as worker:
        assert await victim.result(timeout=10) == 2
        await eventually(lambda: jobs.marks(evidence, "start"), what="the loop to start")
        assert await spinning.cancel() is Outcome.CANCELLED
        ended = await wait_for_end(spinning.job_id, 10, notebook.settings)
        assert ended.status == "cancelled" and ended.cancelled_by == who()
        assert await idle.cancel() is Outcome.CANCELLED  # recorded by the worker of another queue
        recorded = await fetch_status(idle.job_id, notebook.settings)
        assert recorded is not None and recorded.status == "cancelled" and recorded.worker_id == worker.worker_id
    assert not jobs.marks(evidence, "end")
    assert violations(server) == denied


async def test_a_job_cancelled_while_no_worker_runs_never_runs(server: NatsServer, tmp_path: Path) -> None:
    """No worker at all: the notebook's cancel is `cancel requested` (the status shows `cancelled`); the worker
    started later records it and drops the job without running it; no permission is violated."""
    evidence = tmp_path / "ran.txt"
    notebook = Queue("reports", as_role(server.url, "notebook"))
    doomed = await notebook.enqueue(jobs.touch, str(evidence))
    assert await doomed.cancel() is Outcome.REQUESTED
    shown = await fetch_status(doomed.job_id, notebook.settings)
    assert shown is not None and shown.status == "cancelled" and shown.cancelled_by == who()
    later = await notebook.enqueue(jobs.touch, str(tmp_path / "later.txt"), "later")
    async with running_worker(as_role(server.url, "worker"), "reports", concurrency=1) as worker:
        assert await later.result(timeout=10) == "later"
        ended = await wait_for_end(doomed.job_id, 10, notebook.settings)
    assert ended.status == "cancelled" and ended.worker_id == worker.worker_id and ended.cancelled_by == who()
    with pytest.raises(JobExecutionError, match="cancelled"):
        await doomed.result(timeout=1)
    assert not evidence.exists()
    admin = await get_connection(as_role(server.url, "admin"))
    assert (await admin.js.stream_info(names.JOB_STREAM_NAME)).state.messages == 0
    assert violations(server) == []


# What each role may NOT do (docs/nats-permissions.conf, "Roles"): (subject, why it must be refused).
REFUSED = {
    "notebook": [
        ("$JS.API.STREAM.CREATE.naq_other", "creating streams and buckets is for naq-admin"),
        ("$KV.naq_job_status.forged", "statuses are written by workers (a cancel is a request)"),
        ("$JS.API.STREAM.DELETE.naq_jobs", "deleting the job stream"),
        ("$KV.naq_results.forged", "results are written by workers"),
        ("$KV.naq_workers.fake-worker", "heartbeats are written by workers"),
        ("naq.failed.reports", "failed jobs are recorded by workers"),
        ("$JS.ACK.naq_jobs.naq-worker-reports.1.1.1.1.0", "acking a job it did not run"),
    ],
    "worker": [
        ("naq.queue.reports", "a worker cannot enqueue"),
        ("$KV.naq_scheduled_jobs.forged", "a worker cannot touch schedules"),
        ("$KV.naq_cancel_requests.forged", "a worker cannot request cancels"),
        ("$JS.API.CONSUMER.CREATE.KV_naq_scheduled_jobs", "a worker cannot watch schedules"),
        ("$JS.API.STREAM.PURGE.naq_jobs", "purging queues"),
        ("$JS.API.STREAM.CREATE.naq_other", "creating streams"),
    ],
    "scheduler": [
        ("$KV.naq_job_status.forged", "statuses are written by workers"),
        ("$KV.naq_cancel_requests.forged", "cancels are requested by notebooks"),
        ("$KV.naq_results.forged", "results are written by workers"),
        ("naq.failed.reports", "failed jobs are recorded by workers"),
        ("$JS.API.CONSUMER.MSG.NEXT.naq_jobs.naq-worker-reports", "a scheduler does not take jobs"),
        ("$JS.API.STREAM.PURGE.naq_jobs", "purging queues"),
        ("$JS.API.STREAM.CREATE.naq_other", "creating streams"),
    ],
}


async def refusals(url: str, role: str, subjects: list[str]) -> dict[str, str]:
    """Publish once on each subject as `naq-<role>` (and subscribe to `naq.queue.>`): the server's -ERR for each."""
    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    nc = await nats.connect(url, user=f"naq-{role}", password=PASSWORDS[role], error_cb=on_error,
                            allow_reconnect=False)
    found: dict[str, str] = {}
    try:
        for subject in [*subjects, "naq.queue.>"]:
            if subject == "naq.queue.>":  # reading jobs straight off their subjects, past JetStream
                await nc.subscribe(subject)
            else:
                await nc.publish(subject, b"{}")
            await nc.flush()
            await eventually_async(lambda s=subject: said(errors, s), True, f"the refusal of {subject}")
            found[subject] = next(e for e in errors if f'"{subject.lower()}"' in e)
    finally:
        await nc.close()
    return found


async def said(errors: list[str], subject: str) -> bool:
    """Whether the server refused `subject` (nats-py lower-cases the server's -ERR text)."""
    return any(f'"{subject.lower()}"' in error for error in errors)


@pytest.mark.slow
@pytest.mark.parametrize("role", sorted(REFUSED))
async def test_each_role_is_refused_what_it_must_not_do_and_nothing_is_written(server: NatsServer, role: str) -> None:
    refused = await refusals(server.url, role, [subject for subject, _ in REFUSED[role]])
    assert all("permissions violation" in error for error in refused.values()), refused
    admin = await get_connection(as_role(server.url, "admin"))
    for stream in (names.JOB_STREAM_NAME, names.FAILED_STREAM_NAME, *(f"KV_{b}" for b in BUCKETS)):
        assert (await admin.js.stream_info(stream)).state.messages == 0, f"{role} wrote to {stream}"
    assert {info.config.name for info in await admin.js.streams_info()} == {
        names.JOB_STREAM_NAME, names.FAILED_STREAM_NAME, names.LOGS_STREAM_NAME, names.PAYLOAD_STREAM_NAME,
        *(f"KV_{b}" for b in BUCKETS)}
    # and through naq itself: the refusal is a PermissionDeniedError, not a hang or a silent success
    settings = as_role(server.url, role)
    attempt = (Queue("reports", settings).enqueue(jobs.add, 1, 1) if role == "worker"
               else write_result(await get_connection(settings), "forged", b"x"))
    with pytest.raises(PermissionDeniedError, match="permission denied by NATS at"):
        await attempt
    assert violations(server) and all(f"naq-{role}" in line for line in violations(server))
