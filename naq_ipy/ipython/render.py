"""Text and HTML forms of what the magics show: one-line notes, tables, schedule and job summaries."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from naq_ipy.rules.times import format_duration, format_relative, from_timestamp, resolve_zone
from naq_ipy.schedules.record import ScheduledJob

_COLORS = {"info": "inherit", "warning": "#b26b00", "error": "#c62828"}


@dataclass(frozen=True)
class Note:
    """One line of output with a text and an HTML form; `level` is info, warning or error."""

    text: str
    level: str = "info"

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__

    def _repr_html_(self) -> str:
        color = _COLORS.get(self.level, "inherit")
        return f"<div class='naq-note' style='color:{color}'>{html.escape(self.text)}</div>"


@dataclass(frozen=True)
class Table:
    """Rows of text cells under headers (all empty: a key/value list); shown as aligned text or HTML."""

    headers: Sequence[str]
    rows: Sequence[Sequence[Any]] = field(default_factory=list)
    title: str = ""
    empty: str = "(none)"

    def __repr__(self) -> str:
        cells = [[str(h) for h in self.headers], *([str(c) for c in row] for row in self.rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        if any(self.headers):
            lines.insert(1, "  ".join("-" * w for w in widths))
        else:
            del lines[0]
        if not self.rows:
            lines.append(self.empty)
        return "\n".join(([self.title] if self.title else []) + lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(str(h))}</th>" for h in self.headers)
        head = f"<thead><tr>{head}</tr></thead>" if any(self.headers) else ""
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in self.rows
        ) or f"<tr><td colspan='{len(self.headers)}'>{html.escape(self.empty)}</td></tr>"
        caption = f"<caption style='text-align:left'><b>{html.escape(self.title)}</b></caption>" if self.title else ""
        return f"<table class='naq-table'>{caption}{head}<tbody>{body}</tbody></table>"


def when(ts: float, tz: str | None = None, now: float | None = None) -> str:
    """`2026-11-28 00:01:02 UTC (in 3 s)`: unix seconds `ts` in zone `tz`, then relative to `now`."""
    moment = from_timestamp(ts)
    relative = format_relative(moment, from_timestamp(time.time() if now is None else now))
    return f"{moment.astimezone(resolve_zone(tz)).strftime('%Y-%m-%d %H:%M:%S %Z')} ({relative})"


def every(seconds: float) -> str:
    """A duration label that keeps whole seconds whole: '1 s', '2.5 s', '5 min'."""
    return f"{int(seconds)} s" if seconds < 10 and float(seconds).is_integer() else format_duration(seconds)


def timing(record: ScheduledJob) -> str:
    """How a schedule runs: 'every 1 s', 'cron */5 * * * * (Europe/Berlin)', 'once', plus a repeat count."""
    if record.schedule_type == "interval" and record.interval_s is not None:
        text = f"every {every(record.interval_s)}"
    else:
        text = record.describe()
    return text + (f", {record.runs_total} runs" if record.runs_total is not None else "")


def schedule_line(record: ScheduledJob, created: bool, tz: str | None = None) -> Note:
    """`created schedule 'tick': every 1 s, next run 2026-11-28 00:01:02 UTC (in 3 s)`."""
    verb = "created" if created else "updated"
    paused = " (paused)" if record.paused else ""
    return Note(f"{verb} schedule {record.key!r}{paused}: {timing(record)}, next run {when(record.next_run_utc, tz)}")


def schedules_table(records: Sequence[ScheduledJob], tz: str | None = None) -> Table:
    """The `%naq list` table: one row per scheduled job."""
    now = time.time()
    rows = [
        (
            r.key, r.queue_name, r.func_name, timing(r), r.status,
            when(r.next_run_utc, tz, now) if r.status == "active" else "-",
            f"{r.run_count}/{r.runs_total}" if r.runs_total is not None else str(r.run_count),
            r.last_run_id or "-",
        )
        for r in records
    ]
    headers = ("name", "queue", "function", "timing", "status", "next run", "runs", "last run")
    return Table(headers, rows, title="scheduled jobs", empty="no scheduled jobs")

