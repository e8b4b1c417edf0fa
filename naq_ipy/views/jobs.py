"""Text and HTML of a job's live state, of a wait on many jobs, and of a schedule's recent runs.

Pure functions (no widgets, no NATS): the live displays and the scheduled-jobs panel only put
their output into widgets, and the static forms serve frontends without widgets.
"""

from __future__ import annotations

import html
import reprlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from naq_ipy.rules.times import format_duration, format_relative, from_timestamp
from naq_ipy.status.results import FINISHED, QUEUED, RETRYING, RUNNING, SCHEDULED, STOPPING, JobStatus
from naq_ipy.wire.names import run_due_ms

if TYPE_CHECKING:
    from naq_ipy.status.waiting import WaitResult

PREVIEW_MAX = 200
_GREY, _BLUE, _AMBER, _GREEN, _RED = "#757575", "#1565c0", "#b26b00", "#2e7d32", "#c62828"
STATE_COLORS = {QUEUED: _GREY, SCHEDULED: _GREY, RUNNING: _BLUE, RETRYING: _AMBER, STOPPING: _AMBER, FINISHED: _GREEN}
BAR_STYLES = {RUNNING: "info", RETRYING: "warning", STOPPING: "warning", FINISHED: "success"}
_CELL = "text-align:left;padding:1px 8px"

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = PREVIEW_MAX
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 10


def state_of(status: JobStatus | None, scheduled: bool = False) -> str:
    """The state to show: the record's, else `scheduled` or `queued`."""
    if status is not None:
        return status.status
    return SCHEDULED if scheduled else QUEUED


def state_color(state: str) -> str:
    """The color of a state label (red for every unhappy end)."""
    return STATE_COLORS.get(state, _RED)


def bar_style(state: str) -> str:
    """The ipywidgets bar style of a state: info, warning, success, or danger for unhappy ends."""
    if state in (QUEUED, SCHEDULED):
        return ""
    return BAR_STYLES.get(state, "danger")


def bar_value(status: JobStatus | None) -> float:
    """The bar's fill (0..1): the job's reported progress, full once it finished."""
    if status is None:
        return 0.0
    return 1.0 if status.status == FINISHED else float(status.progress or 0.0)


def duration_text(status: JobStatus | None) -> str:
    """`ran 4.2 s` once ended, `running for 3 min 5 s` while it runs, '' before it started."""
    seconds = status.duration_s if status is not None else None
    if status is None or seconds is None:
        return ""
    return f"{'ran' if status.ended else 'running for'} {format_duration(max(seconds, 0.0))}"


def progress_text(status: JobStatus | None) -> str:
    """`45% · loading data`: the reported fraction and message ('' when nothing was reported)."""
    if status is None or (status.progress is None and not status.message):
        return ""
    parts = [f"{status.progress:.0%}"] if status.progress is not None else []
    return " · ".join(parts + ([status.message] if status.message else []))


def error_line(status: JobStatus | None) -> str:
    """The error of a failed (or retrying) job, its attempt counted when it will be retried."""
    if status is None or not status.error:
        return ""
    if status.status == RETRYING:
        return f"attempt {status.attempts} failed: {status.error}"
    return status.error


def preview(value: Any) -> str:
    """A short repr of a result (at most about 200 characters)."""
    return _repr.repr(value)


def job_text(job_id: str, func_name: str, status: JobStatus | None, scheduled: bool = False,
             result: str | None = None) -> str:
    """The one-line static form: `job 1a2b… add: finished · 100% · ran 4.2 s · → 3`."""
    parts = [f"job {' '.join(filter(None, (job_id, func_name)))}: {state_of(status, scheduled)}", progress_text(status),
             duration_text(status), error_line(status), f"→ {result}" if result is not None else ""]
    return " · ".join(part for part in parts if part)


def state_html(state: str) -> str:
    """A state as a colored bold label."""
    return f"<b style='color:{state_color(state)}'>{html.escape(state)}</b>"


def title_html(job_id: str, func_name: str = "", queue_name: str = "") -> str:
    """`job <id> add on default`, for the top line of a live display (unknown parts left out)."""
    func = f" <b>{html.escape(func_name)}</b>" if func_name else ""
    queue = f" on {html.escape(queue_name)}" if queue_name else ""
    return f"<span style='font-size:12px'>job <code>{html.escape(job_id)}</code>{func}{queue}</span>"


