"""A live KV watch kept running on the naq sync bridge loop, and the hand-over of its news to widgets.

The watch runs on the bridge thread (`naq_ipy.client.bridge.bridge_loop()`), so the kernel stays free
while it waits. Widgets belong to the kernel thread: `Marshal` posts callbacks there with
`loop.call_soon_threadsafe` (ipykernel >= 7.1 sends those updates), or runs them directly in a
process without a running loop (scripts, tests).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import nats.errors
from nats.js.kv import KeyValue

from naq_ipy.client.bridge import bridge_loop, in_bridge_thread
from naq_ipy.errors import NaqConnectionError, NaqException, SerializationError
from naq_ipy.wire.connection import Connection, get_connection, nats_errors
from naq_ipy.wire.names import KV_DELETE_OPERATIONS
from naq_ipy.wire.settings import ConnectionSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

POLL_S = 0.5
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
STOP_WAIT_S = 2.0


class Marshal:
    """Runs callables on the thread of the loop that owns the widgets, or directly when there is none."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop

    @classmethod
    def capture(cls) -> Marshal:
        """A Marshal for the loop running in the calling thread (the kernel's), if any."""
        try:
            return cls(asyncio.get_running_loop())
        except RuntimeError:
            return cls(None)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the widgets' thread; exceptions are logged, never lost silently."""
        loop = self.loop
        if loop is None:
            _log_errors(fn, *args)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(_log_errors, fn, *args)


