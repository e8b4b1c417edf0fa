"""Where a job's prints, log records and warnings go: the current job's sinks, chosen by context.

`install()` (once per process) puts proxies on `sys.stdout`/`sys.stderr`, a `logging.Handler`
on the root logger and a `warnings.showwarning`. Their target is the job running in the current
context (`ContextVar`s: coroutine jobs see them in their task, thread jobs in the copied context
they run in); outside a job, the real streams. So jobs running side by side never get each
other's lines. `FdPipe` points a process-pool child's file descriptors 1 and 2 at the job too,
so output of C extensions and subprocesses is kept.

A proxy's `write` is a C-level property (`ContextVar.get` as its getter) returning the bound
`append` of the job's list: a print inside a job runs no Python code of ours. Outside a job the
getter returns its default, the proxy itself, whose `__call__` writes to the real stream.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol, TextIO

STDOUT, STDERR = "stdout", "stderr"
LOG_FORMAT = "%(levelname)s:%(name)s:%(message)s"  # what `logging` prints in a plain local session
JOIN_TIMEOUT_S = 5.0
_READ_CHUNK = 64 * 1024


class Sink(Protocol):
    """What receives a job's text: `write(stream, text)`, False once it takes no more."""

    def write(self, stream: str, text: str) -> bool: ...


current_sink: ContextVar[Sink | None] = ContextVar("naq_job_sink", default=None)
stdout_append: ContextVar[Callable[[str], Any]] = ContextVar("naq_job_stdout")
stderr_append: ContextVar[Callable[[str], Any]] = ContextVar("naq_job_stderr")


class _StreamProxy:
    """`sys.stdout` / `sys.stderr`: `write` is the job's append inside a job, the proxy itself outside."""

    write: Any

    def __init__(self, real: TextIO) -> None:
        self._real = real

    def __call__(self, text: str) -> int:
        """`write` outside a job: the real stream's."""
        return self._real.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if current_sink.get() is None:
            self._real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _StdoutProxy(_StreamProxy):
    write = property(stdout_append.get)  # stdout_append.get(proxy): the job's append, else the proxy


class _StderrProxy(_StreamProxy):
    write = property(stderr_append.get)


class _JobLogHandler(logging.Handler):
    """Log records emitted inside a job, formatted as a plain local session would, into its stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = current_sink.get()
        if sink is None:
            return
        try:
            sink.write(STDERR, self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_installed: dict[str, Any] = {}


def install(level: int | str | None = None) -> None:
    """Route stdout, stderr, logging (INFO and up, or `level`; env NAQ_OUTPUT_LOG_LEVEL) and warnings by job."""
    if not isinstance(sys.stdout, _StreamProxy):  # (again, if someone put their own stream there since)
        sys.stdout = _StdoutProxy(sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, _StreamProxy):
        sys.stderr = _StderrProxy(sys.stderr)  # type: ignore[assignment]
    if _installed:
        return
    level = level or os.environ.get("NAQ_OUTPUT_LOG_LEVEL") or logging.INFO
    handler = _JobLogHandler(level)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > handler.level:  # else records below WARNING never reach a handler
        root.setLevel(handler.level)
    _installed.update(showwarning=warnings.showwarning, handler=handler)
    warnings.showwarning = _showwarning


def _showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    sink = current_sink.get()
    text = warnings.formatwarning(message, category, filename, lineno, line)
    if sink is None or file is not None or not sink.write(STDERR, text):
        _installed["showwarning"](message, category, filename, lineno, file, line)


def flush_c_stdio() -> None:
    """fflush(NULL): C stdio buffers of the job reach the pipes before they close."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


class FdPipe:
    """File descriptor `fd` pointed at a pipe whose reader thread writes into `sink`, until `restore`."""

    def __init__(self, fd: int, stream: str, sink: Sink) -> None:
        self.fd, self.stream, self.sink = fd, stream, sink
        with contextlib.suppress(AttributeError, ValueError, OSError):
            (sys.__stdout__ if fd == 1 else sys.__stderr__).flush()  # type: ignore[union-attr]
        self.saved = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self.thread = threading.Thread(target=self._read, args=(read_end,), name=f"naq-fd{fd}", daemon=True)
        self.thread.start()

    def _read(self, read_end: int) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        with open(read_end, "rb", buffering=0, closefd=True) as pipe:
            while chunk := pipe.read(_READ_CHUNK):
                self.sink.write(self.stream, decoder.decode(chunk))
        self.sink.write(self.stream, decoder.decode(b"", final=True))

    def restore(self) -> None:
        """Point `fd` back where it was; the reader ends at the pipe's end (or is left behind by a grandchild)."""
        os.dup2(self.saved, self.fd)
        os.close(self.saved)
        self.thread.join(JOIN_TIMEOUT_S)
