"""Pure logic of the scheduled-jobs panel: filter/sort, paging, row diffs, edit checks.

Nothing here talks to NATS or imports ipywidgets; the panels only wire these functions to widgets.
Rows and cells are formatted by `naq_ipy.views.schedules`, like every other view of a schedule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from naq_ipy.errors import ConfigurationError
from naq_ipy.rules.times import from_timestamp, next_cron_runs, parse_iso_time
from naq_ipy.schedules.changes import apply_updates
from naq_ipy.schedules.record import ScheduledJob
from naq_ipy.views.schedules import Row, format_when, local_time

PAGE_SIZE = 25
EDIT_MODES = ("cron", "interval", "next run")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


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
    value = parse_iso_time(text, zone, what="next run")
    return value if value.tzinfo is not None else value.astimezone()


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


def caption(page: Page, total_all: int) -> str:
    """`Scheduled jobs: 1–25 of 9,000 · page 1/360 · 10,000 in all`."""
    extra = f" · {total_all:,} in all" if total_all != page.total else ""
    return f"Scheduled jobs: {page.label()}{extra}"

