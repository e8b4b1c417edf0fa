"""`LiveJob`: a Job's display that updates itself — state, progress bar and message, duration, outcome.

A `LiveWatch` of the job's key in `naq_job_status` runs on the sync bridge, so the kernel stays
free; it stops when the job ends, when the output is cleared (no view left) or the widget closes.
At the end it shows a short preview of the result, or the error line with a button that opens
the whole remote traceback. The extension registers `job_mimebundle` for `Job`, so a Job returned
by `%naq_enqueue` or `Queue.enqueue` shows live; without a widget frontend the text form is shown.
"""

from __future__ import annotations

import asyncio
import html
import logging
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from naq_ipy.client.bridge import bridge_loop
from naq_ipy.client.job import Job
from naq_ipy.ipython.liveoutput import TAIL_LINES, IdleQueueCheck, OutputRelay, OutputTail
from naq_ipy.ipython.livewait import run_redrawing
from naq_ipy.ipython.livewatch import Coalescer, LiveWatch, describe_error
from naq_ipy.ipython.panel_base import Panel, in_kernel
from naq_ipy.status.cancel import cancel as cancel_jobs
from naq_ipy.status.output import result_with_output
from naq_ipy.status.results import FINISHED, SCHEDULED, STOPPING, JobStatus, fetch_result, fetch_status
from naq_ipy.views import jobs as jobview
from naq_ipy.wire.names import JOB_STATUS_KV_NAME
from naq_ipy.wire.settings import ConnectionSettings, validate_key

logger = logging.getLogger(__name__)

TICK_S = 1.0
RESULT_WAIT_S = 5.0
END_WAIT_S = 1.0
SHOW, HIDE = "Show traceback", "Hide traceback"
SHOW_ALL, SHOW_TAIL = "Show all output", "Show last lines"


@dataclass(frozen=True)
class JobParts:
    """The widgets of a live job display, by name."""

    title: Any
    state: Any
    bar: Any
    message: Any
    outcome: Any
    toggle: Any
    traceback: Any
    cancel: Any
    hint: Any  # why the job is not moving
    output: Any  # the last lines of what it printed (or all of them)
    output_toggle: Any


