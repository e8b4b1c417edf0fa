"""The sync bridge: `*_sync` calls from scripts, threads and running loops; Ctrl-C; the `nest` opt-in."""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import nats
import pytest

import naq_ipy
from naq_ipy import ConfigurationError, NaqException, Queue
from naq_ipy.client.bridge import bridge_loop, get_loop_mode, in_bridge_thread, run_sync, stop_bridge
from naq_ipy.wire.connection import get_connection


def add(a: int, b: int = 0) -> int:
    return a + b


def stream_count(url: str, subject: str = "naq.queue.>") -> int:
    """Messages on `subject` in `naq_jobs`, counted by a plain nats-py client on a throwaway loop."""

    async def count() -> int:
        nc = await nats.connect(url, allow_reconnect=False)
        try:
            info = await nc.jetstream().stream_info("naq_jobs", subjects_filter=subject)
            return sum((info.state.subjects or {}).values())
        finally:
            await nc.close()

    return asyncio.run(count())


def test_a_thousand_sync_calls_in_a_row(nats_url: str) -> None:
    ids = {naq_ipy.enqueue_sync(add, i, queue_name="loop", nats_url=nats_url).job_id for i in range(1000)}
    assert len(ids) == 1000
    assert stream_count(nats_url, "naq.queue.loop") == 1000


def test_four_threads_at_once(nats_url: str) -> None:
    queue = Queue("threads", nats_url)
    barrier = threading.Barrier(4)

    def worker(n: int) -> list[str]:
        barrier.wait()
        return [queue.enqueue_sync(add, n, i).job_id for i in range(100)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, range(4)))
    assert sum(len(r) for r in results) == 400 and len({i for r in results for i in r}) == 400
    assert stream_count(nats_url, "naq.queue.threads") == 400


def test_sync_calls_inside_asyncio_run(nats_url: str) -> None:
    async def body() -> list[str]:
        assert asyncio.get_running_loop().is_running()
        first = naq_ipy.enqueue_sync(add, 1, queue_name="in-loop", nats_url=nats_url)
        second = Queue("in-loop", nats_url).enqueue_sync(add, 2)
        naq_ipy.schedule_sync(add, interval=60, name="from-loop", nats_url=nats_url)
        listed = naq_ipy.list_scheduled_jobs_sync(nats_url=nats_url)
        await asyncio.sleep(0)
        return [first.job_id, second.job_id, *(r.key for r in listed)]

    ids = asyncio.run(body())
    assert len(ids) == 3 and ids[2] == "from-loop"
    assert stream_count(nats_url, "naq.queue.in-loop") == 2


async def test_sync_calls_from_an_async_test_body(nats_url: str) -> None:
    job = naq_ipy.enqueue_sync(add, 1, queue_name="async-body", nats_url=nats_url)
    assert naq_ipy.purge_queue_sync("async-body", nats_url=nats_url) == 1
    assert job.queue_name == "async-body"


def test_run_sync_from_the_bridge_thread_is_refused() -> None:
    async def inner() -> int:
        return 1

    coro = inner()

    def call_on_bridge() -> None:
        assert in_bridge_thread()
        run_sync(coro)

    future: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        try:
            call_on_bridge()
            future.set_result(None)
        except BaseException as e:  # handed to the test thread below
            future.set_exception(e)

    bridge_loop().call_soon_threadsafe(run)
    with pytest.raises(NaqException, match="bridge thread"):
        future.result(5)
    assert coro.cr_frame is None  # closed, not left un-awaited
    assert not in_bridge_thread()
    assert run_sync(asyncio.sleep(0, "still works")) == "still works"


def test_sync_helper_from_async_code_on_the_bridge_is_refused(nats_url: str) -> None:
    async def misuse() -> None:
        naq_ipy.enqueue_sync(add, 1, nats_url=nats_url)

    with pytest.raises(NaqException, match="await the async API"):
        run_sync(misuse())


def test_ctrl_c_cancels_the_running_coroutine() -> None:
    cancelled = threading.Event()

    async def long_call() -> None:
        # the interrupt is raised only once the call is in flight, so it lands inside run_sync
        asyncio.get_running_loop().call_later(0.2, _thread.interrupt_main)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_sync(long_call())
    assert time.monotonic() - started < 3
    assert cancelled.wait(3), "the coroutine kept running after Ctrl-C"
    assert run_sync(asyncio.sleep(0, 7)) == 7


