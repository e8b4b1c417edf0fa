"""A job's output captured and streamed live to `naq.logs.<job_id>` (stream `naq_job_logs`).

Around each run the worker makes a `JobOutput` current (see `naq_ipy.worker.streams` for how
prints, log records and warnings reach it). Writes only append to a list per stream (a C call,
atomic under the GIL); a timer on the publishing loop looks every `TICK_S` and takes a batch every
`BATCH_S` (sooner once `TAKE_WRITES` writes wait), published pipelined (`publish_async`) in
messages of at most `BATCH_CHARS`, a header saying `stdout` or `stderr`. At most `CAP_CHARS` per
job are kept, then one "output truncated" line and the rest is dropped as it is taken, so a job
printing without end is neither slowed down nor grows the worker; publishing problems are logged,
never raised into the job. The last batch is published (and acked) before the job's outcome is
written, so a reader that sees the job ended can read its output to the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats.errors

from naq_ipy.client.bridge import bridge_loop, run_sync
from naq_ipy.errors import NaqException
from naq_ipy.wire.connection import Connection, get_connection
from naq_ipy.wire.names import LOGS_STREAM_NAME, OUTPUT_STREAM_HEADER, logs_subject
from naq_ipy.wire.settings import DEFAULT_RESULT_TTL_S, ConnectionSettings
from naq_ipy.worker.streams import (
    STDERR,
    STDOUT,
    FdPipe,
    current_sink,
    flush_c_stdio,
    install,
    stderr_append,
    stdout_append,
)

logger = logging.getLogger(__name__)

TICK_S = 0.01
BATCH_S = 0.1
TAKE_WRITES = 4096
BATCH_CHARS = 16 * 1024
CAP_CHARS = 1024 * 1024
SWEEP_S = 1.0  # how often the output of a thread still running after its job ended (an overrun) is dropped
FLUSH_TIMEOUT_S = 5.0
TRUNCATED = "\n[naq: output truncated at {cap:,} characters; the rest of this job's output was dropped]\n"


class JobOutput:
    """The captured output of one job run: written from any thread, published from `loop`.

    `loop` None: the sync bridge's (a process-pool child); `conn` None: the pooled connection for
    `settings`. `ttl_s`: how long the output is kept (the job's result TTL).
    """

    def __init__(self, job_id: str, settings: ConnectionSettings, loop: asyncio.AbstractEventLoop | None = None,
                 conn: Connection | None = None, ttl_s: float | None = None, cap_chars: int = CAP_CHARS) -> None:
        self.job_id = job_id
        self.settings = settings
        self.pending: tuple[list[str], list[str]] = ([], [])  # stdout, stderr: their `append` is the sink
        self.closed = False
        self.full = False  # the cap was reached: what comes is dropped
        self._subject = logs_subject(job_id)
        self._ttl_s = max(1.0, min(ttl_s or DEFAULT_RESULT_TTL_S, DEFAULT_RESULT_TTL_S))
        self._loop = loop
        self._conn = conn
        self._cap = cap_chars
        self._kept = 0
        self._timer: asyncio.TimerHandle | None = None
        self._last_take = 0.0
        self._outbox: list[tuple[str, str]] = []
        self._sender: asyncio.Task[None] | None = None
        self._acks: list[asyncio.Future[Any]] = []

    def write(self, stream: str, text: str) -> bool:
        """Keep `text` of `stream` ("stdout" or "stderr"); False once closed (the caller writes it elsewhere)."""
        if self.closed:
            return False
        self.pending[stream == STDERR].append(text)
        return True

    def start(self) -> None:
        """Start looking for output every TICK_S (from any thread)."""
        loop = self._loop = self._loop or bridge_loop()
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:  # the worker's own loop: no wake-up through its self-pipe
            self._timer = loop.call_later(TICK_S, self._tick)
        else:
            loop.call_soon_threadsafe(self._tick)

    def _tick(self) -> None:
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting = len(self.pending[0]) + len(self.pending[1])
        if waiting >= TAKE_WRITES or (waiting and now - self._last_take >= BATCH_S):
            self._last_take = now
            self._send(self._take())
        elif not waiting:
            self._last_take = now  # the next batch gathers for BATCH_S from its first write
        self._timer = loop.call_later(TICK_S, self._tick)

    def _take(self) -> list[tuple[str, str]]:
        """What was written since the last take, as messages of at most BATCH_CHARS, up to the cap."""
        messages: list[tuple[str, str]] = []
        for index, stream in enumerate((STDOUT, STDERR)):
            pending = self.pending[index]
            count = len(pending)
            if not count:
                continue
            # two single C operations, each atomic under the GIL: a write landing between them is
            # appended after the copied part, so it stays for the next take
            parts = pending[:count]
            del pending[:count]
            if self.full:
                continue
            text = self._within_cap(parts)
            self._kept += len(text)
            messages.extend((stream, text[i:i + BATCH_CHARS]) for i in range(0, len(text), BATCH_CHARS))
        return messages

    def _within_cap(self, parts: list[str]) -> str:
        """`parts` joined, cut at the cap (with the "truncated" line) without ever joining more than fits."""
        room = self._cap - self._kept
        if sum(map(len, parts)) <= room:
            return "".join(parts)
        kept, size = [], 0
        for part in parts:
            if size + len(part) > room:
                kept.append(part[:room - size])
                break
            kept.append(part)
            size += len(part)
        self.full = True
        return "".join(kept) + TRUNCATED.format(cap=self._cap)

    def _send(self, messages: list[tuple[str, str]]) -> None:
        """Queue `messages` for publishing, in order (one sender task at a time)."""
        if not messages:
            return
        self._outbox.extend(messages)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._drain_outbox(),
                                                                  name=f"naq-output-{self.job_id}")

    async def _drain_outbox(self) -> None:
        while self._outbox:
            messages, self._outbox = self._outbox, []
            await self._publish(messages)

    async def _publish(self, messages: list[tuple[str, str]]) -> None:
        try:
            conn = self._conn = self._conn or await get_connection(self.settings)
            await conn.ensure_stream(LOGS_STREAM_NAME)
            for stream, text in messages:
                ack = await conn.js.publish_async(self._subject, text.encode("utf-8", "replace"), wait_stall=1.0,
                                                  headers={OUTPUT_STREAM_HEADER: stream}, msg_ttl=self._ttl_s)
                self._acks.append(ack)
        except (NaqException, nats.errors.Error, OSError, TimeoutError) as e:  # output is best effort
            logger.warning("job %s: output not published: %s", self.job_id, e)

    async def flush(self) -> None:
        """Publish what was written so far and wait for the acks (a job cancelled mid-run keeps its output)."""
        self._send(self._take())
        if self._sender is not None:
            await asyncio.shield(self._sender)
        await self._settle_acks()

    def close(self, stray: asyncio.Future[Any] | None = None) -> bool:
        """Take no more writes and send what is left (on the loop); True if publishing is still under way.

        `stray`: the future of the job's thread when it overran and still runs: what it writes from
        now on is dropped every SWEEP_S until it ends, so it cannot grow the worker.
        """
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._send(self._take())
        if stray is not None and not stray.done():
            self._sweep(stray)
        return self._sender is not None or bool(self._acks)

    def _sweep(self, stray: asyncio.Future[Any]) -> None:
        dropped = sum(map(len, self.pending))
        for pending in self.pending:
            del pending[:]
        if dropped:
            logger.info("job %s: %d writes of its overrunning thread dropped", self.job_id, dropped)
        if not stray.done():
            self._timer = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep, stray)

    async def aclose(self) -> None:
        """`close`, then wait for the rest to be published and acked (at most FLUSH_TIMEOUT_S each)."""
        if self.close():
            await self.flush()

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


@contextlib.contextmanager
def _current(output: JobOutput) -> Iterator[None]:
    """Make `output` the target of this context's prints, log records and warnings."""
    tokens = (current_sink.set(output), stdout_append.set(output.pending[0].append),
              stderr_append.set(output.pending[1].append))
    try:
        yield
    finally:
        for var, token in zip((current_sink, stdout_append, stderr_append), tokens, strict=True):
            var.reset(token)  # type: ignore[attr-defined]


_active: dict[str, JobOutput] = {}


async def flush_job_output(job_id: str) -> bool:
    """Publish the output a running job has written so far (worker side); False if it captures nothing."""
    output = _active.get(job_id)
    if output is None:
        return False
    await output.flush()
    return True


def delegate_to_child() -> ConnectionSettings | None:
    """The settings a process-pool child publishes the current job's output with (None: not captured)."""
    sink = current_sink.get()
    return sink.settings if isinstance(sink, JobOutput) else None


@contextlib.asynccontextmanager
async def capturing(job_id: str, conn: Connection, ttl_s: float | None = None,
                    enabled: bool = True) -> AsyncIterator[JobOutput | None]:
    """Worker side, around one run: the job's output goes to `naq.logs.<job_id>`; flushed on the way out."""
    if not enabled:
        yield None
        return
    install()
    output = JobOutput(job_id, conn.settings, asyncio.get_running_loop(), conn, ttl_s)
    output.start()
    _active[job_id] = output
    stray = None
    try:
        with _current(output):
            yield output
    except BaseException as e:
        stray = getattr(e, "still_running", None)  # a JobFailure of a thread that overran
        raise
    finally:
        if _active.get(job_id) is output:
            del _active[job_id]
        if output.close(stray):  # most jobs print nothing: no task, no wait for them
            await asyncio.shield(output.flush())


@contextlib.contextmanager
def child_capture(job_id: str, settings: ConnectionSettings | None, ttl_s: float | None = None) -> Iterator[None]:
    """Process-pool child side: Python output by context, fds 1 and 2 through pipes; no-op without `settings`."""
    if settings is None:
        yield
        return
    install()
    output = JobOutput(job_id, settings, ttl_s=ttl_s)
    output.start()
    pipes = [FdPipe(1, STDOUT, output), FdPipe(2, STDERR, output)]
    try:
        with _current(output):
            yield
    finally:
        flush_c_stdio()
        for pipe in pipes:
            pipe.restore()
        try:
            run_sync(output.aclose(), FLUSH_TIMEOUT_S * 2)
        except (TimeoutError, NaqException) as e:
            logger.warning("job %s: output not published: %s", job_id, e)
