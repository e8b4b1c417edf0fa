"""Peer runners for `bench/throughput.py`: SAQ, arq and RQ, each on its own throw-away redis-server.

This module also holds the no-op job functions. Workers import them by reference
(`peers.noop`, `peers.rq_noop`), so the folder of this file must be on `sys.path` / `PYTHONPATH`.
Peer packages are imported lazily: a missing one skips its row instead of breaking the import.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

CHUNK = 1000  # jobs per asyncio.gather when a peer has no bulk enqueue
STALL_S = 15.0  # give up waiting when the finished count has not moved for this long
POLL_S = 0.02
REDIS_START_TIMEOUT_S = 10.0


async def noop() -> None:
    """The naq no-op job (a coroutine: run on the worker's loop, no thread hop)."""


async def saq_noop(ctx: dict[str, Any]) -> None:
    """The SAQ no-op job (SAQ passes a context dict)."""


async def arq_noop(ctx: dict[str, Any]) -> None:
    """The arq no-op job (arq passes a context dict)."""


def rq_noop() -> None:
    """The RQ no-op job (RQ runs plain functions)."""


@dataclass
class Row:
    """One system's line of the result table; rates are jobs per second, None when not measured."""

    system: str
    one_by_one: float | None = None
    bulk: float | None = None
    processed: float | None = None
    lost: int = 0
    note: str = ""
    skipped: str | None = None
    load: float | None = None  # 1-minute load average when this system's phase started


def rate(count: int, seconds: float) -> float:
    """`count / seconds`, safe for a zero duration."""
    return count / max(seconds, 1e-9)


def version(package: str) -> str:
    """The installed version of `package`, or `missing`."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """Run `redis-server` (no persistence) on a free port in a temp dir; yields the port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not found on PATH")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as folder:
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", folder]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + REDIS_START_TIMEOUT_S
            while not _redis_answers(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start")
                time.sleep(POLL_S)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def timed(make: Callable[[], Awaitable[Any]], count: int) -> float:
    """Await `make()` `count` times one after another; returns calls per second."""
    start = time.perf_counter()
    for _ in range(count):
        await make()
    return rate(count, time.perf_counter() - start)


async def gathered(make: Callable[[], Awaitable[Any]], count: int) -> tuple[float, list[Any]]:
    """Await `count` calls of `make()` concurrently in chunks of CHUNK; (calls per second, results)."""
    start = time.perf_counter()
    results: list[Any] = []
    for first in range(0, count, CHUNK):
        results += await asyncio.gather(*(make() for _ in range(min(CHUNK, count - first))))
    return rate(count, time.perf_counter() - start), results


async def wait_for_count(count: Callable[[], int], target: int, stall_s: float = STALL_S) -> int:
    """Poll `count()` until it reaches `target` or stops moving for `stall_s`; returns the last value."""
    last, moved = count(), time.monotonic()
    while last < target:
        await asyncio.sleep(POLL_S)
        now_count = count()
        if now_count != last:
            last, moved = now_count, time.monotonic()
        elif time.monotonic() - moved > stall_s:
            break
    return last


def _skip(system: str, package: str) -> Row | None:
    """A skipped Row if redis-server or `package` is missing, else None."""
    if shutil.which("redis-server") is None:
        return Row(system, skipped="redis-server not found")
    try:
        importlib.import_module(package)
    except ImportError:
        return Row(system, skipped=f"package {package!r} not installed")
    return None


async def run_saq(n: int, concurrency: int = 10) -> Row:
    """SAQ: enqueue (one by one, then gathered: SAQ has no bulk enqueue), one in-process Worker."""
    system = f"SAQ {version('saq')}"
    if (skipped := _skip(system, "saq")) is not None:
        return skipped
    with redis_server() as port:
        return await _saq_on(port, system, n, concurrency)


async def _saq_on(port: int, system: str, n: int, concurrency: int) -> Row:
    import saq

    queue = saq.Queue.from_url(f"redis://127.0.0.1:{port}", name="bench")
    await queue.connect()
    try:
        one = await timed(lambda: queue.enqueue("saq_noop"), n // 5)
        await queue.redis.flushall()
        bulk, jobs = await gathered(lambda: queue.enqueue("saq_noop"), n)
        keys = {job.key for job in jobs if job is not None}
        done: set[str] = set()

        async def after_process(ctx: dict[str, Any]) -> None:
            if ctx["job"].status == saq.Status.COMPLETE:
                done.add(ctx["job"].key)

        worker = saq.Worker(queue, functions=[saq_noop], concurrency=concurrency, after_process=after_process)
        start = time.perf_counter()
        task = asyncio.create_task(worker.start())
        await wait_for_count(lambda: len(done), n)
        elapsed = time.perf_counter() - start
        await worker.stop()
        await task
    finally:
        await queue.disconnect()
    return Row(system, one, bulk, rate(len(done & keys), elapsed), lost=len(keys - done), note="bulk = gather")


async def run_arq(n: int, concurrency: int = 10, poll_delay: float = 0.05) -> Row:
    """arq: `enqueue_job` one by one, then gathered; one burst Worker in process."""
    system = f"arq {version('arq')}"
    if (skipped := _skip(system, "arq")) is not None:
        return skipped
    with redis_server() as port:
        return await _arq_on(port, system, n, concurrency, poll_delay)


async def _arq_on(port: int, system: str, n: int, concurrency: int, poll_delay: float) -> Row:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker

    settings = RedisSettings(host="127.0.0.1", port=port)
    pool = await create_pool(settings)
    try:
        one = await timed(lambda: pool.enqueue_job("arq_noop"), n // 5)
        await pool.flushall()
        bulk, jobs = await gathered(lambda: pool.enqueue_job("arq_noop"), n)
        worker = Worker(functions=[arq_noop], redis_settings=settings, max_jobs=concurrency, burst=True,
                        poll_delay=poll_delay, handle_signals=False)
        start = time.perf_counter()
        await worker.async_run()
        elapsed = time.perf_counter() - start
        complete = worker.jobs_complete
        await worker.close()
    finally:
        await pool.aclose()
    enqueued = sum(job is not None for job in jobs)
    return Row(system, one, bulk, rate(complete, elapsed), lost=enqueued - complete,
               note=f"bulk = gather; poll_delay {poll_delay:g} s")


def run_rq(n: int) -> Row:
    """RQ: `enqueue` one by one, `enqueue_many`, then one in-process SimpleWorker in burst mode."""
    system = f"RQ {version('rq')} SimpleWorker"
    if (skipped := _skip(system, "rq")) is not None:
        return skipped
    with redis_server() as port:
        return _rq_on(port, system, n)


def _rq_on(port: int, system: str, n: int) -> Row:
    from redis import Redis
    from rq import Queue, SimpleWorker

    conn = Redis(host="127.0.0.1", port=port)
    try:
        queue = Queue("bench", connection=conn)
        start = time.perf_counter()
        for _ in range(n // 5):
            queue.enqueue(rq_noop)
        one = rate(n // 5, time.perf_counter() - start)
        conn.flushall()
        start = time.perf_counter()
        jobs = queue.enqueue_many([Queue.prepare_data(rq_noop) for _ in range(n)])
        bulk = rate(n, time.perf_counter() - start)
        worker = SimpleWorker([queue], connection=conn)
        start = time.perf_counter()
        worker.work(burst=True, logging_level="WARNING")
        elapsed = time.perf_counter() - start
        finished = queue.finished_job_registry.count
    finally:
        conn.close()
    return Row(system, one, bulk, rate(finished, elapsed), lost=len(jobs) - finished)
