"""What the commands that run Jupyter servers share: missing extras, SIGTERM as Ctrl-C, stopping a child."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The modules of `names` that cannot be imported here (an optional extra not installed)."""
    return [name for name in names if not _importable(name)]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # an import hook that refuses it, or a broken parent package
        return False


def interrupt(signum: int, frame: Any) -> None:
    """A signal handler that raises KeyboardInterrupt."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread, so one cleanup path serves both."""
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_process(process: subprocess.Popen[Any], timeout_s: float) -> None:
    """SIGTERM (JupyterLab then shuts its kernels down), SIGKILL to its group after `timeout_s`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
