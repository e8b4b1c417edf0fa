"""The one sync bridge: a background thread owning an asyncio loop, used by every `*_sync` call.

Sync code (scripts, magics, a Jupyter cell whose kernel loop is already running) hands a
coroutine to this loop with `run_coroutine_threadsafe` and waits in short slices, so Ctrl-C
cancels the call. Connections made by those coroutines belong to the bridge loop and stay
pooled there. `nest` mode (nest_asyncio) is an explicit opt-in, never applied on import.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from naq_ipy.errors import ConfigurationError, NaqException

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

LOOP_MODES = ("thread", "nest")
_WAIT_SLICE_S = 0.1


class _Bridge:
    """A daemon thread running one event loop until `stop()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The bridge loop, started on first use."""
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                self._start()
            assert self._loop is not None
            return self._loop

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name="naq-sync-bridge", daemon=True)
        thread.start()
        ready.wait()
        self._loop, self._thread = loop, thread

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close pooled connections on the bridge loop, then stop the thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or not thread.is_alive():
            return
        from naq_ipy.wire.connection import close_all

        try:
            asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout_s)
            asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), loop).result(timeout_s)
        except Exception:  # the bridge is going away either way; log and move on
            logger.warning("closing connections on the sync bridge failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        loop.close()


async def _cancel_other_tasks() -> None:
    # a task left pending when the loop closes is destroyed later by the garbage collector,
    # where its cleanup code fails without a running loop
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


_bridge = _Bridge()
_mode = os.environ.get("NAQ_LOOP_MODE", "thread")


def set_loop_mode(mode: str) -> None:
    """Choose how `run_sync` runs coroutines: `thread` (default) or `nest` (nest_asyncio)."""
    global _mode
    if mode not in LOOP_MODES:
        raise ConfigurationError(f"loop mode must be one of {LOOP_MODES}, got {mode!r}")
    _mode = mode


def get_loop_mode() -> str:
    """The current loop mode."""
    return _mode


def bridge_loop() -> asyncio.AbstractEventLoop:
    """The bridge's event loop (started on first use)."""
    return _bridge.loop


def stop_bridge() -> None:
    """Stop the bridge thread and close its connections; the next `run_sync` starts a new one."""
    _bridge.stop()


def in_bridge_thread() -> bool:
    """True when called from the bridge's own thread."""
    return threading.current_thread() is _bridge.thread


def run_sync(coro: Awaitable[T], timeout_s: float | None = None) -> T:
    """Run `coro` to completion from sync code and return its result.

    Works in scripts, terminal IPython and inside a running Jupyter kernel. Ctrl-C
    cancels the coroutine and re-raises KeyboardInterrupt.
    """
    if in_bridge_thread():
        _close(coro)
        raise NaqException("a *_sync call was made from the naq sync bridge thread: await the async API instead")
    if _mode == "nest" and _running_loop() is not None:
        return _run_nested(coro, timeout_s)
    return wait_polling(asyncio.run_coroutine_threadsafe(_as_coroutine(coro, timeout_s), _bridge.loop))


def wait_polling(future: concurrent.futures.Future[T], slice_s: float = _WAIT_SLICE_S,
                 tick: Callable[[], None] | None = None) -> T:
    """The result of `future`, waited for in slices of `slice_s` so Ctrl-C gets through (and cancels it).

    `tick` runs on this thread between slices (a live display redraws there).
    """
    try:
        while True:
            try:
                return future.result(slice_s)
            except concurrent.futures.TimeoutError:
                # the same class as the builtin TimeoutError: a coroutine that timed out lands here too
                if future.done():
                    raise
            if tick is not None:
                tick()
    except KeyboardInterrupt:
        future.cancel()
        raise


async def _as_coroutine(awaitable: Awaitable[T], timeout_s: float | None) -> T:
    return await asyncio.wait_for(awaitable, timeout_s)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _run_nested(coro: Awaitable[T], timeout_s: float | None) -> T:
    """nest mode: re-enter this thread's running loop (without one, the bridge thread serves the call)."""
    import nest_asyncio

    loop = asyncio.get_running_loop()
    nest_asyncio.apply(loop)
    return loop.run_until_complete(_as_coroutine(coro, timeout_s))


def _close(coro: Awaitable[Any]) -> None:
    if isinstance(coro, Coroutine):
        coro.close()


def sync_twin(func: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Make the blocking `*_sync` twin of an async function or method through the bridge."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_sync(func(*args, **kwargs))

    wrapper.__name__ = f"{func.__name__}_sync"
    wrapper.__qualname__ = f"{func.__qualname__}_sync"
    wrapper.__doc__ = f"Blocking twin of `{func.__name__}` (runs on the naq sync bridge)."
    return wrapper


class StopRequests:
    """`request_stop()` for a long-running service (worker, scheduler) that runs on its own loop."""

    _stop_requested: bool
    _loop: asyncio.AbstractEventLoop | None
    _stopping: asyncio.Event

    def request_stop(self) -> None:
        """Ask for a graceful stop; safe from any thread and from signal handlers."""
        self._stop_requested = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stopping.set)
