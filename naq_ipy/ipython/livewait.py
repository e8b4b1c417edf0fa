"""Blocking waits in a notebook cell that keep widgets current, and the one-bar view of a wait on many jobs.

A cell that blocks also blocks the kernel's loop, so widget updates marshalled there would only
appear after the cell. `run_redrawing` runs the coroutine on the sync bridge and redraws from the
waiting (kernel) thread every `REDRAW_S` instead — widgets read their state under a lock, so a
redraw is always of the newest state.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from naq_ipy.client.bridge import bridge_loop, get_loop_mode, run_sync, wait_polling
from naq_ipy.ipython.panel_base import in_kernel
from naq_ipy.status.waiting import Jobs, WaitResult, job_ids_and_url, wait
from naq_ipy.views import jobs as jobview
from naq_ipy.wire.settings import ConnectionSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")

REDRAW_S = 0.2


def _redraw_safely(redraw: Callable[[], None]) -> None:
    try:
        redraw()
    except Exception:  # a broken widget must not end the wait
        logger.exception("redrawing %s failed", getattr(redraw, "__qualname__", redraw))


def run_redrawing(coro: Coroutine[Any, Any, T], redraw: Callable[[], None]) -> T:
    """`run_sync(coro)`, calling `redraw()` on this thread every `REDRAW_S` until it is done; Ctrl-C cancels."""
    if get_loop_mode() == "nest":  # the kernel's loop runs nested then: marshalled updates get through
        return run_sync(coro)
    future = asyncio.run_coroutine_threadsafe(coro, bridge_loop())
    try:
        return wait_polling(future, REDRAW_S, lambda: _redraw_safely(redraw))
    finally:
        _redraw_safely(redraw)


class WaitBar:
    """One bar for a wait on `total` jobs: ended of N, with done / failed / running / queued counts."""

    def __init__(self, total: int) -> None:
        import ipywidgets as widgets

        self._lock = threading.Lock()
        self._thread = threading.current_thread()
        self._result = WaitResult(total)
        self._started = time.monotonic()
        self.bar = widgets.IntProgress(value=0, min=0, max=max(total, 1), layout=widgets.Layout(width="20em"))
        self.label = widgets.HTML()
        self.widget = widgets.HBox([self.bar, self.label])
        self.redraw()

    def update(self, result: WaitResult) -> None:
        """Take new counts (any thread); redrawn at once on the widgets' own thread (a nested loop)."""
        with self._lock:
            self._result = result
        if threading.current_thread() is self._thread:
            self.redraw()

    def redraw(self) -> None:
        """Show the newest counts (the widgets' thread)."""
        with self._lock:
            result = self._result
        elapsed_s = result.elapsed_s if result.complete else time.monotonic() - self._started
        self.bar.value = result.ended
        self.bar.bar_style = jobview.wait_bar_style(result)
        self.label.value = f"<span style='font-size:12px'>{jobview.wait_text(result, elapsed_s)}</span>"


def wait_with_bar(jobs: Jobs, timeout: float | None = None, raise_on_failure: bool = False, *,
                  url: str | ConnectionSettings | None = None) -> WaitResult:
    """`naq_ipy.wait` in a kernel: one live bar under the cell while it waits; elsewhere a plain wait."""
    ids, job_url = job_ids_and_url(jobs)
    if not in_kernel():
        return run_sync(wait(ids, timeout, raise_on_failure, url=url or job_url))
    from IPython.display import display

    bar = WaitBar(len(ids))
    display(bar.widget)
    result = run_redrawing(wait(ids, timeout, raise_on_failure, url=url or job_url, on_update=bar.update),
                           bar.redraw)
    bar.update(result)
    bar.redraw()
    return result
