"""The queue monitor's running and pending job lists: a fixed set of rows, each a Cancel button and a line.

Rows are built once and filled in place (`show`); a row's button cancels the job it shows at
the moment of the click. `running_rows` / `pending_rows` turn what a poll read into those lines.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from naq_ipy.ipython.monitor_table import clock
from naq_ipy.status.results import JobStatus

JOB_ROWS = 10


@dataclass(frozen=True)
class JobLine:
    """One job of a list: its id and the HTML line shown next to its Cancel button."""

    job_id: str
    html: str


@dataclass
class JobList:
    """The widgets of one list: a title, and rows of (box, line, Cancel button); `shown` = the ids in the rows."""

    title: Any
    rows: list[tuple[Any, Any, Any]]
    shown: list[str | None] = field(default_factory=list)

    @classmethod
    def build(cls, make: Callable[..., Any], widgets: Any, on_cancel: Callable[[int], None], *,
              buttons: bool = True) -> JobList:
        """The widgets, made with the panel's `make`; a button click calls `on_cancel(row)` (no buttons: read-only)."""
        rows = []
        for i in range(JOB_ROWS):
            line = make(widgets.HTML, layout=widgets.Layout(flex="1 1 auto"))
            button = make(widgets.Button, description="Cancel", button_style="warning",
                          layout=widgets.Layout(width="auto"))
            button.on_click(lambda _b, row=i: on_cancel(row))
            children = [button, line] if buttons else [line]
            rows.append((make(widgets.HBox, children, layout=widgets.Layout(display="none")), line, button))
        return cls(make(widgets.HTML), rows, [None] * JOB_ROWS)

    def boxes(self) -> list[Any]:
        """The title and the row boxes, for the panel's layout."""
        return [self.title, *(box for box, _, _ in self.rows)]

    def show(self, title: str, lines: Sequence[JobLine], total: int) -> None:
        """Fill the rows with `lines` (the first JOB_ROWS of `total`), hide the rest."""
        self.title.value = f"<b>{html.escape(title)}</b> ({total:,})"
        for i, (box, line, _button) in enumerate(self.rows):
            job = lines[i] if i < len(lines) else None
            self.shown[i] = job.job_id if job else None
            box.layout.display = "none" if job is None else None
            if job is not None:
                line.value = job.html


def _line(job_id: str, *parts: str) -> JobLine:
    rest = " · ".join(html.escape(p) for p in parts if p)
    return JobLine(job_id, f"<code>{html.escape(job_id)}</code> {rest}")


def running_rows(workers: Sequence[Mapping[str, Any]], statuses: Mapping[str, JobStatus],
                 zone: tzinfo | None = None) -> list[JobLine]:
    """The jobs live workers hold (running, then waiting for dependencies), with function and since when."""
    lines = []
    for state, key in (("running", "current_jobs"), ("waiting for dependencies", "waiting_jobs")):
        for worker in workers:
            for job_id in worker.get(key) or []:
                status = statuses.get(job_id)
                since = f"since {clock(status.started_at, zone)}" if status and status.started_at else ""
                func = status.func_name if status and status.func_name else ""
                lines.append(_line(job_id, func, status.status if status else state, since,
                                   f"on {worker.get('worker_id', '?')}"))
    return lines


def pending_rows(headers: Sequence[Mapping[str, Any]], held: set[str], zone: tzinfo | None = None) -> list[JobLine]:
    """The queued jobs read from the stream (oldest first) that no worker holds."""
    return [_line(str(h.get("job_id")), str(h.get("func_name") or ""), f"queue {h.get('queue_name', '?')}",
                  f"enqueued {clock(h.get('enqueue_time'), zone)}" if h.get("enqueue_time") else "")
            for h in headers if h.get("job_id") not in held]
