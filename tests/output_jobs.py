"""Job functions printing, logging and warning, for the output-capture tests (importable by worker processes)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import warnings
from pathlib import Path

logger = logging.getLogger("noisy")


def noisy(n: int, tag: str = "line") -> int:
    """Print `n` lines, one to stderr, a logging warning, a warning and a line straight to file descriptor 1."""
    for i in range(n):
        print(f"{tag} {i}")
    print(f"{tag} to stderr", file=sys.stderr)
    logger.warning("%s logged", tag)
    warnings.warn(f"{tag} warned", UserWarning, stacklevel=1)
    sys.stdout.flush()
    os.write(1, f"{tag} from fd 1\n".encode())
    return n


async def noisy_async(n: int, tag: str = "line") -> int:
    """Coroutine twin of `noisy` (without the fd write: it runs in the worker's own process)."""
    for i in range(n):
        print(f"{tag} {i}")
        await asyncio.sleep(0)
    print(f"{tag} to stderr", file=sys.stderr)
    logger.warning("%s logged", tag)
    return n


def chatter(tag: str, n: int, pause_s: float) -> int:
    """Print `n` tagged lines with a pause between them (two of these run side by side)."""
    for i in range(n):
        print(f"{tag} {i}")
        time.sleep(pause_s)
    return n


def flood(total_mb: int) -> int:
    """Print `total_mb` MB of text in 1,000-character lines."""
    line = "x" * 999
    for _ in range(total_mb * 1000):
        print(line)
    return total_mb


def quiet() -> None:
    """Print nothing."""


def print_then_spin(tag: str, path: str) -> None:
    """Print a line, mark `path` with `printed`, then spin in pure Python until cancelled."""
    print(f"{tag} before the cancel")
    Path(path).write_text("printed")
    while True:
        pass


async def print_then_wait(tag: str, path: str) -> None:
    """Coroutine twin of `print_then_spin`: waits until cancelled."""
    print(f"{tag} before the cancel")
    Path(path).write_text("printed")
    await asyncio.sleep(3600)