def test_errors_and_timeouts_come_back_unchanged(nats_url: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        naq_ipy.enqueue_sync(add, 1, queue_name="a.b", nats_url=nats_url)
    with pytest.raises(TimeoutError):
        run_sync(asyncio.sleep(5), timeout_s=0.1)

    async def boom() -> None:
        raise ValueError("from the bridge")

    with pytest.raises(ValueError, match="from the bridge"):
        run_sync(boom())


def test_stop_bridge_then_use_again(nats_url: str) -> None:
    naq_ipy.enqueue_sync(add, 1, nats_url=nats_url)
    first = bridge_loop()
    stop_bridge()
    assert first.is_closed()
    naq_ipy.enqueue_sync(add, 2, nats_url=nats_url)
    assert bridge_loop() is not first
    assert stream_count(nats_url) == 2


def test_sync_twins_are_named_and_documented() -> None:
    assert Queue.enqueue_sync.__name__ == "enqueue_sync"
    assert naq_ipy.schedule_sync.__name__ == "schedule_sync"
    assert "Blocking twin of `enqueue`" in (Queue.enqueue_sync.__doc__ or "")
    for name in naq_ipy.__all__:
        if name.endswith("_sync") and name != "run_sync":
            assert callable(getattr(naq_ipy, name))
            assert hasattr(naq_ipy, name.removesuffix("_sync")), name


def test_pooled_bridge_connection_survives_many_calls(nats_url: str) -> None:
    conn = run_sync(get_connection(nats_url))
    for i in range(10):
        naq_ipy.enqueue_sync(add, i, nats_url=nats_url)
        Queue("other", nats_url).purge_sync()
    assert run_sync(get_connection(nats_url)) is conn
    assert conn.nc.is_connected and not conn.nc.is_closed


def _run_script(source: str, url: str = "", **env: str) -> dict[str, object]:
    full_env = {k: v for k, v in os.environ.items() if k != "NAQ_LOOP_MODE"} | env
    script = textwrap.dedent(source).replace("URL", repr(url))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=full_env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    return dict(json.loads(lines[-1]), stderr=done.stderr)


def test_importing_does_not_apply_nest_asyncio() -> None:
    out = _run_script("""
        import asyncio, json, sys
        run, task, get_loop = asyncio.run, asyncio.Task, asyncio.get_event_loop
        import naq_ipy
        loop = asyncio.new_event_loop()
        print(json.dumps({
            "patched": hasattr(asyncio, "_nest_patched") or hasattr(type(loop), "_nest_patched"),
            "same": asyncio.run is run and asyncio.Task is task and asyncio.get_event_loop is get_loop,
            "imported": "nest_asyncio" in sys.modules,
            "mode": naq_ipy.client.bridge.get_loop_mode(),
        }))
    """)
    assert out["patched"] is False and out["same"] is True and out["imported"] is False
    assert out["mode"] == "thread"
    assert get_loop_mode() == "thread"


def test_nest_mode_when_explicitly_chosen(nats_url: str) -> None:
    out = _run_script("""
        import asyncio, json, naq_ipy
        def f(x):
            return x
        naq_ipy.set_loop_mode("nest")
        async def main():
            return naq_ipy.enqueue_sync(f, 1, queue_name="nest", nats_url=URL)
        in_loop = asyncio.run(main())
        bridge_after_loop = naq_ipy.client.bridge._bridge.thread is not None
        patched = hasattr(asyncio, "_nest_patched")
        plain = naq_ipy.enqueue_sync(f, 2, queue_name="nest", nats_url=URL)  # no loop to re-enter
        print(json.dumps({"ids": [in_loop.job_id, plain.job_id], "patched": patched,
                          "bridge_after_loop": bridge_after_loop}))
    """, nats_url)
    # inside a running loop the call re-entered that loop (nest_asyncio), not the bridge thread
    assert out["patched"] is True and out["bridge_after_loop"] is False, out
    assert "Traceback" not in str(out["stderr"])
    assert len(set(out["ids"])) == 2  # type: ignore[arg-type]
    assert stream_count(nats_url, "naq.queue.nest") == 2


def test_loop_mode_setting() -> None:
    with pytest.raises(ConfigurationError, match="loop mode"):
        naq_ipy.set_loop_mode("greenlet")
    assert get_loop_mode() == "thread"
    out = _run_script("import json, naq_ipy; print(json.dumps({'mode': naq_ipy.client.bridge.get_loop_mode()}))",
                      NAQ_LOOP_MODE="nest")
    assert out["mode"] == "nest"