class LiveJob(Panel):
    """The live display of one job: a `Job`, or a job id (on `url`) whose function shows once it is known.

    `show_output`: follow the job's output and show its last lines (with a toggle for all of it).
    """

    def __init__(self, job: Job | str, url: str | ConnectionSettings | None = None, show_output: bool = True) -> None:
        super().__init__(url or (job.url if isinstance(job, Job) else None))
        self.job_id = job.job_id if isinstance(job, Job) else validate_key(job, "job id")
        self.func_name = job.func_name if isinstance(job, Job) else ""
        self.queue_name = job.queue_name if isinstance(job, Job) else ""
        self.status: JobStatus | None = None
        self.scheduled = False
        self.result: str | None = None
        self.loaded = threading.Event()
        self.ended = threading.Event()
        self.parts: JobParts | None = None  # the named widgets, once built
        self._lock = threading.Lock()
        self._render_soon = Coalescer(self.marshal, self._render)
        self._watch = LiveWatch(self.settings, JOB_STATUS_KV_NAME, JobStatus.from_bytes, self, tick_s=TICK_S,
                                keys=self.job_id)
        self._tail = OutputTail(self.job_id, self.settings, self._render_soon.request) if show_output else None
        self._idle = IdleQueueCheck(self.queue_name, self.settings, self._render_soon.request)
        self._watch.start()
        self._start_followers()

    @property
    def hint(self) -> str | None:
        """Why the job is not moving (no live worker serves its queue), while it waits; else None."""
        return self._idle.hint if self.status is None and not self.scheduled else None

    def _start_followers(self) -> None:
        if self._tail is not None:
            self._tail.start()
        if self.status is None and not self.scheduled:
            self._idle.start()

    # -- watch sink (bridge thread) ------------------------------------------------------------
    def on_snapshot(self, entries: Mapping[str, JobStatus]) -> None:
        """The job's record when the watch (re)started; none yet: ask whether it waits in the schedule store."""
        status = entries.get(self.job_id)
        if status is None:
            self._in_background(self._check_scheduled())
        self._take(status)
        self.loaded.set()

    def on_changes(self, changes: Mapping[str, JobStatus | None]) -> None:
        """A new record of the job, or a clock tick (the duration moves on)."""
        self._take(changes.get(self.job_id))

    def on_status(self, problem: str | None) -> None:
        """The watch's health."""
        self.problem = problem
        self._render_soon.request()

    def _take(self, status: JobStatus | None) -> None:
        if status is not None:
            with self._lock:
                if self.status is None or status.revision >= self.status.revision:
                    self.status = status
            self._idle.stop()
            if status.ended and not self.ended.is_set():
                self.ended.set()
                self._watch.stop()
                if status.status == FINISHED:
                    self._in_background(self._load_result())
        self._render_soon.request()

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, bridge_loop())

    async def _check_scheduled(self) -> None:
        try:
            found = await fetch_status(self.job_id, self.settings)
        except Exception as e:  # only the label "scheduled" is at stake
            logger.warning("job %s: status check failed: %s", self.job_id, describe_error(e))
            return
        if found is not None and found.status == SCHEDULED:
            with self._lock:
                self.scheduled = True
            self._idle.stop()
            self._render_soon.request()

    async def _load_result(self) -> None:
        try:
            text = jobview.preview(await fetch_result(self.job_id, RESULT_WAIT_S, self.settings))
        except Exception as e:  # an expired or unreadable result: say so instead of a preview
            text = f"(result not shown: {describe_error(e)})"
        self._set_result(text)
        self._render_soon.request()

    def _set_result(self, text: str) -> None:
        with self._lock:
            self.result = text

    # -- rendering (widgets' thread) -----------------------------------------------------------
    def wait_loaded(self, timeout_s: float) -> bool:
        """Wait until the watch delivered the job's current record (or its absence); True if it did."""
        return self.loaded.wait(timeout_s)

    def show_result(self, value: Any) -> None:
        """Show the preview of `value`, the job's result, right away."""
        self._set_result(jobview.preview(value))
        self._render()

    def refresh(self) -> None:
        """Redraw from what is known now (used while a cell blocks the kernel's loop)."""
        self._render()

    def _snapshot(self) -> tuple[JobStatus | None, bool, str | None]:
        with self._lock:
            return self.status, self.scheduled, self.result

    def _render(self) -> None:
        if self._root is None or self.closed:
            return
        status, scheduled, result = self._snapshot()
        state, p = jobview.state_of(status, scheduled), self.parts
        assert p is not None
        p.title.value = jobview.title_html(self.job_id, *self._names(status))
        p.state.value = jobview.state_html(state)
        p.bar.value = jobview.bar_value(status)
        p.bar.bar_style = jobview.bar_style(state)
        p.message.value = f"<span style='font-size:12px'>{html.escape(jobview.progress_text(status))}</span>"
        p.outcome.value = jobview.outcome_html(status, result)
        traceback = status.traceback if status is not None else None
        p.traceback.value = jobview.traceback_html(traceback)
        p.toggle.layout.display = None if traceback else "none"
        ended = status is not None and status.ended
        p.cancel.layout.display = "none" if ended else None
        p.cancel.disabled = state == STOPPING
        p.cancel.description = "Stopping…" if state == STOPPING else "Cancel"
        p.hint.value = jobview.hint_html(self.hint)
        self._render_output()
        self._show_status()

    def _render_output(self) -> None:
        if self._tail is None:
            return
        p = self.parts
        assert p is not None
        showing_all = p.output_toggle.description == SHOW_TAIL
        p.output.value = jobview.output_html(self._tail.text(all_lines=showing_all))
        lines = self._tail.line_count()
        p.output_toggle.layout.display = None if lines > TAIL_LINES else "none"

    def toggle_output(self) -> None:
        """Show all of the job's output, or its last lines again."""
        assert self.parts is not None
        toggle = self.parts.output_toggle
        toggle.description = SHOW_ALL if toggle.description == SHOW_TAIL else SHOW_TAIL
        self._render_output()

    def _names(self, status: JobStatus | None) -> tuple[str, str]:
        """(function, queue) of the job: from the Job, else from its status record once there is one."""
        if status is None:
            return self.func_name, self.queue_name
        return self.func_name or status.func_name or "", self.queue_name or status.queue_name or ""

    def cancel(self) -> None:
        """Cancel the job (the Cancel button): queued, it never starts; running, it is stopped."""
        self.run_action("cancel", cancel_jobs(self.job_id, self.settings),
                        lambda report: self.set_status(f"cancel: {report[self.job_id]}"))

    def toggle_traceback(self) -> None:
        """Show the whole remote traceback, or hide it again."""
        p = self.parts
        assert p is not None
        showing = p.toggle.description == HIDE
        p.traceback.layout.display = "none" if showing else None
        p.toggle.description = SHOW if showing else HIDE

    def _build(self, widgets: Any) -> Any:
        make = self.make
        p = self.parts = JobParts(
            title=make(widgets.HTML), state=make(widgets.HTML),
            bar=make(widgets.FloatProgress, value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="16em")),
            message=make(widgets.HTML), outcome=make(widgets.HTML),
            toggle=make(widgets.Button, description=SHOW, layout=widgets.Layout(width="auto", display="none")),
            traceback=make(widgets.HTML, layout=widgets.Layout(display="none")),
            cancel=make(widgets.Button, description="Cancel", button_style="warning", icon="stop",
                        layout=widgets.Layout(width="auto")),
            hint=make(widgets.HTML), output=make(widgets.HTML),
            output_toggle=make(widgets.Button, description=SHOW_ALL,
                               layout=widgets.Layout(width="auto", display="none")),
        )
        p.toggle.on_click(self.guarded("traceback", lambda _button: self.toggle_traceback()))
        p.cancel.on_click(self.guarded("cancel", lambda _button: self.cancel()))
        p.output_toggle.on_click(self.guarded("output", lambda _button: self.toggle_output()))
        lines = make(widgets.VBox, [p.hint, p.output, p.output_toggle])  # why it waits, what it printed
        return make(widgets.VBox, [
            make(widgets.HBox, [p.title, p.state, p.cancel]), make(widgets.HBox, [p.bar, p.message]),
            lines, p.outcome, p.toggle, p.traceback, self._status,
        ])

    # -- life cycle ----------------------------------------------------------------------------
    @property
    def watching(self) -> bool:
        """True while the status watch runs (it stops once the job ended)."""
        return self._watch.running

    def start_watching(self) -> None:
        """Watch the job's status again, unless it already ended."""
        if not self.ended.is_set():
            self._watch.start()
            self._start_followers()

    def stop_watching(self) -> None:
        """Stop the status watch."""
        self._watch.stop()
        self._idle.stop()
        if self._tail is not None:
            self._tail.stop()

    # -- static fallback -----------------------------------------------------------------------
    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The widget view, with the job's one-line text (not the widget's repr) for text-only frontends."""
        data = super()._repr_mimebundle_(include=include, exclude=exclude)
        data["text/plain"] = self._static_text()
        return data

    def _static_text(self) -> str:
        status, scheduled, result = self._snapshot()
        text = jobview.job_text(self.job_id, self._names(status)[0], status, scheduled, result)
        return f"{text} · {self.hint}" if self.hint else text

    def _static_html(self) -> str:
        status, scheduled, result = self._snapshot()
        return jobview.job_html(self.job_id, *self._names(status), status, scheduled, result)


def job_mimebundle(job: Job) -> dict[str, Any] | None:
    """A Job's live display inside a kernel; None elsewhere, so IPython shows the Job's own repr."""
    if not in_kernel():
        return None
    return LiveJob(job)._repr_mimebundle_()


def result_live(job: Job, timeout_s: float | None = None) -> Any:
    """Show the job's live display and return its result (`Job.result`), the display current while waiting.

    The job's stdout and stderr are written into the cell as they arrive, as if it ran here.
    """
    relay = OutputRelay()
    if not in_kernel():
        try:
            return run_redrawing(result_with_output(job.job_id, relay.put, timeout_s, job.url), relay.drain)
        finally:
            relay.drain()
    from IPython.display import display

    live = LiveJob(job, show_output=False)
    display(live)

    def redraw() -> None:
        relay.drain()
        live.refresh()

    try:
        value = run_redrawing(result_with_output(job.job_id, relay.put, timeout_s, job.url), redraw)
    finally:
        relay.drain()
    live.ended.wait(END_WAIT_S)  # its own watch sees the end a moment later
    live.show_result(value)
    return value


def register_formatter(ipython: Any) -> None:
    """Show every `Job` an output returns as a `LiveJob` (the extension's load)."""
    ipython.display_formatter.mimebundle_formatter.for_type(Job, job_mimebundle)


def unregister_formatter(ipython: Any) -> None:
    """Undo `register_formatter` (the extension's unload)."""
    ipython.display_formatter.mimebundle_formatter.pop(Job, None)
