"""The `naq` command run as a user runs it: a subprocess, its output and its exit code.

Exit codes (README, naq_ipy/cli/main.py): 0 ok, 1 a job or operation failed, 2 bad usage or
input, 3 NATS unreachable. Jobs run on a Worker in the test's loop; the command only reads.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jobs
import pytest
from nats.js import JetStreamContext
from test_worker import TESTS_DIR, running_worker, stream_count, url  # noqa: F401 - url is a fixture

from naq_ipy import JobNotFoundError, Queue
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.status.results import wait_for_end
from naq_ipy.wire.server import free_port


@dataclass(frozen=True)
class Ran:
    """What one `naq` run printed and returned."""

    code: int
    out: str
    err: str


def naq(*args: str, timeout_s: float = 60.0) -> Ran:
    """Run `python -m naq_ipy.cli ARGS` with this checkout (and tests/, for job functions) on the path."""
    python_path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "naq_ipy.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, "PYTHONPATH": python_path, "NAQ_URL": ""})
    return Ran(done.returncode, done.stdout, done.stderr)


async def anaq(*args: str) -> Ran:
    """`naq` from an async test, its loop left free (a worker may run on it)."""
    return await asyncio.to_thread(naq, *args)


@pytest.mark.slow
async def test_list_scheduled_shows_entries_and_filters_them(url: str) -> None:  # noqa: F811
    assert (await anaq("list-scheduled", "--url", url)) == Ran(0, "no scheduled jobs\n", "")
    queue = Queue("reports", url)
    await queue.schedule(jobs.add, 1, 2, interval=3600, name="hourly")
    await Queue("other", url).schedule(jobs.add, 1, 2, cron="0 6 * * *", name="daily", paused=True)
    listed = await anaq("list-scheduled", "--url", url)
    assert listed.code == 0 and "hourly" in listed.out and "daily" in listed.out
    assert "every 1 h" in listed.out and "paused" in listed.out
    paused = await anaq("list-scheduled", "--url", url, "--status", "paused")
    assert "daily" in paused.out and "hourly" not in paused.out
    of_queue = await anaq("list-scheduled", "--url", url, "--queue", "reports")
    assert "hourly" in of_queue.out and "daily" not in of_queue.out


@pytest.mark.slow
async def test_job_control_pauses_resumes_reschedules_and_cancels(url: str) -> None:  # noqa: F811
    manager = ScheduledJobManager(url)
    await Queue("q", url).schedule(jobs.add, 1, 2, interval=60, name="s")
    assert await anaq("job-control", "--url", url, "s", "pause") == Ran(0, "pause: s\n", "")
    assert (await manager.get("s")).status == "paused"
    assert (await anaq("job-control", "--url", url, "s", "resume")).code == 0
    assert (await manager.get("s")).status == "active"
    assert (await anaq("job-control", "--url", url, "s", "reschedule", "--interval", "5m", "--repeat", "2")).code == 0
    record = await manager.get("s")
    assert record.interval_s == 300 and record.repeat == 2
    refused = await anaq("job-control", "--url", url, "s", "reschedule")
    assert refused.code == 2 and "reschedule needs --cron, --interval, --repeat or --next-run" in refused.err
    bad_time = await anaq("job-control", "--url", url, "s", "reschedule", "--next-run", "soon")
    assert bad_time.code == 2 and "invalid time 'soon'" in bad_time.err
    assert (await manager.get("s")).revision == record.revision, "a refused reschedule wrote something"
    assert (await anaq("job-control", "--url", url, "s", "cancel")).code == 0
    with pytest.raises(JobNotFoundError):
        await manager.get("s")
    gone = await anaq("job-control", "--url", url, "s", "cancel")
    assert gone.code == 2 and "'s'" in gone.err


async def test_result_prints_status_and_value_and_exits_1_for_a_failed_job(url: str) -> None:  # noqa: F811
    queue = Queue("default", url)
    async with running_worker(url):
        ok = await queue.enqueue(jobs.add, 2, 3)
        bad = await queue.enqueue(jobs.boom, "it broke")
        await wait_for_end(ok.job_id, 20, url)
        await wait_for_end(bad.job_id, 20, url)
    finished = await anaq("result", "--url", url, ok.job_id)
    assert finished == Ran(0, f"{ok.job_id}: finished\n5\n", "")
    assert await anaq("result", "--url", url, ok.job_id, "--wait", "5") == Ran(0, "5\n", "")
    failed = await anaq("result", "--url", url, bad.job_id)
    assert failed.code == 1 and failed.out.startswith(f"{bad.job_id}: failed (") and "it broke" in failed.out
    waited = await anaq("result", "--url", url, bad.job_id, "--wait")
    assert waited.code == 1 and "it broke" in waited.err
    unknown = await anaq("result", "--url", url, "nosuch")
    assert unknown.code == 2 and "no job 'nosuch' is known" in unknown.err


async def test_failed_lists_failed_jobs_and_requeues_one(url: str, raw_js: JetStreamContext) -> None:  # noqa: F811
    assert await anaq("failed", "--url", url) == Ran(0, "no failed jobs\n", "")
    async with running_worker(url):
        bad = await Queue("default", url).enqueue(jobs.boom, "it broke")
        await wait_for_end(bad.job_id, 20, url)
    listed = await anaq("failed", "--url", url)
    assert listed.code == 0 and bad.job_id in listed.out and "it broke" in listed.out
    assert "no failed jobs" in (await anaq("failed", "--url", url, "--queue", "elsewhere")).out
    requeued = await anaq("failed", "--url", url, "--requeue", bad.job_id)
    assert requeued.code == 0 and requeued.out == f"requeued {bad.job_id}\n"
    assert await stream_count(raw_js) == 1
    missing = await anaq("failed", "--url", url, "--requeue", "nosuch")
    assert missing.code == 2 and "no failed job 'nosuch'" in missing.err


async def test_purge_removes_the_waiting_jobs_of_one_queue(url: str, raw_js: JetStreamContext) -> None:  # noqa: F811
    await Queue("a", url).enqueue_many([(jobs.add, (i, 1)) for i in range(3)])
    await Queue("b", url).enqueue(jobs.add, 1, 1)
    assert await anaq("purge", "--url", url, "a") == Ran(0, "purged 3 job(s) from a\n", "")
    assert await stream_count(raw_js) == 1
    bad = await anaq("purge", "--url", url, "no spaces")
    assert bad.code == 2 and "no spaces" in bad.err


@pytest.mark.parametrize("command", [
    ["list-scheduled"], ["job-control", "s", "pause"], ["list-workers"], ["result", "j"], ["failed"], ["purge", "q"],
])
def test_an_unreachable_server_exits_3_saying_so(command: list[str]) -> None:
    address = f"nats://127.0.0.1:{free_port()}"
    ran = naq(*command, "--url", address)
    assert ran.code == 3 and ran.err.strip() == f"naq: NATS server at {address} not reachable"


@pytest.mark.parametrize("args", [[], ["launch"], ["job-control", "s", "jump"], ["worker", "-c", "zero"]])
def test_bad_usage_exits_2(args: list[str]) -> None:
    ran = naq(*args)
    assert ran.code == 2 and ran.out == "" and "usage: naq" in ran.err


@pytest.mark.slow
def test_demo_runs_end_to_end_and_cleans_up() -> None:
    ran = naq("demo", "--seconds", "2", timeout_s=120)
    assert ran.code == 0, ran.err
    assert "embedded nats-server at nats://127.0.0.1:" in ran.out
    assert "report for 2026-09: 499500 rows" in ran.out and "demo done: server stopped, data removed" in ran.out
    data_dir = ran.out.split("(data in ", 1)[1].split(")", 1)[0]
    assert not Path(data_dir).exists()