def outcome_html(status: JobStatus | None, result: str | None) -> str:
    """Duration, then the result preview (finished) or the error line in red (failed, retrying)."""
    parts = [html.escape(duration_text(status))] if duration_text(status) else []
    if error_line(status):
        parts.append(f"<span style='color:{_RED}'>{html.escape(error_line(status))}</span>")
    elif result is not None:
        parts.append(f"→ <code>{html.escape(result)}</code>")
    return f"<span style='font-size:12px'>{' · '.join(parts)}</span>"


def traceback_html(text: str | None) -> str:
    """A remote traceback as preformatted text ('' for none)."""
    if not text:
        return ""
    return f"<pre style='font-size:11px;max-height:24em;overflow:auto'>{html.escape(text)}</pre>"


def hint_html(hint: str | None) -> str:
    """Why a job is not moving (no worker serves its queue), in amber ('' for none)."""
    return f"<span style='font-size:12px;color:{_AMBER}'>{html.escape(hint)}</span>" if hint else ""


def output_html(text: str) -> str:
    """A job's output as preformatted text ('' for none)."""
    if not text:
        return ""
    return (f"<pre class='naq-output' style='font-size:11px;max-height:24em;overflow:auto;margin:2px 0'>"
            f"{html.escape(text)}</pre>")


def folded_output_html(text: str) -> str:
    """Output folded under a `N lines` summary ('' for none)."""
    if not text:
        return ""
    count = len(text.splitlines())
    return f"<details><summary>{count} line{'s' * (count != 1)}</summary>{output_html(text)}</details>"


def job_html(job_id: str, func_name: str, queue_name: str, status: JobStatus | None, scheduled: bool = False,
             result: str | None = None) -> str:
    """The static HTML form of a job's state (frontends without widgets)."""
    state = state_of(status, scheduled)
    detail = html.escape(progress_text(status))
    return (f"<div class='naq-job'>{title_html(job_id, func_name, queue_name)} {state_html(state)}"
            f"{' · ' + detail if detail else ''}<br>{outcome_html(status, result)}</div>")


def wait_text(result: WaitResult, elapsed_s: float | None = None) -> str:
    """`12 of 50 ended: 11 done, 1 failed, 3 running, 35 queued · 2.5 s`."""
    seconds = result.elapsed_s if elapsed_s is None else elapsed_s
    return (f"{result.ended} of {result.total} ended: {result.done} done, {result.failed} failed, "
            f"{result.running} running, {result.queued} queued · {format_duration(seconds)}")


def wait_bar_style(result: WaitResult) -> str:
    """danger once any job failed, success when all finished, else info."""
    if result.failed:
        return "danger"
    return "success" if result.complete else "info"


def render_runs(statuses: Sequence[JobStatus], title: str = "", now: float | None = None,
                outputs: Mapping[str, str] | None = None) -> str:
    """A schedule's recent runs as an HTML table under `title`: run, state, started, duration, outcome, output.

    `outputs`: the last lines of each run's output by job id (folded away in its cell).
    """
    caption = f"<caption style='text-align:left'><b>{html.escape(title)}</b></caption>" if title else ""
    if not statuses:
        return f"<table class='naq-runs' style='font-size:12px'>{caption}<tr><td>no runs recorded</td></tr></table>"
    now = time.time() if now is None else now
    rows = "".join(_run_row(status, now, (outputs or {}).get(status.job_id, "")) for status in statuses)
    head = "".join(f"<th style='{_CELL}'>{label}</th>" for label in ("run", "state", "started", "duration",
                                                                       "outcome", "output"))
    return (f"<table class='naq-runs' style='font-size:12px'>{caption}<thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _run_row(status: JobStatus, now: float, output: str = "") -> str:
    key = status.schedule_key
    due_ms = run_due_ms(status.job_id, key) if key else None
    run = status.job_id[len(key) + 1:] if key and due_ms is not None else status.job_id
    started = (format_relative(from_timestamp(status.started_at), from_timestamp(now))
               if status.started_at is not None else "—")
    took = format_duration(status.duration_s) if status.ended and status.duration_s is not None else "—"
    outcome = error_line(status) or (progress_text(status) if status.status == RUNNING else "")
    cells = (html.escape(run), state_html(status.status), html.escape(started), html.escape(took),
             html.escape(outcome[:120]), folded_output_html(output))
    return "<tr>" + "".join(f"<td style='{_CELL}'>{cell}</td>" for cell in cells) + "</tr>"

