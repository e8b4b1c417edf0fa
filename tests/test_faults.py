"""Fault injection: each test kills, cuts off or skews one part and checks the promise in its name.

Faults tested elsewhere (not repeated here):
- worker SIGKILL mid-job → the job is redelivered and finishes once:
  tests/test_worker.py::test_job_of_a_killed_worker_is_redelivered_and_finishes_once
- one cluster node lost → no job lost or run twice, every fire exactly once: tests/test_cluster.py
- nats-server restart under a scheduler → no run lost or doubled, the watch comes back:
  tests/test_scheduler.py::test_fires_continue_across_a_server_restart
- garbage, truncated and wrong-type input → rejected, recorded, acked: tests/test_failed.py (here: hostile
  values in a well-formed header); forged or unsigned jobs → never unpickled: tests/test_signing.py
- corrupt schedule entries → reported and skipped: tests/test_scheduler.py; oversized payloads
  and results → a clear error: tests/test_bad_input.py, tests/test_worker.py
- clock of a single scheduler an hour fast: tests/test_scheduler.py (here: beside a true one)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import jobs
import pytest
from nats.js import JetStreamContext
from polling import eventually
from test_cluster import assert_grid, enqueue_until_acked, runs_on, tokens
from test_scheduler import QUEUE, entry_gone, interval_runs, quarter_after, running, store, wait_until
from test_worker import Spawn, running_worker, spawn_worker, stream_count  # noqa: F401 - a fixture

from naq_ipy import Job, Queue
from naq_ipy.client.job import rewrite_header
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.wire.connection import close_all, get_connection
from naq_ipy.wire.server import NatsServer
from naq_ipy.worker.failed_store import list_failed

TESTS_DIR = Path(__file__).parent


async def jetstream(url: str) -> JetStreamContext:
    """The JetStream context of this loop's pooled connection to `url`."""
    return (await get_connection(url)).js


async def all_gone(url: str, keys: list[str], timeout_s: float) -> None:
    """Wait until every entry of `keys` has finished (and was deleted)."""

    async def done() -> bool:
        return all([await entry_gone(url, key) for key in keys])

    await wait_until(done, timeout_s, "every entry to finish")


# --- hostile input the other suites do not send: well-formed jobs with hostile header values ---


HOSTILE_HEADERS = {
    "depends_on not a list": {"depends_on": 5},
    "retry_delay of unknown shape": {"retry_delay": {"kind": "nope"}},
    "enqueue_time not a number": {"enqueue_time": "yesterday"},
    "func_name not a string": {"func_name": ["x"]},
    "schedule_key not a string": {"schedule_key": {"a": 1}},
    "job_id with a wildcard": {"job_id": "a.>"},
    "negative timeout": {"timeout": -5},
}


async def test_hostile_header_values_are_rejected_acked_and_the_worker_goes_on(
    nats_url: str, raw_js: JetStreamContext,
) -> None:
    queue = Queue("hostile", nats_url)
    good = queue.job(jobs.add, (2, 3))
    hostile = [rewrite_header(queue.job(jobs.add, (1, 1)).serialize(), **change) for change in HOSTILE_HEADERS.values()]
    huge_length = b"NAQJ\x01\xff\xff\xff\xff" + good.serialize()[9:]
    async with running_worker(nats_url, "hostile") as worker:
        for data in [*hostile, huge_length]:
            await raw_js.publish("naq.queue.hostile", data)
        await queue.enqueue_job(good)
        assert await good.result(timeout=10) == 5
        await eventually(lambda: worker.failed == len(hostile) + 1, what="every hostile job to be rejected")

        async def all_acked() -> bool:
            return await stream_count(raw_js) == 0

        await wait_until(all_acked, 5, "every message to be acked")
        reasons = sorted(entry.reason for entry in await list_failed(nats_url))
    assert sum("has an invalid header" in reason for reason in reasons) == len(hostile), reasons
    assert sum("unreadable header" in reason for reason in reasons) == 1, reasons


# --- scheduler SIGKILL between publish and KV update ---


