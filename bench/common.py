"""What the benches share: progress lines, machine facts, naq subprocesses with their logs, the report file."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

BENCH_DIR = Path(__file__).resolve().parent
POLL_S = 0.02
READY_TIMEOUT_S = 20.0


def say(text: str) -> None:
    """A progress line on stderr."""
    print(text, file=sys.stderr, flush=True)


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds used so far by process `pid` (0 if unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident set size of `pid` in MiB (VmRSS from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def mem_total_gib() -> float:
    """MemTotal from /proc/meminfo in GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def load_average() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews every number measured."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile `q` (0-100) of `values` (nan when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q / 100)) - 1]


def run_and_report(run: Callable[[Path], Awaitable[tuple[str, bool]]], output: Path, prefix: str) -> int:
    """Run a bench in a temp dir; print its report and write it to `output`. Exit code 1 unless it passed."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        text, ok = asyncio.run(run(Path(tmp)))
    print(text, end="")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return 0 if ok else 1


def bench_env() -> dict[str, str]:
    """The environment for naq subprocesses: the bench folder on PYTHONPATH (so `peers.noop` imports)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))}


def start_processes(commands: list[list[str]], ready: str, workdir: Path, name: str,
                    timeout_s: float = 30.0) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    """Start `python -m <command>` for each command, logging to `<name><i>.log`; wait until all logged `ready`."""
    procs, logs = [], []
    for i, command in enumerate(commands):
        log = workdir / f"{name}{i}.log"
        with log.open("wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", *command], env=bench_env(), stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT))
        logs.append(log)
    deadline = time.monotonic() + timeout_s
    while not all(ready in log.read_text() for log in logs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"{name} processes did not start:\n" + "\n".join(log.read_text() for log in logs))
        time.sleep(0.05)
    return procs, logs


def stop_all(procs: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> list[int | str]:
    """SIGTERM every process; SIGKILL the ones still running after `timeout_s`. Their exit codes."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    codes: list[int | str] = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout_s))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(f"killed: still running {timeout_s:g}s after SIGTERM")
    return codes



@dataclass
class Child:
    """A naq subprocess (worker or scheduler) with its log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def log_text(self) -> str:
        """Everything the child logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (a graceful stop), SIGKILL after `timeout_s`; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return int(self.proc.returncode)


def spawn(module: str, args: list[str], log_path: Path) -> Child:
    """Run `python -m module args` with the bench folder on PYTHONPATH (so `peers.noop` imports)."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed by Child.stop
    proc = subprocess.Popen([sys.executable, "-m", module, *args], env=bench_env(), stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)
    return Child(proc, log_path, log)


async def wait_for_log(child: Child, text: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until `text` appears in the child's log; RuntimeError if it exits or times out first."""
    deadline = time.monotonic() + timeout_s
    while text not in child.log_text():
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{child.proc.args} not ready ({text!r} not logged):\n{child.log_text()[-3000:]}")
        await asyncio.sleep(POLL_S)
