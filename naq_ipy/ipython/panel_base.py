"""`Panel`, the base of the panels and live displays: the display/close plumbing they share.

ipywidgets is imported only when a panel builds its widget, so importing this module (and
showing the static HTML table in nbconvert or a terminal) works without it.
"""

from __future__ import annotations

import asyncio
import html
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from naq_ipy.client.bridge import bridge_loop
from naq_ipy.ipython.closing import register_closable
from naq_ipy.ipython.livewatch import Marshal, describe_error
from naq_ipy.wire.settings import ConnectionSettings

if TYPE_CHECKING:
    import ipywidgets

logger = logging.getLogger(__name__)

LOAD_WAIT_S = 3.0
_ERROR_STYLE = "color:#b00020"
_INFO_STYLE = "color:#555"


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where widgets can render), False in scripts and terminal IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


class Panel(ABC):
    """Base of the panels: a cached widget, a status line, actions run on the bridge, close on every exit.

    `read_only`: the panel shows no action (no button that changes anything), and its action
    methods refuse with a message in the status line.
    """

    def __init__(self, url: str | ConnectionSettings | None = None, *, read_only: bool = False) -> None:
        self.settings = ConnectionSettings.resolve(url)
        self.read_only = read_only
        self.marshal = Marshal.capture()
        self.closed = False
        self.problem: str | None = None
        self.status_text = ""
        self.status_error = False
        self._root: ipywidgets.VBox | None = None
        self._status: ipywidgets.HTML | None = None
        self._widgets: list[ipywidgets.Widget] = []
        register_closable(self)

    # -- display -------------------------------------------------------------------------------
    @property
    def widget(self) -> ipywidgets.VBox:
        """The panel's widget, built on first use and then reused (never rebuilt)."""
        if self._root is None:
            import ipywidgets

            self._status = ipywidgets.HTML()
            self._root = self._build(ipywidgets)  # every other widget is made with `make`, so close() finds it
            self._root.add_class("naq-panel")
            self._root._view_count = 0
            self._root.observe(self._on_view_count, "_view_count")
            self._root.observe(self._on_comm, "comm")
            if self._root.comm is not None:
                self._root.comm.on_close(lambda _msg: self.close())
            self._render()
        return self._root

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The widget view plus a static HTML table (shown where widgets cannot render)."""
        self.wait_loaded(LOAD_WAIT_S)
        if self.closed or not in_kernel():
            return {"text/plain": repr(self), "text/html": self._repr_html_()}
        data = self.widget._repr_mimebundle_(include=include, exclude=exclude) or {}
        data["text/html"] = self._repr_html_()
        return data

    def __repr__(self) -> str:
        return self._static_text()

    def _repr_html_(self) -> str:
        return self._static_html()

    def make(self, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Create a widget and remember it, so `close()` closes it."""
        widget = factory(*args, **kwargs)
        self._widgets.append(widget)
        return widget

    # -- status and actions --------------------------------------------------------------------
    def set_status(self, text: str | None, error: bool = False) -> None:
        """Show an action's message (red for errors; None clears it). Call on the widgets' thread."""
        self.status_text, self.status_error = text or "", error
        self._show_status()

    @property
    def status_html(self) -> str:
        """The status line: a watch problem (server gone) first, then the last action's message."""
        parts = [f"<span style='{_ERROR_STYLE}'>{html.escape(self.problem)}</span>"] if self.problem else []
        if self.status_text:
            style = _ERROR_STYLE if self.status_error else _INFO_STYLE
            parts.append(f"<span style='{style}'>{html.escape(self.status_text)}</span>")
        return "<br>".join(parts)

    def _show_status(self) -> None:
        if self._status is not None:
            self._status.value = self.status_html

    def refused(self, what: str) -> bool:
        """True (and a message in the status line) if this panel is read-only, so `what` must not run."""
        if self.read_only:
            self.set_status(f"{what}: this panel is read-only", error=True)
        return self.read_only

    def run_action(self, what: str, coro: Awaitable[Any], done: Callable[[Any], None] | None = None) -> None:
        """Run `coro` on the bridge loop; `done(result)` (or the error in the status line) on the widgets' thread."""
        self.set_status(f"{what}…")

        def finished(future: asyncio.Future[Any]) -> None:
            try:
                result = future.result()
            except Exception as e:
                logger.warning("%s failed: %s", what, describe_error(e), exc_info=True)
                self.set_status(f"{what} failed: {describe_error(e)}", error=True)
                return
            self.set_status(None)
            if done is not None:
                done(result)

        future = asyncio.run_coroutine_threadsafe(_as_coroutine(coro), bridge_loop())
        future.add_done_callback(lambda f: self.marshal.call(finished, f))

    def guarded(self, what: str, fn: Callable[..., object]) -> Callable[..., None]:
        """Wrap a widget callback: an error shows in the status line and is logged, never lost."""

        def callback(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as e:
                logger.warning("%s failed", what, exc_info=True)
                self.set_status(f"{what} failed: {describe_error(e)}", error=True)

        return callback

    # -- life cycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the live watch and close every widget of the panel (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.stop_watching()
        for widget in [*reversed(self._widgets), self._status, self._root]:
            if widget is None:
                continue
            for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
                if part is not None:
                    part.close()
            widget.close()

    def _on_view_count(self, change: dict[str, Any]) -> None:
        # the output was cleared or its notebook closed: stop watching until a view shows again
        if self.closed:
            return
        if change["new"] == 0 and (change["old"] or 0) > 0:
            self.stop_watching()
        elif (change["new"] or 0) > 0 and not (change["old"] or 0):
            self.start_watching()

    def _on_comm(self, change: dict[str, Any]) -> None:
        if change["new"] is None:
            self.close()

    # -- for subclasses ------------------------------------------------------------------------
    @abstractmethod
    def wait_loaded(self, timeout_s: float) -> bool:
        """Wait until the first data arrived; True if it did."""

    @abstractmethod
    def _build(self, widgets: Any) -> ipywidgets.VBox:
        """The panel's widget tree, built once."""

    @abstractmethod
    def _render(self) -> None:
        """Update the widgets in place from the current data."""

    @property
    @abstractmethod
    def watching(self) -> bool:
        """True while the live watch runs."""

    @abstractmethod
    def start_watching(self) -> None:
        """Start the live watch."""

    @abstractmethod
    def stop_watching(self) -> None:
        """Stop the live watch."""

    @abstractmethod
    def _static_html(self) -> str:
        """The static HTML table for frontends without widgets."""

    @abstractmethod
    def _static_text(self) -> str:
        """The plain-text form."""


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
