"""Pure logic of the scheduled-jobs panel: rows, filter/sort, paging, row diffs, edit checks, static tables.

Nothing here talks to NATS or imports ipywidgets; the panels only wire these functions to widgets.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from naq_ipy.errors import ConfigurationError
from naq_ipy.rules.times import format_relative, from_timestamp, next_cron_runs
from naq_ipy.schedules.changes import apply_updates
from naq_ipy.schedules.record import UNREADABLE, ScheduledJob
from naq_ipy.views.tables import format_table

COLUMNS = ("name", "queue", "function", "schedule", "next run", "repeat left", "runs", "last run", "state")
PAGE_SIZE = 25
EDIT_MODES = ("cron", "interval", "next run")
NO_RUN_YET = "—"
LOADING = "…"
GRID_COLUMNS = ("minmax(6em,1.2fr) minmax(4em,.6fr) minmax(6em,1.2fr) minmax(7em,1.3fr) minmax(20em,1.6fr) "
                "7.5em 4em minmax(5em,.9fr) 5em")
HEADER_LABELS = {"next run": "next run (local)"}
_CELL_STYLE = "overflow:hidden;text-overflow:ellipsis;white-space:nowrap;padding:1px 6px"
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class Row:
    """One formatted table row: the entry's key and its cell texts in `COLUMNS` order."""

    key: str
    cells: tuple[str, ...]
    paused: bool = False


def local_time(ts: float, zone: tzinfo | None = None) -> datetime:
    """Unix seconds as an aware datetime in `zone` (default: this machine's local zone)."""
    return from_timestamp(ts).astimezone(zone)


def format_when(ts: float, now_utc: float, zone: tzinfo | None = None, show_zone: bool = False) -> str:
    """`2026-01-05 06:00:00 (in 3 min)`: local wall time (`CET` after it with `show_zone`) and a relative label."""
    when = local_time(ts, zone)
    zone_name = f" {when:%Z}" if show_zone else ""
    return f"{when:{_TIME_FORMAT}}{zone_name} ({format_relative(when, from_timestamp(now_utc))})"


def short_function(name: str) -> str:
    """A function's display name: `__main__.` (a notebook's own functions) left out."""
    return name.removeprefix("__main__.")


def repeat_left(record: ScheduledJob) -> str:
    """Runs still to come: `∞` for forever, else repeat minus runs so far (never below 0)."""
    if record.repeat is None:
        return "∞"
    return str(max(record.repeat - record.run_count, 0))


def outcome_text(status: str | None, error: str | None = None) -> str:
    """The 'last run' cell: `finished`, `failed: ValueError: bad`, `expired` for a status gone by TTL."""
    if not status:
        return "expired"
    if error:
        first = error.strip().splitlines()[0] if error.strip() else ""
        return f"{status}: {first[:80]}" if first else status
    return status


def format_row(record: ScheduledJob, now_utc: float, outcome: str | None = None, zone: tzinfo | None = None) -> Row:
    """The row of `record`; `outcome` is the last run's label (None while not fetched yet)."""
    last = NO_RUN_YET if record.last_run_id is None else (outcome if outcome is not None else LOADING)
    next_run = "-" if record.status == UNREADABLE else format_when(record.next_run_utc, now_utc, zone)
    cells = (
        record.key, record.queue_name, short_function(record.func_name), record.describe(),
        next_run, repeat_left(record), str(record.run_count), last,
        record.status,
    )
    return Row(record.key, cells, record.paused)


@dataclass(frozen=True)
class Filter:
    """Which entries to show: a text found in name/function/queue/schedule, one queue, one state."""

    text: str = ""
    queue: str | None = None
    state: str | None = None

    def matches(self, record: ScheduledJob) -> bool:
        """True if `record` passes every part of the filter."""
        if self.queue and record.queue_name != self.queue:
            return False
        if self.state and record.status != self.state:
            return False
        needle = self.text.strip().lower()
        if not needle:
            return True
        haystack = f"{record.key}\n{record.func_name}\n{record.queue_name}\n{record.describe()}".lower()
        return needle in haystack


def select(records: Iterable[ScheduledJob], flt: Filter) -> list[ScheduledJob]:
    """The entries passing `flt`, soonest next run first (ties by name)."""
    return sorted((r for r in records if flt.matches(r)), key=lambda r: (r.next_run_utc, r.key))


@dataclass(frozen=True)
class Page:
    """One page of a list: its items, its 0-based number (clamped), the page count and the item total."""

    items: list[Any]
    number: int
    pages: int
    total: int
    size: int

    @property
    def first(self) -> int:
        """1-based position of the first item shown (0 when empty)."""
        return self.number * self.size + 1 if self.items else 0

    def label(self) -> str:
        """`1–25 of 10,000 · page 1/400`."""
        last = self.first + len(self.items) - 1 if self.items else 0
        return f"{self.first:,}–{last:,} of {self.total:,} · page {self.number + 1}/{self.pages}"


def paginate(items: Sequence[Any], number: int, size: int = PAGE_SIZE) -> Page:
    """Page `number` (0-based, clamped into range) of `items`, `size` per page."""
    if size < 1:
        raise ConfigurationError(f"page size must be >= 1, got {size}")
    pages = max(1, math.ceil(len(items) / size))
    number = min(max(number, 0), pages - 1)
    return Page(list(items[number * size:(number + 1) * size]), number, pages, len(items), size)


def pad(rows: Sequence[Row], size: int) -> list[Row | None]:
    """`rows` padded with None to `size` slots (one slot per row widget)."""
    return [*rows, *([None] * (size - len(rows)))]


