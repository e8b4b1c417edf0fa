"""Throughput bench: naq_ipy vs raw nats-py vs SAQ / arq / RQ on no-op jobs, plus scheduler fire lag.

Run by hand (not in CI) from the repository root:

    .venv/bin/python bench/throughput.py [--jobs 10000]

Exits 1 when any system lost a job (or a scheduled run never finished). The report goes to
stdout and to `bench/results/throughput.txt`; progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
from common import BENCH_DIR, POLL_S, Child, cpu_s, load_average, mem_total_gib, say, spawn, wait_for_log
from firelag import lag_lines, run_lag
from nats.js import JetStreamContext, api
from peers import Row, noop, rate, run_arq, run_rq, run_saq, version

from naq_ipy.client.job import Job
from naq_ipy.client.queue import Queue
from naq_ipy.status.results import FINISHED, JobStatus
from naq_ipy.wire.connection import Connection, close_all, get_connection
from naq_ipy.wire.names import JOB_STATUS_KV_NAME, JOB_STREAM_NAME
from naq_ipy.wire.server import NatsServer, find_server_binary

RESULTS_FILE = BENCH_DIR / "results" / "throughput.txt"
QUEUE = "bench"
STALL_S = 20.0
# publish_async with a wait_stall wraps each semaphore acquire in asyncio.wait_for: on Python 3.11
# that costs ~4x in throughput; None is safe here since the gather below has a timeout
WAIT_STALL: float | None = None


@contextlib.contextmanager
def py_spy(pid: int, output: str | None) -> Iterator[None]:
    """Record the worker with py-spy (when `output` is given and py-spy is installed) while the block runs."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if output is None or not Path(exe).exists():
        if output is not None:
            say("py-spy not found: no profile recorded")
        yield
        return
    fmt = "speedscope" if output.endswith(".json") else "raw" if output.endswith(".txt") else "flamegraph"
    spy = subprocess.Popen([exe, "record", "--pid", str(pid), "-o", output, "--format", fmt, "--rate", "250"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # let py-spy attach before the jobs arrive
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        say(f"py-spy profile written to {output}")


# --- naq ----------------------------------------------------------------------------------------


@dataclass
class NaqRun:
    """What the naq phase measured."""

    row: Row
    job_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    worker_cpu_ms_per_job: float = 0.0


async def naq_enqueue(queue: Queue, n: int) -> tuple[float, float, list[str]]:
    """Enqueue N/5 jobs one by one (then purge them), then N with `enqueue_many`; rates and the N ids."""
    await queue.enqueue(noop)  # warm-up: connection, stream
    await queue.purge()
    start = time.perf_counter()
    for _ in range(n // 5):
        await queue.enqueue(noop)
    one = rate(n // 5, time.perf_counter() - start)
    await queue.purge()
    start = time.perf_counter()
    jobs = await queue.enqueue_many([(noop, ()) for _ in range(n)])
    bulk = rate(n, time.perf_counter() - start)
    return one, bulk, [job.job_id for job in jobs]


async def wait_drained(conn: Connection, child: Child) -> float:
    """Poll the job stream every 20 ms until it holds no message; returns that time (UTC seconds)."""
    last, moved = -1, time.monotonic()
    while True:
        left = (await conn.js.stream_info(JOB_STREAM_NAME)).state.messages
        now = time.time()
        if left == 0:
            return now
        if child.proc.poll() is not None:
            raise RuntimeError(f"the naq worker exited with code {child.proc.returncode}")
        if left != last:
            last, moved = left, time.monotonic()
        elif time.monotonic() - moved > STALL_S:
            say(f"naq: {left} messages stuck in the stream for {STALL_S:g} s; giving up")
            return now
        await asyncio.sleep(POLL_S)


async def read_statuses(conn: Connection, keys: str = ">") -> dict[str, JobStatus]:
    """The current status record of every job id matching `keys` (one KV watch, current values only)."""
    kv = await conn.kv(JOB_STATUS_KV_NAME)
    watcher = await kv.watch(keys, ignore_deletes=True)
    found: dict[str, JobStatus] = {}
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.value and entry.operation is None:
                found[entry.key] = JobStatus.from_bytes(entry.value, entry.revision or 0)
    finally:
        await watcher.stop()
    return found


async def run_naq(conn: Connection, server: NatsServer, n: int, concurrency: int, worker: list[Child],
                  workdir: Path, profile: str | None, worker_args: tuple[str, ...] = ()) -> NaqRun:
    """Enqueue, start one worker subprocess (kept in `worker` for later phases), time the drain, verify.

    `worker_args`: more `naq worker` flags (bench/output.py compares `--no-capture`).
    """
    url = server.url
    queue = Queue(QUEUE, url)
    one, bulk, job_ids = await naq_enqueue(queue, n)
    say(f"naq: enqueue one-by-one {one:,.0f}/s, enqueue_many {bulk:,.0f}/s; starting the worker")
    spawned = time.time()
    child = spawn("naq_ipy.cli", ["worker", QUEUE, "-c", str(concurrency), "--url", url, *worker_args],
                  workdir / "worker.log")
    worker.append(child)
    with py_spy(child.proc.pid, profile):
        server_before = cpu_s(server.pid)
        await wait_for_log(child, "started on")  # the worker's CPU counts from here: its imports are no job's
        cpu_before = cpu_s(child.proc.pid)
        done = await wait_drained(conn, child)
        cpu, server_cpu = cpu_s(child.proc.pid) - cpu_before, cpu_s(server.pid) - server_before
    statuses = await read_statuses(conn)
    mine = [statuses.get(job_id) for job_id in job_ids]
    finished = [s for s in mine if s is not None and s.status == FINISHED]
    first = min((s.started_at for s in finished if s.started_at), default=spawned)
    processed = rate(len(finished), done - first)
    notes = [
        f"naq processed/s counts from the first job's `started_at` to an empty stream; with the worker "
        f"subprocess start-up included it is {rate(len(finished), done - spawned):,.0f}/s "
        f"(start-up {first - spawned:.2f} s)",
        f"naq worker CPU while draining (from its 'started on' line): {cpu:.2f} s for {len(finished):,} jobs "
        f"({1e3 * cpu / max(len(finished), 1):.3f} ms/job, {100 * cpu / max(done - first, 1e-9):.0f}% of one core); "
        f"nats-server CPU meanwhile {server_cpu:.2f} s",
    ]
    row = Row(f"naq_ipy {version('naq_ipy')}", one, bulk, processed, lost=n - len(finished),
              note=f"enqueue_many; worker subprocess -c {concurrency}")
    return NaqRun(row, job_ids, notes, 1e3 * cpu / max(len(finished), 1))


# --- raw nats-py ----------------------------------------------------------------------------------


async def raw_publish(js: JetStreamContext, subject: str, payload: bytes, n: int) -> tuple[float, float]:
    """Awaited `js.publish` for N/5 messages (then purged), then `publish_async` for N; both rates."""
    start = time.perf_counter()
    for _ in range(n // 5):
        await js.publish(subject, payload)
    one = rate(n // 5, time.perf_counter() - start)
    await js.purge_stream("bench_raw")
    start = time.perf_counter()
    futures = [await js.publish_async(subject, payload, wait_stall=WAIT_STALL) for _ in range(n)]
    await asyncio.wait_for(asyncio.gather(*futures), 30)
    return one, rate(n, time.perf_counter() - start)


async def raw_consume(js: JetStreamContext, subject: str, n: int) -> tuple[float, int]:
    """One pull consumer: `fetch(100)` + `ack()` until N messages arrived (or the stream stays empty)."""
    sub = await js.pull_subscribe(subject, durable="bench_raw")
    got, start = 0, time.perf_counter()
    while got < n:
        try:
            msgs = await sub.fetch(100, timeout=2.0)
        except nats.errors.TimeoutError:
            break
        for msg in msgs:
            await msg.ack()
        got += len(msgs)
    await js._nc.flush()
    return rate(got, time.perf_counter() - start), got


async def run_raw(url: str, n: int, payload: bytes) -> Row:
    """The ceiling: plain nats-py on a work-queue stream, same server, naq-sized payloads."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="bench_raw", subjects=["bench.raw"], retention=api.RetentionPolicy.WORK_QUEUE)
        one, bulk = await raw_publish(js, "bench.raw", payload, n)
        processed, got = await raw_consume(js, "bench.raw", n)
        await js.delete_stream("bench_raw")
    finally:
        await nc.close()
    return Row(f"raw nats-py {version('nats-py')}", one, bulk, processed, lost=n - got,
               note="publish / publish_async; fetch(100) + ack()")


# --- report ----------------------------------------------------------------------------------------------


def tool_version(cmd: list[str]) -> str:
    """The first line a `--version` command prints, or `missing`."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "missing"


def header(n: int, concurrency: int) -> list[str]:
    """Date, machine and versions."""
    redis = shutil.which("redis-server")
    redis_v = tool_version([redis, "--version"]).split(" sha=")[0] if redis else "redis-server missing"
    return [
        f"# naq_ipy throughput bench - {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} - nproc {os.cpu_count()}, "
        f"RAM {mem_total_gib():.1f} GiB, Python {platform.python_version()}",
        f"# {tool_version([find_server_binary(), '--version'])}; nats-py {version('nats-py')}; "
        f"arq {version('arq')}; saq {version('saq')}; rq {version('rq')}; {redis_v}",
        f"# {n:,} no-op jobs per system, one worker with concurrency {concurrency}, all on loopback; "
        f"load average at start {load_average()}",
    ]


def fmt(value: float | None) -> str:
    """A rate with thousands separators, or a dash."""
    return "-" if value is None else f"{value:,.0f}"


def table(rows: list[Row], naq_processed: float | None) -> list[str]:
    """The markdown table; ratio = naq processed / this row's processed."""
    lines = ["| system | enqueue one-by-one /s | enqueue bulk /s | processed /s | naq processed / this |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        if row.skipped:
            lines.append(f"| {row.system} | skipped: {row.skipped} | | | |")
            continue
        ratio = f"{naq_processed / row.processed:.2f}x" if naq_processed and row.processed else "-"
        lost = f" **LOST {row.lost}**" if row.lost else ""
        lines.append(f"| {row.system}{lost} | {fmt(row.one_by_one)} | {fmt(row.bulk)} | {fmt(row.processed)} "
                     f"| {ratio} |")
    return lines


def row_notes(row: Row) -> list[str]:
    """A row's note and the load average its phase started under."""
    load = [] if row.load is None else [f"1-min load average at its start {row.load:.2f}"]
    return ([row.note] if row.note else []) + load


def report(head: list[str], rows: list[Row], lag: list[str], notes: list[str]) -> str:
    """The whole report text."""
    naq = rows[0].processed
    body = [*head, "", *table(rows, naq), "", *lag, "", "Notes:", f"- load average at the end {load_average()}"]
    body += [f"- {row.system}: {'; '.join(row_notes(row))}" for row in rows if not row.skipped]
    body += [f"- {note}" for note in notes]
    return "\n".join(body) + "\n"


# --- main --------------------------------------------------------------------------------------------------


async def run_nats_part(args: argparse.Namespace, workdir: Path) -> tuple[list[Row], list[str], list[str], int]:
    """naq, raw nats-py and the fire lag, on one embedded server; (rows, lag lines, notes, missing runs)."""
    server = NatsServer(store_dir=workdir / "nats").start()
    worker: list[Child] = []
    try:
        conn = await get_connection(server.url)
        load = os.getloadavg()[0]
        naq = await run_naq(conn, server, args.jobs, args.concurrency, worker, workdir, args.profile)
        say(f"naq: processed {fmt(naq.row.processed)}/s, lost {naq.row.lost}")
        naq.row.load = load
        payload = Job(noop, queue_name=QUEUE).serialize()
        load = os.getloadavg()[0]
        raw = await run_raw(server.url, args.jobs, payload)
        raw.load = load
        say(f"raw nats-py: processed {fmt(raw.processed)}/s")
        lag = await run_lag(conn, server.url, QUEUE, args.schedules, args.repeat, workdir)
        notes = naq.notes + worker_log_notes(worker[0])
        return [naq.row, raw], lag_lines(lag), notes, lag.expected - len(lag.start_ms)
    finally:
        for child in worker:
            say(f"naq worker exited with code {child.stop()}")
        with contextlib.suppress(Exception):
            await close_all()
        server.stop()


def worker_log_notes(child: Child) -> list[str]:
    """Warnings and errors the naq worker logged (first few)."""
    bad = [line for line in child.log_text().splitlines() if " WARNING " in line or " ERROR " in line]
    if not bad:
        return ["naq worker log: no warnings or errors"]
    return [f"naq worker log: {len(bad)} warning/error lines, first: {bad[0][:300]}"]


async def run_peers(n: int, concurrency: int) -> list[Row]:
    """SAQ, arq and RQ, each on its own redis-server."""
    logging.getLogger("saq").setLevel(logging.ERROR)  # its stop() warns about cancelling idle pollers
    rows = []
    for name, runner in (("SAQ", run_saq), ("arq", run_arq)):
        say(f"{name}: running")
        load = os.getloadavg()[0]
        rows.append(await runner(n, concurrency))
        rows[-1].load = load
    say("RQ: running")
    load = os.getloadavg()[0]
    rows.append(run_rq(n))
    rows[-1].load = load
    return rows


async def run_all(args: argparse.Namespace) -> tuple[str, int]:
    """Every phase; returns the report and the exit code."""
    head = header(args.jobs, args.concurrency)
    with tempfile.TemporaryDirectory(prefix="naq-bench-") as folder:
        rows, lag, notes, missing = await run_nats_part(args, Path(folder))
    if not args.skip_peers:
        rows += await run_peers(args.jobs, args.concurrency)
    lost = [f"{row.system}: {row.lost}" for row in rows if row.lost]
    if missing:
        lost.append(f"scheduled runs never finished: {missing}")
    if lost:
        notes.append("LOST JOBS - " + "; ".join(lost))
    return report(head, rows, lag, notes), 1 if lost else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000, help="no-op jobs per system (default 10000)")
    parser.add_argument("--concurrency", type=int, default=10, help="worker concurrency (default 10)")
    parser.add_argument("--schedules", type=int, default=100, help="interval entries for the lag test (default 100)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per entry, 1 s apart (default 5)")
    parser.add_argument("--skip-peers", action="store_true", help="naq, raw nats-py and fire lag only")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the naq worker while it drains into FILE "
                        "(.svg flamegraph, .json speedscope, .txt raw collapsed stacks)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help=f"report file (default {RESULTS_FILE})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the bench, print and save the report; 1 if any job was lost."""
    args = parse_args(argv)
    text, code = asyncio.run(run_all(args))
    print(text, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    say(f"report written to {args.output}")
    return code


if __name__ == "__main__":
    sys.exit(main())
