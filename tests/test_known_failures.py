"""Regression tests: each way the original naq is known to fail, shown impossible here."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import RawStreamMsg

import naq_ipy
from naq_ipy import ConfigurationError, Job, JobNotFoundError, Queue, ScheduledJob
from naq_ipy.client.bridge import run_sync
from naq_ipy.client.job import JOB_OPTIONS
from naq_ipy.wire.connection import get_connection

Msgs = Callable[..., Awaitable[list[RawStreamMsg]]]
Snapshot = Callable[..., Awaitable[dict[str, tuple[bytes, int]]]]

ROOT = Path(__file__).resolve().parent.parent / "naq_ipy"
# every module below the face (the IPython extension and the command line): none may import IPython
CORE_MODULES = ("naq_ipy", *sorted(
    "naq_ipy." + ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for path in ROOT.rglob("*.py")
    if path.relative_to(ROOT).parts[0] not in ("ipython", "cli") and path.name not in ("__init__.py", "__main__.py")))


def add(a: int = 0, b: int = 0, **kwargs: Any) -> int:
    return a + b


def _python(source: str, **env: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_circular_imports_broke_import_naq_and_core_needs_no_ipython() -> None:
    out = _python(f"""
        import importlib, json, sys
        sys.modules["IPython"] = None      # any import of IPython / ipywidgets now raises ImportError
        sys.modules["ipywidgets"] = None
        failures = {{}}
        for name in {CORE_MODULES!r}:      # each one first, in a fresh package state: cycles show up
            for loaded in [m for m in sys.modules if m == "naq_ipy" or m.startswith("naq_ipy.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as e:
                failures[name] = repr(e)
        import naq_ipy
        print(json.dumps({{
            "failures": failures,
            "ipython": sorted(m for m in sys.modules
                              if m.split(".")[0] in ("IPython", "ipywidgets", "ipykernel") and sys.modules[m]),
            "api": [n for n in naq_ipy.__all__ if not hasattr(naq_ipy, n)],
        }}))
    """)
    assert out == {"failures": {}, "ipython": [], "api": []}


async def test_schedule_kv_bytes_keys_and_cancel_always_raising(nats_url: str, kv_snapshot: Snapshot) -> None:
    queue = Queue("q", nats_url)
    one_off = await queue.enqueue_in(60, add, 1)
    await queue.schedule(add, interval=60, name="named")
    store = await kv_snapshot()
    assert set(store) == {one_off.job_id, "named"} and all(type(k) is str for k in store)
    assert await queue.cancel_scheduled_job(one_off.job_id) is True
    assert await naq_ipy.cancel_scheduled_job("named", nats_url=nats_url) is True
    assert await kv_snapshot() == {}
    with pytest.raises(JobNotFoundError):
        await queue.cancel_scheduled_job("named")
    with pytest.raises(JobNotFoundError):
        naq_ipy.cancel_scheduled_job_sync(one_off.job_id, nats_url=nats_url)


def test_second_sync_call_in_one_thread_failed(nats_url: str) -> None:
    first = naq_ipy.enqueue_sync(add, 1, nats_url=nats_url)
    second = naq_ipy.enqueue_sync(add, 2, nats_url=nats_url)
    third = Queue(nats_url=nats_url).enqueue_sync(add, 3)
    assert len({first.job_id, second.job_id, third.job_id}) == 3
    assert naq_ipy.purge_queue_sync(nats_url=nats_url) == 3


def test_every_sync_call_failed_inside_a_running_loop(nats_url: str) -> None:
    async def cell() -> int:
        naq_ipy.enqueue_sync(add, 1, nats_url=nats_url)
        naq_ipy.schedule_sync(add, interval=5, name="in-loop", nats_url=nats_url)
        naq_ipy.pause_scheduled_job_sync("in-loop", nats_url=nats_url)
        naq_ipy.modify_scheduled_job_sync("in-loop", interval=10, nats_url=nats_url)
        naq_ipy.resume_scheduled_job_sync("in-loop", nats_url=nats_url)
        record = naq_ipy.get_scheduled_job_sync("in-loop", nats_url=nats_url)
        assert record.interval_s == 10.0 and record.status == "active"
        naq_ipy.cancel_scheduled_job_sync("in-loop", nats_url=nats_url)
        return naq_ipy.purge_queue_sync(nats_url=nats_url)

    assert asyncio.run(cell()) == 1


async def test_pooled_connection_closed_by_one_helper_while_another_used_it(nats_url: str, stream_msgs: Msgs) -> None:
    conn = await get_connection(nats_url)
    bridge_conn = run_sync(get_connection(nats_url))
    stop = threading.Event()

    def sync_side() -> int:
        done = 0
        while not stop.is_set() or done < 20:
            naq_ipy.enqueue_sync(add, done, queue_name="sync-side", nats_url=nats_url)
            naq_ipy.list_scheduled_jobs_sync(nats_url=nats_url)
            done += 1
        return done

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sync_future = pool.submit(sync_side)
        calls = [naq_ipy.enqueue(add, i, queue_name="async-side", nats_url=nats_url) for i in range(50)]
        calls += [naq_ipy.schedule(add, interval=60, name=f"s{i}", nats_url=nats_url) for i in range(10)]
        calls += [naq_ipy.purge_queue("empty", nats_url=nats_url) for _ in range(5)]
        results = await asyncio.gather(*calls)
        stop.set()
        sync_done = await asyncio.wrap_future(sync_future)
    assert all(r is not None for r in results)
    assert conn.nc.is_connected and await get_connection(nats_url) is conn
    assert bridge_conn.nc.is_connected and run_sync(get_connection(nats_url)) is bridge_conn
    subjects = [m.subject for m in await stream_msgs()]
    assert subjects.count("naq.queue.async-side") == 50 and subjects.count("naq.queue.sync-side") == sync_done


OPTIONS = {"max_retries": 2, "retry_delay": [1, 2], "timeout": 30, "depends_on": "dep-1", "result_ttl": 60,
           "job_id": "fixed-id"}


@pytest.mark.parametrize("method", ["enqueue", "enqueue_at", "enqueue_in", "schedule", "helper", "many"])
async def test_options_leaked_into_the_functions_kwargs(
    nats_url: str, stream_msgs: Msgs, kv_snapshot: Snapshot, method: str
) -> None:
    assert set(OPTIONS) == JOB_OPTIONS
    queue = Queue("opts", nats_url)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "enqueue": lambda: queue.enqueue(add, 1, b=2, **OPTIONS),
        "enqueue_at": lambda: queue.enqueue_at(datetime(2030, 1, 1, tzinfo=UTC), add, 1, b=2, **OPTIONS),
        "enqueue_in": lambda: queue.enqueue_in(timedelta(hours=1), add, 1, b=2, **OPTIONS),
        "schedule": lambda: queue.schedule(add, 1, b=2, interval=60, **OPTIONS),
        "helper": lambda: naq_ipy.enqueue(add, 1, b=2, queue_name="opts", nats_url=nats_url, **OPTIONS),
        "many": lambda: queue.enqueue_many([(add, (1,), {"b": 2})], **OPTIONS),
    }
    await calls[method]()
    stored = ([Job.deserialize(m.data or b"") for m in await stream_msgs()]
              + [ScheduledJob.from_bytes(*v).job() for v in (await kv_snapshot()).values()])
    assert len(stored) == 1
    (job,) = stored
    assert job.kwargs == {"b": 2}, f"options leaked into kwargs: {job.kwargs}"
    assert (job.max_retries, job.retry_delay, job.timeout, job.depends_on, job.result_ttl, job.job_id) == (
        2, (1.0, 2.0), 30.0, ("dep-1",), 60.0, "fixed-id")


async def test_enqueue_in_dropped_timeout(nats_url: str, kv_snapshot: Snapshot) -> None:
    job = await Queue("q", nats_url).enqueue_in(30, add, timeout=12)
    sync_job = naq_ipy.enqueue_in_sync(30, add, timeout=13, nats_url=nats_url)
    store = await kv_snapshot()
    assert ScheduledJob.from_bytes(*store[job.job_id]).job().timeout == 12.0
    assert ScheduledJob.from_bytes(*store[sync_job.job_id]).job().timeout == 13.0


async def test_purge_returned_true_instead_of_a_count(nats_url: str) -> None:
    queue = Queue("purge", nats_url)
    assert await queue.purge() == 0
    await queue.enqueue_many([(add, (i,)) for i in range(3)])
    count = await queue.purge()
    assert count == 3 and type(count) is int and count is not True
    await queue.enqueue(add, 1)
    assert naq_ipy.purge_queue_sync("purge", nats_url=nats_url) == 1


@pytest.mark.parametrize("name", ["reports.daily", "a.b.c", ".", "a."])
def test_queue_names_with_dots_were_accepted(name: str) -> None:
    with pytest.raises(ConfigurationError, match="no dots"):
        Queue(name)
    with pytest.raises(ConfigurationError, match="no dots"):
        naq_ipy.enqueue_sync(add, queue_name=name, nats_url="nats://127.0.0.1:1")
    with pytest.raises(ConfigurationError):
        Job(function=add, queue_name=name)


def test_naive_datetimes_were_read_as_local_time(nats_url: str) -> None:
    expected = datetime(2030, 1, 1, 12, 0, tzinfo=UTC).timestamp()
    out = _python(f"""
        import asyncio, json, time
        from datetime import datetime
        time.tzset()
        assert time.localtime(0).tm_hour == 19, "TZ=America/New_York did not take effect"
        import naq_ipy
        from naq_ipy.schedules.store import ScheduledJobManager
        from naq_ipy.rules.times import to_timestamp
        def f():
            return 1
        async def main():
            q = naq_ipy.Queue("tz", {nats_url!r})
            job = await q.enqueue_at(datetime(2030, 1, 1, 12, 0), f)
            await q.schedule(f, interval=60, name="start", start_at=datetime(2030, 1, 1, 12, 0))
            await q.schedule(f, interval=60, name="moved")
            await q.modify_scheduled_job("moved", next_run=datetime(2030, 1, 1, 12, 0))
            m = ScheduledJobManager({nats_url!r})
            return [(await m.get(k)).next_run_utc for k in (job.job_id, "start", "moved")]
        print(json.dumps({{"stored": asyncio.run(main()), "pure": to_timestamp(datetime(2030, 1, 1, 12, 0))}}))
    """, TZ="America/New_York")
    assert out == {"stored": [expected] * 3, "pure": expected}
