"""Bench helpers: progress lines, and naq subprocesses (worker, scheduler) with their logs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

BENCH_DIR = Path(__file__).resolve().parent
POLL_S = 0.02
READY_TIMEOUT_S = 20.0


def say(text: str) -> None:
    """A progress line on stderr."""
    print(text, file=sys.stderr, flush=True)



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
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH")) if p)
    log = open(log_path, "wb")  # noqa: SIM115 - closed by Child.stop
    proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)
    return Child(proc, log_path, log)


async def wait_for_log(child: Child, text: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until `text` appears in the child's log; RuntimeError if it exits or times out first."""
    deadline = time.monotonic() + timeout_s
    while text not in child.log_text():
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{child.proc.args} not ready ({text!r} not logged):\n{child.log_text()[-3000:]}")
        await asyncio.sleep(POLL_S)
