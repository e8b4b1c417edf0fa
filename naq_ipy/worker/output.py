"""A job's output, captured by context and streamed live: stdout, stderr, `logging` and `warnings`.

`install()` (once per process) puts a proxy on `sys.stdout`/`sys.stderr`, a `logging.Handler`
on the root logger and a `warnings.showwarning` that all write to the `JobOutput` of the job
running in the current context (a `ContextVar`: coroutine jobs see it in their task, thread
jobs in the copied context they run in), and to the real stream outside jobs. So jobs running
side by side never get each other's lines. A process-pool child also points its file
descriptors 1 and 2 at pipes for the job (`child_capture`), so C extensions' output is kept.

A `JobOutput` publishes batches (every `BATCH_S` or `BATCH_CHARS`) to `naq.logs.<job_id>` in
the stream `naq_job_logs`, pipelined (`publish_async`), on its loop: writers only append under a
lock. At most `CAP_CHARS` per job are kept, then one "output truncated" line; the rest is
dropped at once, so a job printing without end neither slows down nor grows the worker.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import logging
import os
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any, TextIO

import nats.errors

from naq_ipy.client.bridge import bridge_loop, run_sync
from naq_ipy.errors import NaqException
from naq_ipy.wire.connection import Connection, get_connection
from naq_ipy.wire.settings import (
    DEFAULT_RESULT_TTL_S,
    LOGS_STREAM_NAME,
    OUTPUT_STREAM_HEADER,
    ConnectionSettings,
    logs_subject,
)

logger = logging.getLogger(__name__)

STDOUT, STDERR = "stdout", "stderr"
BATCH_S = 0.1
BATCH_CHARS = 16 * 1024
CAP_CHARS = 1024 * 1024
FLUSH_TIMEOUT_S = 5.0
LOG_FORMAT = "%(levelname)s:%(name)s:%(message)s"  # what `logging` prints in a plain local session
TRUNCATED = "\n[naq: output truncated at {cap:,} characters; the rest of this job's output was dropped]\n"
_READ_CHUNK = 64 * 1024

_current: ContextVar[JobOutput | None] = ContextVar("naq_job_output", default=None)


class JobOutput:
    """The captured output of one job run: `write` from any thread, batches published on `loop`.

    `loop` None: the sync bridge's (a process-pool child); `conn` None: the pooled connection
    for `settings`. `ttl_s`: how long the output is kept (the job's result TTL).
    """

    def __init__(self, job_id: str, settings: ConnectionSettings, loop: asyncio.AbstractEventLoop | None = None,
                 conn: Connection | None = None, ttl_s: float | None = None, cap_chars: int = CAP_CHARS) -> None:
        self.job_id = job_id
        self.settings = settings
        self._subject = logs_subject(job_id)
        self._ttl_s = max(1.0, min(ttl_s or DEFAULT_RESULT_TTL_S, DEFAULT_RESULT_TTL_S))
        self._loop = loop
        self._conn = conn
        self._cap = cap_chars
        self._lock = threading.Lock()
        self._pending: list[tuple[str, str]] = []
        self._pending_chars = 0
        self._kept = 0
        self._truncated = False
        self._closed = False
        self._signalled = False
        self._event = asyncio.Event()
        self._urgent = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._acks: list[asyncio.Future[Any]] = []
        self.published = 0  # messages sent

    @property
    def used(self) -> bool:
        """True once anything was written."""
        return self._kept > 0

    def write(self, stream: str, text: str) -> bool:
        """Keep `text` of `stream` for publishing; False once closed (the caller writes it elsewhere)."""
        if not text:
            return True
        with self._lock:
            if self._closed:
                return False
            if self._truncated:
                return True
            room = self._cap - self._kept
            if len(text) > room:
                text = text[:room] + TRUNCATED.format(cap=self._cap)
                self._truncated = True
            self._kept += len(text)
            self._pending.append((stream, text))
            self._pending_chars += len(text)
            urgent = self._pending_chars >= BATCH_CHARS or self._truncated
            if self._signalled and not urgent:
                return True
            self._signalled = True
            loop = self._loop = self._loop or bridge_loop()
        with contextlib.suppress(RuntimeError):  # the loop closed under a thread that outlived its worker
            loop.call_soon_threadsafe(self._wake, urgent)
        return True

    def _wake(self, urgent: bool) -> None:
        if self._closing:  # aclose publishes what is left
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump(), name=f"naq-output-{self.job_id}")
        if urgent:
            self._urgent.set()
        self._event.set()

    async def _pump(self) -> None:
        while True:
            await self._event.wait()
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BATCH_S):
                        await self._urgent.wait()
            self._event.clear()
            self._urgent.clear()
            await self._flush()
            if self._closing:
                return

    def _take(self) -> list[tuple[str, str]]:
        """The pending writes merged into messages: one per run of a stream, at most BATCH_CHARS each."""
        with self._lock:
            pending, self._pending, self._pending_chars = self._pending, [], 0
            self._signalled = False
        messages: list[tuple[str, str]] = []
        for stream, text in pending:
            if messages and messages[-1][0] == stream and len(messages[-1][1]) + len(text) <= BATCH_CHARS:
                messages[-1] = (stream, messages[-1][1] + text)
            else:
                messages.extend((stream, text[i:i + BATCH_CHARS]) for i in range(0, len(text), BATCH_CHARS))
        return messages

    async def _flush(self) -> None:
        messages = self._take()
        if not messages:
            return
        try:
            conn = self._conn = self._conn or await get_connection(self.settings)
            await conn.ensure_stream(LOGS_STREAM_NAME)
            for stream, text in messages:
                headers = {OUTPUT_STREAM_HEADER: stream}
                ack = await conn.js.publish_async(self._subject, text.encode("utf-8", "replace"), wait_stall=1.0,
                                                  headers=headers, msg_ttl=self._ttl_s)
                self._acks.append(ack)
                self.published += 1
        except (NaqException, nats.errors.Error, OSError, TimeoutError) as e:  # output is best effort
            logger.warning("job %s: output not published: %s", self.job_id, e)

    async def aclose(self) -> None:
        """Take no more writes, publish what is pending and wait (at most FLUSH_TIMEOUT_S) for the acks."""
        with self._lock:
            self._closed = True
        self._closing = True
        if self._task is not None:
            self._urgent.set()
            self._event.set()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._flush()
        await self._settle_acks()

    async def flush(self) -> None:
        """Publish what is pending now and wait for the acks (a job cancelled mid-run keeps its output)."""
        await self._flush()
        await self._settle_acks()

    async def _settle_acks(self) -> None:
        acks, self._acks = self._acks, []
        if not acks:
            return
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT_S):
                results = await asyncio.gather(*acks, return_exceptions=True)
        except TimeoutError:
            logger.warning("job %s: output not acknowledged in %.0fs", self.job_id, FLUSH_TIMEOUT_S)
            return
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            logger.warning("job %s: %d output batches not stored: %s", self.job_id, len(failed), failed[0])


_active: dict[str, JobOutput] = {}


async def flush_job_output(job_id: str) -> bool:
    """Publish the output a running job has written so far (worker side); False if it captures nothing."""
    output = _active.get(job_id)
    if output is None:
        return False
    await output.flush()
    return True


def current_output() -> JobOutput | None:
    """The JobOutput of the job running in this context, or None."""
    return _current.get()


def delegate_to_child() -> ConnectionSettings | None:
    """The settings a process-pool child publishes the current job's output with (None: not captured)."""
    output = _current.get()
    return output.settings if output is not None else None


@contextlib.asynccontextmanager
async def capturing(job_id: str, conn: Connection, ttl_s: float | None = None,
                    enabled: bool = True) -> AsyncIterator[JobOutput | None]:
    """Worker side, around one run: the job's output goes to `naq.logs.<job_id>`; flushed on the way out."""
    if not enabled:
        yield None
        return
    install()
    output = JobOutput(job_id, conn.settings, asyncio.get_running_loop(), conn, ttl_s)
    token = _current.set(output)
    _active[job_id] = output
    try:
        yield output
    finally:
        _current.reset(token)
        if _active.get(job_id) is output:
            del _active[job_id]
        await asyncio.shield(output.aclose())


@contextlib.contextmanager
def child_capture(job_id: str, settings: ConnectionSettings | None, ttl_s: float | None = None) -> Iterator[None]:
    """Process-pool child side: Python output by context, fds 1 and 2 through pipes; no-op without `settings`."""
    if settings is None:
        yield
        return
    install()
    output = JobOutput(job_id, settings, ttl_s=ttl_s)
    token = _current.set(output)
    pipes = [_FdPipe(1, STDOUT, output), _FdPipe(2, STDERR, output)]
    try:
        yield
    finally:
        _flush_c_stdio()
        for pipe in pipes:
            pipe.restore()
        _current.reset(token)
        if output.used:  # most jobs print nothing: no connection for them
            try:
                run_sync(output.aclose(), FLUSH_TIMEOUT_S * 2)
            except (TimeoutError, NaqException) as e:
                logger.warning("job %s: output not published: %s", job_id, e)


def _flush_c_stdio() -> None:
    """fflush(NULL): C stdio buffers of the job reach the pipes before they close."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


class _FdPipe:
    """File descriptor `fd` pointed at a pipe whose reader thread writes into `output`, until `restore`."""

    def __init__(self, fd: int, stream: str, output: JobOutput) -> None:
        self.fd, self.stream, self.output = fd, stream, output
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
                self.output.write(self.stream, decoder.decode(chunk))
        self.output.write(self.stream, decoder.decode(b"", final=True))

    def restore(self) -> None:
        """Point `fd` back where it was; the reader ends at the pipe's end (or is left behind by a grandchild)."""
        os.dup2(self.saved, self.fd)
        os.close(self.saved)
        self.thread.join(FLUSH_TIMEOUT_S)


class _StreamProxy:
    """`sys.stdout` / `sys.stderr`: the current job's output inside a job, the real stream outside."""

    def __init__(self, stream: str, real: TextIO) -> None:
        self._stream = stream
        self._real = real

    def write(self, text: str) -> int:
        output = _current.get()
        if output is None or not output.write(self._stream, text):
            return self._real.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _current.get() is None:
            self._real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _JobLogHandler(logging.Handler):
    """Log records emitted inside a job, formatted as a plain local session would, into its stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        output = _current.get()
        if output is None:
            return
        try:
            output.write(STDERR, self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_installed: dict[str, Any] = {}


def install(level: int | str | None = None) -> None:
    """Route stdout, stderr, logging (INFO and up, or `level`; env NAQ_OUTPUT_LOG_LEVEL) and warnings by job."""
    if not isinstance(sys.stdout, _StreamProxy):  # (again, if someone put their own stream there since)
        sys.stdout = _StreamProxy(STDOUT, sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, _StreamProxy):
        sys.stderr = _StreamProxy(STDERR, sys.stderr)  # type: ignore[assignment]
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
    output = _current.get()
    if output is None or file is not None:
        _installed["showwarning"](message, category, filename, lineno, file, line)
        return
    output.write(STDERR, warnings.formatwarning(message, category, filename, lineno, line))
