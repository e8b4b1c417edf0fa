"""A job's output in the notebook: written into the cell as it comes, or kept for a live display's tail.

`OutputRelay` buffers chunks arriving on the sync bridge and writes them to this thread's
`sys.stdout` / `sys.stderr` when drained (the kernel thread, so they land in the cell's stream
output, as if the function had run here). `OutputTail` follows a job's output on the bridge for
the live Job display, and `IdleQueueCheck` tells whether any live worker serves the job's queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from naq_ipy.client.bridge import bridge_loop
from naq_ipy.status.output import STDERR, OutputChunk, relay_output
from naq_ipy.status.workers import idle_queue_hint, queue_served
from naq_ipy.wire.settings import ConnectionSettings

logger = logging.getLogger(__name__)

TAIL_LINES = 10
IDLE_CHECK_S = 3.0


class OutputRelay:
    """Chunks put from any thread, written by `drain` on the draining thread's stdout / stderr."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: list[OutputChunk] = []

    def put(self, chunk: OutputChunk) -> None:
        """Keep `chunk` until the next drain."""
        with self._lock:
            self._chunks.append(chunk)

    def drain(self) -> None:
        """Write what arrived, in order, to `sys.stderr` or `sys.stdout`."""
        with self._lock:
            chunks, self._chunks = self._chunks, []
        for chunk in chunks:
            stream = sys.stderr if chunk.stream == STDERR else sys.stdout
            stream.write(chunk.text)
        if chunks:
            sys.stdout.flush()
            sys.stderr.flush()


def _on_bridge(coro: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
    return asyncio.run_coroutine_threadsafe(coro, bridge_loop())


class OutputTail:
    """A job's output followed on the bridge, whole; `on_change()` is called after each batch."""

    def __init__(self, job_id: str, settings: ConnectionSettings, on_change: Callable[[], None]) -> None:
        self.job_id = job_id
        self.settings = settings
        self._on_change = on_change
        self._lock = threading.Lock()
        self._text = ""
        self._future: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        """Follow from the start (again) until the job ends."""
        if self._future is not None and not self._future.done():
            return
        with self._lock:
            self._text = ""
        self._future = _on_bridge(relay_output(self.job_id, self._take, self.settings))
        self._future.add_done_callback(self._ended)

    def stop(self) -> None:
        """Stop following."""
        if self._future is not None:
            self._future.cancel()

    def _take(self, chunk: OutputChunk) -> None:
        with self._lock:
            self._text += chunk.text
        self._on_change()

    def _ended(self, future: concurrent.futures.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            logger.warning("job %s: output not followed: %s", self.job_id, future.exception())

    def text(self, all_lines: bool = False) -> str:
        """The output so far, or only its last TAIL_LINES lines."""
        with self._lock:
            text = self._text
        return text if all_lines else "".join(text.splitlines(keepends=True)[-TAIL_LINES:])

    def line_count(self) -> int:
        """Lines of output so far."""
        with self._lock:
            return self._text.count("\n") + (not self._text.endswith("\n") and bool(self._text))


class IdleQueueCheck:
    """While a job waits, asks every IDLE_CHECK_S whether a live worker serves its queue; `hint` says if not."""

    def __init__(self, queue_name: str, settings: ConnectionSettings, on_change: Callable[[], None]) -> None:
        self.queue_name = queue_name
        self.settings = settings
        self.hint: str | None = None
        self._on_change = on_change
        self._future: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        """Start checking (no-op while already checking)."""
        if self.queue_name and (self._future is None or self._future.done()):
            self._future = _on_bridge(self._check())

    def stop(self) -> None:
        """Stop checking and forget the hint (the job started, or the display closed)."""
        if self._future is not None:
            self._future.cancel()
        if self.hint is not None:
            self.hint = None
            self._on_change()

    async def _check(self) -> None:
        while True:
            try:
                served = await queue_served(self.queue_name, self.settings)
            except Exception as e:  # only the hint is at stake
                logger.debug("queue %s: workers not read: %s", self.queue_name, e)
            else:
                hint = None if served else idle_queue_hint(self.queue_name)
                if hint != self.hint:
                    self.hint = hint
                    self._on_change()
            await asyncio.sleep(IDLE_CHECK_S)