def changed_slots(old: Sequence[Row | None], new: Sequence[Row | None]) -> list[int]:
    """Indices of the slots whose row differs between two renders (only those widgets are touched)."""
    return [i for i in range(max(len(old), len(new)))
            if (old[i] if i < len(old) else None) != (new[i] if i < len(new) else None)]


@dataclass(frozen=True)
class EditForm:
    """The edit form's raw texts: one timing mode (`EDIT_MODES`) and its fields, and repeat."""

    mode: str
    cron: str = ""
    tz: str = ""
    interval: str = ""
    next_run: str = ""
    repeat: str = ""


@dataclass(frozen=True)
class EditCheck:
    """The outcome of checking a form: the updates to save, or why not; and the next runs it gives."""

    updates: dict[str, Any] | None
    error: str = ""
    preview: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the form can be saved."""
        return self.updates is not None


def form_for(record: ScheduledJob, zone: tzinfo | None = None) -> EditForm:
    """The form pre-filled with `record`'s timing (next run in local time)."""
    mode = {"cron": "cron", "interval": "interval"}.get(record.schedule_type, "next run")
    return EditForm(
        mode=mode, cron=record.cron or "", tz=record.tz or "",
        interval=f"{record.interval_s:g}s" if record.interval_s else "",
        next_run=f"{local_time(record.next_run_utc, zone):{_TIME_FORMAT}}",
        repeat="" if record.repeat is None else str(record.repeat),
    )


def parse_local_time(text: str, zone: tzinfo | None = None) -> datetime:
    """`2026-01-05 06:00[:00]` (or ISO with `T`/offset) as an aware datetime; naive text is in `zone`."""
    text = text.strip()
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(f"invalid next run {text!r}: use YYYY-MM-DD HH:MM[:SS]") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone) if zone is not None else value.astimezone()
    return value


def _parse_repeat(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigurationError(f"repeat must be a whole number >= 1 or empty (forever), got {text!r}") from None


def form_updates(form: EditForm, zone: tzinfo | None = None) -> dict[str, Any]:
    """The `modify.apply_updates` keywords a form asks for; ConfigurationError if a field cannot be read."""
    if form.mode not in EDIT_MODES:
        raise ConfigurationError(f"unknown edit mode {form.mode!r}")
    updates: dict[str, Any] = {"repeat": _parse_repeat(form.repeat)}
    if form.mode == "cron":
        if not form.cron.strip():
            raise ConfigurationError("enter a cron expression, e.g. '*/5 * * * *'")
        updates.update(cron=form.cron.strip(), tz=form.tz.strip() or None)
    elif form.mode == "interval":
        if not form.interval.strip():
            raise ConfigurationError("enter an interval, e.g. '90s', '5m', '1h30m'")
        updates["interval"] = form.interval.strip()
    else:
        updates["next_run"] = parse_local_time(form.next_run, zone)
    return updates


def upcoming_runs(record: ScheduledJob, now_utc: float, count: int = 3) -> list[float]:
    """The next `count` runs of `record` as unix seconds (cron: from now; interval: from its next run)."""
    if record.schedule_type == "cron" and record.cron:
        return [d.timestamp() for d in next_cron_runs(record.cron, from_timestamp(now_utc), record.tz, count)]
    if record.schedule_type == "interval" and record.interval_s:
        return [record.next_run_utc + i * record.interval_s for i in range(count)]
    return [record.next_run_utc]


def check_edit(record: ScheduledJob, form: EditForm, now_utc: float, zone: tzinfo | None = None) -> EditCheck:
    """Validate `form` against `record` as the user types: updates + next runs, or the error text."""
    try:
        updates = form_updates(form, zone)
        new = apply_updates(record, updates)
        runs = upcoming_runs(new, now_utc)
    except ConfigurationError as e:
        return EditCheck(None, str(e))
    return EditCheck(updates, "", tuple(format_when(ts, now_utc, zone, show_zone=True) for ts in runs))


def _cell(text: str, bold: bool = False) -> str:
    escaped = html.escape(text)
    body = f"<b>{escaped}</b>" if bold else escaped
    return f"<div style='{_CELL_STYLE}' title='{escaped}'>{body}</div>"


def _grid(cells: str, extra_style: str = "") -> str:
    return (f"<div class='naq-row' style='display:grid;grid-template-columns:{GRID_COLUMNS};"
            f"font-size:12px;line-height:20px;{extra_style}'>{cells}</div>")


def header_html() -> str:
    """The column header of the widget table (same grid as the rows)."""
    return _grid("".join(_cell(HEADER_LABELS.get(c, c), bold=True) for c in COLUMNS), "border-bottom:1px solid #bbb")


def row_html(row: Row) -> str:
    """One row as a CSS grid line matching `header_html`; paused rows greyed."""
    style = "border-bottom:1px solid #eee" + (";color:#888" if row.paused else "")
    return _grid("".join(_cell(c) for c in row.cells), style)


def table_html(rows: Sequence[Row], caption: str) -> str:
    """A plain HTML table of `rows` for frontends without widgets (nbconvert, GitHub)."""
    head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in row.cells)
                   + "</tr>" for row in rows)
    return (f"<table class='naq-scheduled'><caption style='text-align:left'>{html.escape(caption)}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def table_text(rows: Sequence[Row], caption: str) -> str:
    """The same table as fixed-width text (for `repr` in a terminal)."""
    return f"{caption}\n{format_table(COLUMNS, [row.cells for row in rows])}"


def caption(page: Page, total_all: int) -> str:
    """`Scheduled jobs: 1–25 of 9,000 · page 1/360 · 10,000 in all`."""
    extra = f" · {total_all:,} in all" if total_all != page.total else ""
    return f"Scheduled jobs: {page.label()}{extra}"

