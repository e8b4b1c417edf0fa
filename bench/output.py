"""Output-capture bench: what capturing a job's stdout, stderr and logging costs the worker.

Run by hand from the repository root:

    .venv/bin/python bench/output.py [--jobs 5000] [--rounds 3] [--lines 10000]

1. no-op jobs with capture on vs off (`naq worker --no-capture`): processed/s and worker CPU per
   job of one worker subprocess (`run_naq` of bench/throughput.py), rounds alternating, medians
   compared (goal: < 5%); and the capture's own cost per job measured in-process (it does not
   depend on other load on the machine the way the rates do);
2. one job printing `--lines` lines vs the same job printing them to /dev/null: the job's run time
   (`started_at` → `finished_at`), median of the rounds, in a thread worker and a process-pool
   worker (goal: < 2x).
The report goes to stdout and `bench/results/output.txt`; progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import BENCH_DIR, load_average, mem_total_gib, say, spawn, wait_for_log
from throughput import QUEUE, run_naq

from naq_ipy.client.queue import Queue
from naq_ipy.wire.connection import close_all, get_connection
from naq_ipy.wire.server import NatsServer
from naq_ipy.worker.output import capturing

RESULTS_FILE = BENCH_DIR / "results" / "output.txt"
JOB_WAIT_S = 120.0


def print_lines(n: int) -> int:
    """The job measured: print `n` short lines."""
    for i in range(n):
        print("line", i, "of the job's output")
    return n


def print_lines_to_devnull(n: int) -> int:
    """The baseline: the same prints, to /dev/null."""
    with open(os.devnull, "w") as sink:
        for i in range(n):
            print("line", i, "of the job's output", file=sink)
    return n


async def capture_cost_us(server: NatsServer, jobs: int) -> dict[bool, float]:
    """Microseconds per job of entering and leaving the capture around a silent run, on and off (in-process)."""
    conn = await get_connection(server.url)
    cost: dict[bool, float] = {}
    for enabled in (True, False, True, False):
        start = time.perf_counter()
        for i in range(jobs):
            async with capturing(f"bench-{enabled}-{i}", conn, None, enabled):
                pass
        cost[enabled] = 1e6 * (time.perf_counter() - start) / jobs  # the second pass of each counts
    return cost


async def noop_rates(server: NatsServer, jobs: int, rounds: int,
                     workdir: Path) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """processed/s and worker CPU ms per job of no-op jobs, capture on and off, `rounds` alternating runs each."""
    conn = await get_connection(server.url)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(rounds):
        for mode, args in (("on", ()), ("off", ("--no-capture",))):
            worker: list = []
            try:
                run = await run_naq(conn, server, jobs, 10, worker, workdir, None, args)
            finally:
                for child in worker:
                    child.stop()
            rates[mode].append(run.row.processed or 0.0)
            cpu[mode].append(run.worker_cpu_ms_per_job)
            say(f"round {i + 1} capture {mode}: {rates[mode][-1]:,.0f} jobs/s, {cpu[mode][-1]:.3f} ms CPU/job, "
                f"lost {run.row.lost}")
    return rates, cpu


async def print_durations(server: NatsServer, lines: int, rounds: int, workdir: Path,
                          process_pool: bool) -> dict[str, list[float]]:
    """Run times (s) of the printing job and of its /dev/null twin, `rounds` each, in one worker."""
    queue_name = f"{QUEUE}-print-{'p' if process_pool else 't'}"
    worker = spawn("naq_ipy.cli", ["worker", queue_name, "-c", "1", "--url", server.url,
                                   *(["--process-pool"] if process_pool else [])], workdir / f"{queue_name}.log")
    durations: dict[str, list[float]] = {"printed": [], "devnull": []}
    try:
        await wait_for_log(worker, "started on")
        queue = Queue(queue_name, server.url)
        await (await queue.enqueue(print_lines, 10)).result(JOB_WAIT_S)  # warm-up: a process child, the stream
        kept = 0
        for _ in range(rounds):
            for name, func in (("printed", print_lines), ("devnull", print_lines_to_devnull)):
                job = await queue.enqueue(func, lines)
                await job.result(JOB_WAIT_S)
                status = await job.status()
                durations[name].append(status.finished_at - status.started_at)
                kept = len(await job.logs()) if name == "printed" else kept
        say(f"{queue_name}: {kept:,} characters of output kept for a {lines:,}-line job")
    finally:
        worker.stop()
    return durations


def report(args: argparse.Namespace, rates: dict[str, list[float]], cpu: dict[str, list[float]],
           printing: dict[str, dict[str, list[float]]], cost: dict[bool, float]) -> str:
    """The report text."""
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    cpu_on, cpu_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    paired = statistics.median(a / b for a, b in zip(cpu["on"], cpu["off"], strict=True))
    extra_us = cost[True] - cost[False]
    lines = [
        f"naq_ipy output-capture bench · {os.cpu_count()} cores, {mem_total_gib():.0f} GiB · "
        f"load {load_average()} · Python {sys.version.split()[0]}",
        "",
        f"no-op jobs ({args.jobs:,} per run, worker -c 10, {args.rounds} alternating runs, medians):",
        f"  capture on  {on:,.0f} jobs/s   (runs: {', '.join(f'{r:,.0f}' for r in rates['on'])})",
        f"  capture off {off:,.0f} jobs/s   (runs: {', '.join(f'{r:,.0f}' for r in rates['off'])})",
        f"  cost of capture: {100 * (off - on) / off:+.1f}% of throughput (goal < 5%)",
        f"  worker CPU per job: {cpu_on:.3f} ms on, {cpu_off:.3f} ms off: {100 * (cpu_on - cpu_off) / cpu_off:+.1f}%"
        f" (median of the paired rounds' ratios: {100 * (paired - 1):+.1f}%)",
        f"  the capture itself, in-process ({args.jobs:,} silent runs): {cost[True]:.1f} us per job on, "
        f"{cost[False]:.1f} us off: +{extra_us:.1f} us = {100 * extra_us / (1e3 * cpu_off):.1f}% of the worker's "
        "CPU per job",
        "",
        f"a job printing {args.lines:,} lines vs the same prints to /dev/null ({args.rounds} runs, medians):",
    ]
    for pool, found in printing.items():
        printed, devnull = statistics.median(found["printed"]), statistics.median(found["devnull"])
        lines.append(f"  {pool:<8} printed {1e3 * printed:8.1f} ms · /dev/null {1e3 * devnull:8.1f} ms · "
                     f"ratio {printed / devnull:.2f}x (goal < 2x)")
    return "\n".join(lines) + "\n"


async def run_all(args: argparse.Namespace) -> str:
    """Both phases on one embedded server."""
    with tempfile.TemporaryDirectory(prefix="naq-bench-output-") as folder:
        workdir = Path(folder)
        server = NatsServer(store_dir=workdir / "nats").start()
        try:
            cost = await capture_cost_us(server, args.jobs)
            rates, cpu = await noop_rates(server, args.jobs, args.rounds, workdir)
            printing = {"thread": await print_durations(server, args.lines, args.rounds, workdir, False),
                        "process": await print_durations(server, args.lines, args.rounds, workdir, True)}
        finally:
            with contextlib.suppress(Exception):
                await close_all()
            server.stop()
    return report(args, rates, cpu, printing, cost)


def main(argv: list[str] | None = None) -> int:
    """Run the bench, print and save the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5_000, help="no-op jobs per run (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--lines", type=int, default=10_000, help="lines the printing job prints (default 10000)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help=f"report file (default {RESULTS_FILE})")
    args = parser.parse_args(argv)
    text = asyncio.run(run_all(args))
    print(text, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
