"""Data-sized jobs beside raw nats-py Object Store put/get on the same embedded server (run by hand, not a test).

    .venv/bin/python bench/payloads.py [--sizes 1,10,100] [--fanout-mb 200] [--fanout-jobs 100]
                                       [--rounds N] [--out bench/results/payloads.txt]

For each size (MB) a float64 numpy array of that size: `enqueue(doubled, a)` (client: pickle with
out-of-band buffers, hash, upload) → one worker process reads it, returns `a * 2` (worker: read,
run, upload the result) → `result()` (client: read back). Beside it, in the same run, on the same
server: nats-py 2.16 `ObjectStore.put` of the same bytes, `get` (plain, quadratic: sizes up to
100 MB only) and `get(writeinto=...)`. Each size runs 5 / 3 / 1 rounds (up to 10 MB / 100 MB /
above; `--rounds` for every size) with new content each time, the two sides taking turns; medians
are reported. Peak RSS above the start of each phase is sampled every 5 ms for the client and the
worker (the largest).
Then the fan-out: `enqueue_many` of `--fanout-jobs` jobs sharing one `--fanout-mb` DataFrame (numpy
array without pandas), against one job with a value of that size.
Targets: put >= 1.0x nats-py put; get >= 3x nats-py get; fan-out <= 2x one job, value stored once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import nats
import numpy as np
from common import load_average, mem_total_gib, rss_mib, spawn, wait_for_log

from naq_ipy import Queue
from naq_ipy.status.results import fetch_result, wait_for_end
from naq_ipy.wire.connection import close_all, get_connection
from naq_ipy.wire.payloads import stored_bytes
from naq_ipy.wire.server import NatsServer

T = TypeVar("T")
MB = 1_000_000
QUEUE = "bench"


def doubled(value: Any) -> Any:
    """The job: its argument doubled (defined in `__main__`, so it travels by value like a notebook's)."""
    return value * 2


def one_cell(frame: Any, i: int) -> float:
    """The fan-out job: one number of the shared value (so what is timed is moving it, not computing)."""
    return float(frame.iloc[i, 0] if hasattr(frame, "iloc") else frame[i])


class PeakRss:
    """Samples the RSS of some pids every 5 ms; `peak_above(start)` per pid since the last `reset`."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.base = {pid: rss_mib(pid) for pid in pids}
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            for pid in self.pids:
                with contextlib.suppress(OSError, RuntimeError):  # a process gone: the run fails on its own
                    self.peak[pid] = max(self.peak[pid], rss_mib(pid))

    def reset(self) -> None:
        self.base = {pid: rss_mib(pid) for pid in self.pids}
        self.peak = dict(self.base)

    def above(self, pid: int) -> float:
        return self.peak[pid] - self.base[pid]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


async def timed(coro: Awaitable[T]) -> tuple[T, float]:
    started = time.perf_counter()
    value = await coro
    return value, time.perf_counter() - started


async def raw_side(url: str, data: bytes, plain_get: bool) -> dict[str, float]:
    """Seconds of nats-py put, get(writeinto) and (small sizes) plain get of `data`."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        store = await js.create_object_store("bench_raw")
        name = f"raw-{len(data)}"
        _, put_s = await timed(store.put(name, data))
        sink = io.BytesIO()
        _, into_s = await timed(store.get(name, writeinto=sink))
        times = {"put": put_s, "get_into": into_s}
        if plain_get:
            _, times["get"] = await timed(store.get(name))
        await store.delete(name)
        return times
    finally:
        await nc.close()


async def naq_side(url: str, queue: Queue, array: np.ndarray, peaks: PeakRss, worker_pid: int) -> dict[str, float]:
    """Seconds and peak RSS (MiB) of enqueue, worker, result for one array."""
    me = os.getpid()
    peaks.reset()
    job, enqueue_s = await timed(queue.enqueue(doubled, array))
    client_put_mib = peaks.above(me)
    peaks.reset()
    status, worker_s = await timed(wait_for_end(job.job_id, 600, url))
    worker_mib = peaks.above(worker_pid)
    peaks.reset()
    back, result_s = await timed(fetch_result(job.job_id, 600, url))
    client_get_mib = peaks.above(me)
    assert np.array_equal(back, array * 2), "the result is wrong"
    del back
    return {"enqueue": enqueue_s, "worker": worker_s, "result": result_s, "client_put_mib": client_put_mib,
            "client_get_mib": client_get_mib, "worker_mib": worker_mib,
            "read_s": (status.started_at or 0) - (job.enqueue_time + enqueue_s)}


def shared_value(megabytes: int, seed: int) -> Any:
    """A DataFrame of two float columns (a numpy array without pandas) of `megabytes`."""
    rows = megabytes * MB // 16
    try:
        import pandas as pd
    except ImportError:
        return np.random.default_rng(seed).random(rows * 2)
    return pd.DataFrame({"a": np.random.default_rng(seed).random(rows), "b": np.arange(rows, dtype="f8")})


async def fan_out(url: str, queue: Queue, megabytes: int, jobs: int) -> dict[str, float]:
    """Seconds of one job with the shared value, then of `jobs` jobs sharing it; bytes stored by the fan-out."""
    started = time.perf_counter()
    one = await queue.enqueue(one_cell, shared_value(megabytes, 1), 0)
    await fetch_result(one.job_id, 600, url)
    one_s = time.perf_counter() - started
    value = shared_value(megabytes, 2)
    before = await stored_bytes(await get_connection(url))
    started = time.perf_counter()
    fanned = await queue.enqueue_many([(one_cell, (value, i)) for i in range(jobs)])
    enqueue_s = time.perf_counter() - started
    for job in fanned:
        await fetch_result(job.job_id, 600, url)
    fan_s = time.perf_counter() - started
    return {"one": one_s, "fan": fan_s, "enqueue": enqueue_s,
            "stored_delta": await stored_bytes(await get_connection(url)) - before}


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per key: the median of the runs that have it (the largest for peak memory)."""
    keys = {key for run in runs for key in run}
    return {key: (max if key.endswith("_mib") else statistics.median)([run[key] for run in runs if key in run])
            for key in keys}


def mbps(size_mb: float, seconds: float) -> str:
    return f"{size_mb / seconds:,.0f}" if seconds > 0 else "-"


async def run(sizes: list[int], fan_mb: int, fan_jobs: int, workdir: Path, rounds_each: int | None = None) -> str:
    server = NatsServer(port=None, store_dir=workdir / "nats").start()
    worker = spawn("naq_ipy.cli", ["worker", QUEUE, "-c", "4", "--url", server.url], workdir / "worker.log")
    try:
        await wait_for_log(worker, "started")
        queue = Queue(QUEUE, server.url)
        peaks = PeakRss([os.getpid(), worker.proc.pid])
        lines = [f"# bench/payloads.py — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
                 f"{os.cpu_count()} cores, {mem_total_gib():.0f} GiB, load {load_average()}", "",
                 "| MB | rounds | naq enqueue MB/s | nats-py put MB/s | put ratio | naq result() MB/s "
                 "| nats-py get MB/s | get(writeinto) MB/s | get ratio (plain / writeinto) | worker s (read+run+write) "
                 "| client peak MiB put / get | worker peak MiB |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        await queue.enqueue(doubled, np.ones(200_000))  # warm-up: connections, bucket, worker's first job
        for size in sizes:
            rounds = rounds_each or (5 if size <= 10 else 3 if size <= 100 else 1)  # medians reported
            naqs, raws = [], []
            for turn in range(rounds):  # the sides take turns: a slow spell of the machine hits both
                # new content every round: an array stored before would only be looked up, not uploaded
                array = np.random.default_rng([size, turn]).random(size * MB // 8)
                naqs.append(await naq_side(server.url, queue, array, peaks, worker.proc.pid))
                # nats-py's plain get is quadratic (100 MB take half a minute): once is enough
                plain_get = size <= 10 or (size <= 100 and turn == 0)
                raws.append(await raw_side(server.url, array.tobytes(), plain_get))
            naq, raw = summary(naqs), summary(raws)
            plain = f"{raw['get'] / naq['result']:.1f}x" if "get" in raw else "-"
            lines.append(
                f"| {size:,} | {rounds} | {mbps(size, naq['enqueue'])} | {mbps(size, raw['put'])} | "
                f"{raw['put'] / naq['enqueue']:.2f}x | {mbps(size, naq['result'])} | "
                f"{mbps(size, raw['get']) if 'get' in raw else '-'} | {mbps(size, raw['get_into'])} | "
                f"{plain} / {raw['get_into'] / naq['result']:.1f}x | {naq['worker']:.2f} | "
                f"{naq['client_put_mib']:,.0f} / {naq['client_get_mib']:,.0f} | {naq['worker_mib']:,.0f} |")
            print(lines[-1], flush=True)
            del array
        fan = await fan_out(server.url, queue, fan_mb, fan_jobs)
        lines += ["", f"Fan-out: {fan_jobs} jobs sharing one {fan_mb} MB value: {fan['fan']:.2f} s "
                  f"(enqueue_many {fan['enqueue']:.2f} s) vs one job with it {fan['one']:.2f} s "
                  f"= {fan['fan'] / fan['one']:.2f}x (target <= 2x); the fan-out stored "
                  f"{fan['stored_delta'] / MB:,.1f} MB for it (stored once)."]
        peaks.stop()
        return "\n".join(lines) + "\n"
    finally:
        worker.stop()
        await close_all()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,10,100", help="array sizes in MB, comma-separated")
    parser.add_argument("--fanout-mb", type=int, default=200)
    parser.add_argument("--fanout-jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=None, help="rounds per size (default 5 / 3 / 1 by size)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "payloads.txt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="naq-payload-bench-") as tmp:
        report = asyncio.run(run([int(s) for s in args.sizes.split(",")], args.fanout_mb, args.fanout_jobs, Path(tmp),
                                 args.rounds))
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
