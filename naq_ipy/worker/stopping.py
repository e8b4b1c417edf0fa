"""Stopping a running job that was cancelled: one stop per kind of call.

A cancel is asked for in KV `naq_cancel_requests` (see `naq_ipy.status.cancel`); every worker watches
the requests (worker/cancel_watch.py) and stops the call of a requested job it runs. How a call
stops: a coroutine's task is cancelled; a thread gets `JobCancelled` raised in it asynchronously (a
pure-Python loop stops at once, a call blocked in C when it returns); a process-mode child is killed,
and its slot makes a new one for the next job.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any


class JobCancelled(BaseException):
    """Raised inside a cancelled job's call; a BaseException, so a job's `except Exception` does not swallow it."""


class StopHandle:
    """How to stop one running call: the executor sets the stopper when the call starts; `stop` may come first."""

    def __init__(self) -> None:
        self.requested = False
        self._stopper: Callable[[], Any] | None = None
        self._lock = threading.Lock()

    def set_stopper(self, stopper: Callable[[], Any]) -> None:
        """Register how to stop the call; runs it at once if a stop was already requested."""
        with self._lock:
            self._stopper = stopper
            now = self.requested
        if now:
            stopper()

    def clear(self) -> None:
        """The call ended: a later stop must not touch what ran it (a process slot runs the next job)."""
        with self._lock:
            self._stopper = None

    def stop(self) -> None:
        """Ask the call to stop (once is enough; later calls do nothing more)."""
        with self._lock:
            if self.requested:
                return
            self.requested = True
            stopper = self._stopper
        if stopper is not None:
            stopper()


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> int:
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None)  # NULL clears a pending one


class ThreadCall:
    """A pool thread's call that `JobCancelled` can interrupt, never after the call returned."""

    def __init__(self, call: Callable[[], Any], stop: StopHandle) -> None:
        self._call = call
        self._stop = stop
        self._lock = threading.Lock()
        self._thread_id: int | None = None
        self._sent = False

    def __call__(self) -> Any:
        with self._lock:
            self._thread_id = threading.get_ident()
        self._stop.set_stopper(self._interrupt)
        try:
            return self._call()
        finally:
            with self._lock:
                thread_id, self._thread_id = self._thread_id, None
                if self._sent and thread_id is not None:
                    # an exception still pending would fire in the pool's own code and kill its thread
                    _set_async_exc(thread_id, None)

    def _interrupt(self) -> None:
        with self._lock:
            if self._thread_id is not None and not self._sent:
                self._sent = _set_async_exc(self._thread_id, JobCancelled) == 1