def _log_errors(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        logger.exception("naq panel callback %s failed", getattr(fn, "__qualname__", fn))


class Coalescer:
    """Asks for `fn` to run once on the widgets' thread, however many requests arrive before it runs."""

    def __init__(self, marshal: Marshal, fn: Callable[[], None]) -> None:
        self._marshal = marshal
        self._fn = fn
        self._lock = threading.Lock()
        self._pending = False

    def request(self) -> None:
        """Schedule one run unless one is already pending."""
        with self._lock:
            if self._pending:
                return
            self._pending = True
        self._marshal.call(self._run)

    def _run(self) -> None:
        with self._lock:
            self._pending = False
        self._fn()


class WatchSink(Protocol[T_contra]):
    """What a LiveWatch reports to; called on the bridge thread, so implementations take their own lock."""

    def on_snapshot(self, entries: Mapping[str, T_contra]) -> None:
        """Every current entry (after a start or a resync): replaces what was known."""

    def on_changes(self, changes: Mapping[str, T_contra | None]) -> None:
        """Changed entries (None = deleted); an empty dict is a clock tick (refresh time labels)."""

    def on_status(self, problem: str | None) -> None:
        """A problem to show (server gone, permission), or None once all is well again."""


def describe_error(error: BaseException) -> str:
    """A one-line, credential-free reason for a status line."""
    if isinstance(error, NaqException):
        return str(error)
    if isinstance(error, nats.errors.Error | OSError | TimeoutError):
        return f"NATS error ({type(error).__name__})"
    return f"{type(error).__name__}: {error}"


class _Resync(Exception):
    """The connection came back after a loss: start the watch again for a fresh snapshot."""


class LiveWatch(Generic[T]):
    """One watch of a KV bucket on the bridge loop: snapshot, then changes; restarts with backoff.

    `keys` narrows the watch to one key or a subject pattern (default: every key). An entry `parse`
    refuses is logged and skipped, or shown as `unreadable(key, revision, error)` when that is given.
    """

    def __init__(self, url: str | ConnectionSettings | None, bucket: str, parse: Callable[[bytes, int], T],
                 sink: WatchSink[T], tick_s: float | None = None, keys: str = ">",
                 unreadable: Callable[[str, int, Exception], T] | None = None) -> None:
        self.settings = ConnectionSettings.resolve(url)
        self.bucket = bucket
        self.keys = keys
        self._parse = parse
        self._unreadable = unreadable
        self._sink = sink
        self._tick_s = tick_s
        self._future: concurrent.futures.Future[None] | None = None
        self._started = threading.Event()
        self._finished = threading.Event()
        self._delay_s = BACKOFF_MIN_S

    @property
    def running(self) -> bool:
        """True while the watch task is alive."""
        return self._future is not None and not self._future.done()

    def start(self) -> None:
        """Start watching on the bridge loop (no-op if already running)."""
        if not self.running:
            self._started, self._finished = threading.Event(), threading.Event()
            self._future = asyncio.run_coroutine_threadsafe(self._run(self._started, self._finished), bridge_loop())

    def stop(self) -> None:
        """Stop the watch and its consumer; waits briefly for the unsubscribe unless on the bridge thread."""
        future, self._future = self._future, None
        if future is None or future.done():
            return
        future.cancel()
        if self._started.is_set() and not in_bridge_thread():
            self._finished.wait(STOP_WAIT_S)

    async def _run(self, started: threading.Event, finished: threading.Event) -> None:
        started.set()
        try:
            while True:
                try:
                    await self._watch_once()
                except _Resync:
                    continue
                except Exception as e:  # any failure: say why, back off, try again until stopped
                    delay_s, self._delay_s = self._delay_s, min(self._delay_s * 2, BACKOFF_MAX_S)
                    reason = describe_error(e)
                    logger.warning("watch of %s failed: %s; retrying in %g s", self.bucket, reason, delay_s)
                    self._sink.on_status(f"{reason} — retrying in {delay_s:g} s")
                    await asyncio.sleep(delay_s)
        finally:
            finished.set()

    async def _watch_once(self) -> None:
        conn = await get_connection(self.settings)
        kv = await conn.kv(self.bucket)
        async with nats_errors(self.settings):
            watcher = await kv.watch(self.keys)
        live = asyncio.Event()
        tasks = [asyncio.create_task(self._consume(watcher, live)), asyncio.create_task(self._supervise(conn, live))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def _consume(self, watcher: KeyValue.KeyWatcher, live: asyncio.Event) -> None:
        # `async for`, not `updates(timeout)`: a wait_for per entry triples the cost of a 10,000-entry snapshot
        snapshot: dict[str, T] = {}
        async for entry in watcher:
            if entry is None:
                self._delay_s = BACKOFF_MIN_S
                self._sink.on_snapshot(snapshot)
                self._sink.on_status(None)
                live.set()
                continue
            value = self._read(entry)
            if not live.is_set():
                if value is not None:
                    snapshot[entry.key] = value
            else:
                self._sink.on_changes({entry.key: value})

    async def _supervise(self, conn: Connection, live: asyncio.Event) -> None:
        """Watch the connection's health and send clock ticks while the watch is live."""
        lost = False
        next_tick = time.monotonic() + (self._tick_s or 0)
        while True:
            await asyncio.sleep(POLL_S)
            lost = self._check_connection(conn, lost)
            if self._tick_s and live.is_set() and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self._tick_s
                self._sink.on_changes({})

    def _check_connection(self, conn: Connection, lost: bool) -> bool:
        """Report a lost connection once; raise `_Resync` when it is back (the consumer may be gone)."""
        if conn.nc.is_closed:
            raise NaqConnectionError(f"connection to NATS at {self.settings.safe_url} closed")
        if not conn.nc.is_connected:
            if not lost:
                self._sink.on_status(f"NATS at {self.settings.safe_url} unreachable — reconnecting")
            return True
        if lost:
            raise _Resync
        return False

    def _read(self, entry: KeyValue.Entry) -> T | None:
        if entry.operation in KV_DELETE_OPERATIONS or not entry.value:
            return None
        try:
            return self._parse(entry.value, entry.revision or 0)
        except SerializationError as e:
            logger.warning("unreadable %s entry %r: %s", self.bucket, entry.key, e)
            return None if self._unreadable is None else self._unreadable(entry.key, entry.revision or 0, e)