@pytest.mark.slow
async def test_scheduler_killed_between_publish_and_kv_update_fires_that_run_exactly_once(
    nats_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    start = quarter_after(2.0)  # the crashing scheduler needs about a second to start
    await store(nats_url, "crashy", start, interval_s=0.5, repeat=4)
    log = tmp_path / "crashing-scheduler.log"
    with log.open("wb") as out:
        crashing = subprocess.Popen(
            [sys.executable, str(TESTS_DIR / "crash_hooks.py"), "--url", nats_url, "-v"],
            env={**os.environ, "NAQ_TEST_CRASH_AFTER_PUBLISH": "1"}, stdout=subprocess.DEVNULL, stderr=out)
    assert await asyncio.to_thread(crashing.wait, 20) == -signal.SIGKILL, log.read_text()
    entry = await ScheduledJobManager(nats_url).get("crashy")
    assert (entry.run_count, entry.next_run_utc) == (0, start), "the entry was advanced before the crash"
    assert [run.due for run in await runs_on(await jetstream(nats_url), QUEUE)] == [start]
    caplog.set_level(logging.DEBUG, logger="naq_ipy.schedules.scheduler")
    async with running(nats_url):
        await all_gone(nats_url, ["crashy"], 10)
    assert_grid(await runs_on(await jetstream(nats_url), QUEUE), "crashy", interval_runs(start, 0.5, 4))
    assert f"run crashy.{int(start * 1000)} of crashy was already published" in caplog.text
    await close_all()


# --- nats-server SIGKILL and restart under a worker and a scheduler ---


async def enqueue_steadily(queue: Queue, path: Path, stop: asyncio.Event, acked: list[str]) -> None:
    """Enqueue `mark` jobs one by one until `stop`; a job whose enqueue returned is listed in `acked`."""
    number = 0
    while not stop.is_set():
        job: Job = queue.job(jobs.mark, (str(path), f"job-{number}"))
        await enqueue_until_acked(queue, [job], timeout_s=60)
        acked.append(f"job-{number}")
        number += 1
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_server_sigkill_and_restart_loses_no_enqueued_job_and_no_scheduled_run(
    nats_server_factory: Callable[..., NatsServer], spawn_worker: Spawn, tmp_path: Path,  # noqa: F811
) -> None:
    server = nats_server_factory()
    url, path = server.url, tmp_path / "marks"
    worker = spawn_worker(url, "faults", "-c", "4", "--ack-wait", "10")
    start = quarter_after(1.0)
    await store(url, "beat", start, interval_s=0.5, repeat=16)  # runs until after the restart
    queue, stop, acked = Queue("faults", url), asyncio.Event(), list[str]()
    async with running(url):
        await queue.enqueue_in(3.5, jobs.mark, str(path), "one-off")  # due while the server is down
        producer = asyncio.create_task(enqueue_steadily(queue, path, stop, acked))
        await asyncio.sleep(2.5)
        killed_at = time.time()
        server.kill()
        await asyncio.sleep(2.0)
        await asyncio.to_thread(server.start)
        await asyncio.sleep(1.5)
        stop.set()
        await producer
        await all_gone(url, ["beat"], 20)
        await eventually(lambda: set(acked) <= set(tokens(path)) and tokens(path)["one-off"], timeout_s=30,
                         what="every acked job and the one-off to run")
    # a SIGKILLed server may forget its last deliveries: only a job running at that moment may run again
    twice = [token for token, n in tokens(path).items() if n > 1]
    assert all(abs(jobs.marks(path, token)[0] - killed_at) < 1.0 for token in twice), (killed_at, twice)
    assert len(acked) > 50 and tokens(path)["one-off"] == 1
    assert_grid(await runs_on(await jetstream(url), QUEUE), "beat", interval_runs(start, 0.5, 16))
    assert worker.poll() is None
    await close_all()


# --- network partition of one scheduler ---


class Partition:
    """A TCP proxy in front of a server: `cut()` holds every byte in both directions, `heal()` lets them through.

    Like a real partition, nothing is lost and the TCP connection stays up: what was sent during
    the cut arrives late, all at once, when the link heals.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._links: set[asyncio.Future[tuple[BaseException | None, BaseException | None]]] = set()

    async def start(self) -> str:
        """Listen on a free port; returns the URL clients use to reach the server through the proxy."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def cut(self) -> None:
        """Stop forwarding (bytes wait in the proxy and the kernel buffers)."""
        self._open.clear()

    def heal(self) -> None:
        """Forward again, the held bytes first."""
        self._open.set()

    async def close(self) -> None:
        """Stop listening and drop every link."""
        self.heal()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._links, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += [writer, upstream_writer]
        link = asyncio.gather(self._pump(reader, upstream_writer), self._pump(upstream_reader, writer),
                              return_exceptions=True)
        self._links.add(link)
        await link

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._open.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def partition_in_front_of(url: str) -> AsyncIterator[tuple[Partition, str]]:
    """A Partition proxy to the server at `url` and the proxy's URL; closed on exit."""
    proxy = Partition(int(url.rsplit(":", 1)[1]))
    proxy_url = await proxy.start()
    try:
        yield proxy, proxy_url
    finally:
        await proxy.close()


@pytest.mark.slow
async def test_partitioned_scheduler_rejoins_without_a_second_fire_while_the_other_fires_on_time(
    nats_url: str,
) -> None:
    keys, count, step = ["p0", "p1", "p2"], 28, 0.25
    start = quarter_after(1.0)
    async with partition_in_front_of(nats_url) as (partition, proxy_url), \
            running(nats_url), running(proxy_url):
        for k, key in enumerate(keys):
            await store(nats_url, key, start + k * 0.05, interval_s=step, repeat=count)
        await asyncio.sleep(2.0)
        partition.cut()
        cut_at = time.time()
        await asyncio.sleep(3.0)
        partition.heal()
        healed_at = time.time()
        await all_gone(nats_url, keys, 15)
    runs = await runs_on(await jetstream(nats_url), QUEUE)
    for k, key in enumerate(keys):
        assert_grid(runs, key, interval_runs(start + k * 0.05, step, count))
    during = [run for run in runs if cut_at + 0.5 < run.due < healed_at]
    assert len(during) >= 2 * len(keys), "the other scheduler did not keep firing"
    assert max(run.stored_at - run.due for run in during) < 0.5, "runs due during the cut fired late"
    await close_all()


# --- one scheduler's clock an hour off ---


@pytest.mark.parametrize("offset_s", [3600.0, -3600.0], ids=["hour-fast", "hour-slow"])
async def test_scheduler_clock_an_hour_off_beside_a_true_one_fires_each_run_once_on_time(
    nats_url: str, offset_s: float,
) -> None:
    async with running(nats_url, clock=lambda: time.time() + offset_s) as skewed, running(nats_url):
        assert skewed.clock_offset_s == pytest.approx(-offset_s, abs=0.5)
        start = quarter_after(0.75)
        for k in range(2):
            await store(nats_url, f"skew{k}", start + k * 0.1, interval_s=0.25, repeat=6)
        await all_gone(nats_url, ["skew0", "skew1"], 10)
    runs = await runs_on(await jetstream(nats_url), QUEUE)
    for k in range(2):
        assert_grid(runs, f"skew{k}", interval_runs(start + k * 0.1, 0.25, 6))
    lags = [run.stored_at - run.due for run in runs]
    assert min(lags) > -0.01, "fired before its due time"
    assert max(lags) < 0.5, "fired late"
    await close_all()

