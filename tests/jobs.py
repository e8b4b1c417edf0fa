"""Job functions for worker tests: importable by worker subprocesses (tests/ is put on their PYTHONPATH).

Functions that leave evidence write one line per event into a file given by path, so a test
can see starts, ends and their times even when the worker ran in another process.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from typing import Any


def notebook_cell(source: str) -> dict[str, Any]:
    """Run `source` the way a notebook cell runs: in a `__main__` namespace that is not importable."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, "<notebook cell>", "exec"), namespace)
    return namespace


def mark(path: str, text: str) -> None:
    """Append `<unix time> <text>` as one line to `path` (atomic enough: one write under a lock)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{time.time():.6f} {text}\n")


def marks(path: str | Path, text: str | None = None) -> list[float]:
    """Times of the lines in `path` (optionally only those whose text is `text`)."""
    if not Path(path).exists():
        return []
    rows = [line.split(" ", 1) for line in Path(path).read_text().splitlines()]
    return [float(t) for t, what in rows if text is None or what == text]


def add(a: int, b: int) -> int:
    """a + b."""
    return a + b


async def square_async(x: int) -> int:
    """x squared, after yielding to the loop."""
    await asyncio.sleep(0)
    return x * x


def slow(path: str, seconds: float, value: object = None) -> object:
    """Mark `start`, sleep, mark `end`; return `value`."""
    mark(path, "start")
    time.sleep(seconds)
    mark(path, "end")
    return value


async def slow_async(path: str, seconds: float) -> str:
    """Mark `start`, sleep on the loop, mark `end`."""
    mark(path, "start")
    await asyncio.sleep(seconds)
    mark(path, "end")
    return "done"


def fail_times(path: str, failures: int) -> int:
    """Mark `start`; raise for the first `failures` calls (counted by start marks), then return the call count."""
    mark(path, "start")
    calls = len(marks(path, "start"))
    if calls <= failures:
        raise ValueError(f"planned failure {calls} of {failures}")
    return calls


def boom(message: str = "boom") -> None:
    """Always raise RuntimeError(message)."""
    raise RuntimeError(message)


def getpid() -> int:
    """The pid of the process running the job."""
    return os.getpid()


def unpicklable_result() -> object:
    """Return something cloudpickle cannot pickle (a lock)."""
    import threading

    return threading.Lock()


def big_result(size: int) -> bytes:
    """`size` bytes."""
    return b"x" * size


def sleep_reporting_pid(path: str, seconds: float) -> None:
    """Mark `pid <pid>`, then sleep, then mark `end`."""
    mark(path, f"pid {os.getpid()}")
    time.sleep(seconds)
    mark(path, "end")


def report_steps(steps: list[float], pause_s: float) -> str:
    """Report each fraction of `steps` with the message `step i of n`, pausing `pause_s` after each."""
    import naq_ipy

    for i, fraction in enumerate(steps, 1):
        naq_ipy.progress(fraction, f"step {i} of {len(steps)}")
        time.sleep(pause_s)
    return "reported"


async def report_steps_async(steps: list[float], pause_s: float) -> str:
    """`report_steps` for the worker's loop, through `progress_async`."""
    import naq_ipy

    for i, fraction in enumerate(steps, 1):
        await naq_ipy.progress_async(fraction, f"step {i} of {len(steps)}")
        await asyncio.sleep(pause_s)
    return "reported"


def report_tightly(seconds: float) -> int:
    """Call `progress` as fast as possible for `seconds`, then report 1.0; return the number of calls."""
    import naq_ipy

    calls, start = 0, time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        naq_ipy.progress(elapsed / seconds * 0.99)
        calls += 1
    naq_ipy.progress(1.0, "done")
    return calls + 1


def opened_while_loading(marks_path: str, gate: str, wait_s: float) -> bool:
    """Called while a pickle loads: mark `loading`, wait up to `wait_s` for file `gate`; True if it appeared."""
    mark(marks_path, "loading")
    deadline = time.monotonic() + wait_s
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return Path(gate).exists()


class SlowToLoad:
    """An argument whose unpickling blocks (up to `wait_s`) until file `gate` exists; loads as a bool."""

    def __init__(self, marks_path: str, gate: str, wait_s: float) -> None:
        self.args = (marks_path, gate, wait_s)

    def __reduce__(self) -> tuple[Any, ...]:
        return opened_while_loading, self.args


def identity(value: object) -> object:
    """`value` itself."""
    return value


def create_file(path: str) -> str:
    """Create file `path`."""
    Path(path).touch()
    return path


def enqueue_children(count: int) -> list[Any]:
    """Enqueue `count` jobs on queue `kids` (server and keys from this process's environment); return them."""
    from naq_ipy import Queue

    queue = Queue("kids")
    return [queue.enqueue_sync(add, i, i) for i in range(count)]


def busy_loop(path: str, limit_s: float = 120.0) -> str:
    """Mark `start`, spin in pure Python (no sleeping, no C call that blocks) up to `limit_s`, mark `end`."""
    mark(path, "start")
    deadline = time.monotonic() + limit_s
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    mark(path, "end")
    return "spun"


def touch(path: str, value: object = None) -> object:
    """Mark `ran` (the side effect a test looks for); return `value`."""
    mark(path, "ran")
    return value


def chatty(lines: int) -> int:
    """Print `lines` lines (`line 0`, ...) and return how many."""
    for i in range(lines):
        print(f"line {i}")
    return lines
