"""One rendering of a scheduled job, as text and HTML: the CLI, `%naq list` and the panel all build it here.

`schedule_cells` gives the cells of `COLUMNS` for a record; every view shows those cells (the panel
adds the last run's outcome, which it fetches), so the views cannot disagree on a field.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from naq_ipy.rules.times import format_duration, format_relative, from_timestamp, resolve_zone
from naq_ipy.schedules.record import UNREADABLE, ScheduledJob
from naq_ipy.views.tables import Note, Table

COLUMNS = ("name", "queue", "function", "schedule", "next run", "repeat left", "runs", "last run", "state")
PANEL_COLUMNS = (*COLUMNS, "outcome")
NO_RUN_YET = "—"
LOADING = "…"
GRID_COLUMNS = ("minmax(6em,1.2fr) minmax(4em,.6fr) minmax(6em,1.2fr) minmax(7em,1.3fr) minmax(20em,1.6fr) "
                "7.5em 4em minmax(12em,1.2fr) 5em minmax(5em,.9fr)")
_CELL_STYLE = "overflow:hidden;text-overflow:ellipsis;white-space:nowrap;padding:1px 6px"
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class Row:
    """One formatted panel row: the entry's key and its cell texts in `PANEL_COLUMNS` order."""

    key: str
    cells: tuple[str, ...]
    paused: bool = False

    def cell(self, column: str) -> str:
        """The text of `column` (a name of `PANEL_COLUMNS`)."""
        return self.cells[PANEL_COLUMNS.index(column)]


def local_time(ts: float, zone: tzinfo | None = None) -> datetime:
    """Unix seconds as an aware datetime in `zone` (default: this machine's local zone)."""
    return from_timestamp(ts).astimezone(zone)


def format_when(ts: float, now_utc: float, zone: tzinfo | None = None, show_zone: bool = True) -> str:
    """`2026-01-05 06:00:00 CET (in 3 min)`: wall time in `zone` (its name unless not `show_zone`), then relative."""
    when = local_time(ts, zone)
    zone_name = f" {when:%Z}" if show_zone else ""
    return f"{when:{_TIME_FORMAT}}{zone_name} ({format_relative(when, from_timestamp(now_utc))})"


def when(ts: float, tz: str | None = None, now: float | None = None) -> str:
    """`format_when` for a zone given by name (None: UTC), relative to `now` (default: now)."""
    return format_when(ts, time.time() if now is None else now, resolve_zone(tz))


def every(seconds: float) -> str:
    """A duration label that keeps whole seconds whole: '1 s', '2.5 s', '5 min'."""
    return f"{int(seconds)} s" if seconds < 10 and float(seconds).is_integer() else format_duration(seconds)


def short_function(name: str) -> str:
    """A function's display name: `__main__.` (a notebook's own functions) left out."""
    return name.removeprefix("__main__.")


def schedule_text(record: ScheduledJob) -> str:
    """How a schedule runs: 'every 1 s', 'cron */5 * * * * (Europe/Berlin)', 'once'."""
    if record.schedule_type == "interval" and record.interval_s is not None:
        return f"every {every(record.interval_s)}"
    return record.describe()


def timing(record: ScheduledJob) -> str:
    """`schedule_text` plus the runs in total: 'every 1 s, 3 runs'."""
    total = record.runs_total
    return schedule_text(record) + (f", {total} runs" if total is not None else "")


def repeat_left(record: ScheduledJob) -> str:
    """Runs still to come: `∞` for forever."""
    return "∞" if record.runs_left is None else str(record.runs_left)


def last_run_text(record: ScheduledJob, now_utc: float, zone: tzinfo | None = None) -> str:
    """When the last run was due, or `—` before the first."""
    return NO_RUN_YET if record.last_run_utc is None else format_when(record.last_run_utc, now_utc, zone)


def schedule_cells(record: ScheduledJob, now_utc: float, zone: tzinfo | None = None) -> tuple[str, ...]:
    """The cells of `COLUMNS` for `record`, times in `zone` (None: this machine's local zone)."""
    return (
        record.key, record.queue_name, short_function(record.func_name), schedule_text(record),
        "-" if record.status == UNREADABLE else format_when(record.next_run_utc, now_utc, zone),
        repeat_left(record), str(record.run_count),
        last_run_text(record, now_utc, zone), record.status,
    )


def outcome_text(status: str | None, error: str | None = None) -> str:
    """The last run's outcome: `finished`, `failed: ValueError: bad`, `expired` for a status gone by TTL."""
    if not status:
        return "expired"
    if error:
        first = error.strip().splitlines()[0] if error.strip() else ""
        return f"{status}: {first[:80]}" if first else status
    return status


def format_row(record: ScheduledJob, now_utc: float, outcome: str | None = None, zone: tzinfo | None = None) -> Row:
    """The panel row of `record`; `outcome` is the last run's label (None while not fetched yet)."""
    last = NO_RUN_YET if record.last_run_id is None else (outcome if outcome is not None else LOADING)
    return Row(record.key, (*schedule_cells(record, now_utc, zone), last), record.paused)


def schedules_table(records: Sequence[ScheduledJob], zone: tzinfo | None = None, now: float | None = None) -> Table:
    """The table of `naq list-scheduled` and `%naq list`: one row of `COLUMNS` per record."""
    now = time.time() if now is None else now
    rows = [schedule_cells(r, now, zone) for r in records]
    return Table(COLUMNS, rows, title="scheduled jobs", empty="no scheduled jobs")


def schedule_line(record: ScheduledJob, created: bool, tz: str | None = None) -> Note:
    """`created schedule 'tick': every 1 s, next run 2026-11-28 00:01:02 UTC (in 3 s)`."""
    verb = "created" if created else "updated"
    paused = " (paused)" if record.paused else ""
    return Note(f"{verb} schedule {record.key!r}{paused}: {timing(record)}, next run {when(record.next_run_utc, tz)}")


def _cell(text: str, bold: bool = False) -> str:
    escaped = html.escape(text)
    body = f"<b>{escaped}</b>" if bold else escaped
    return f"<div style='{_CELL_STYLE}' title='{escaped}'>{body}</div>"


def _grid(cells: str, extra_style: str = "") -> str:
    return (f"<div class='naq-row' style='display:grid;grid-template-columns:{GRID_COLUMNS};"
            f"font-size:12px;line-height:20px;{extra_style}'>{cells}</div>")


def header_html() -> str:
    """The column header of the panel's widget table (same grid as the rows)."""
    return _grid("".join(_cell(c, bold=True) for c in PANEL_COLUMNS), "border-bottom:1px solid #bbb")


def row_html(row: Row) -> str:
    """One row as a CSS grid line matching `header_html`; paused rows greyed."""
    style = "border-bottom:1px solid #eee" + (";color:#888" if row.paused else "")
    return _grid("".join(_cell(c) for c in row.cells), style)


def rows_table(rows: Sequence[Row], caption: str) -> Table:
    """Panel rows as a static table (text for a terminal, HTML for frontends without widgets)."""
    return Table(PANEL_COLUMNS, [row.cells for row in rows], title=caption, css_class="naq-scheduled")
