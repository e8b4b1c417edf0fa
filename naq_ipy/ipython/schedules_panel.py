"""`ScheduledJobsPanel`: browse, filter and change scheduled jobs, kept live by one KV watch.

One page of rows is drawn into a fixed pool of row widgets (a checkbox and an HTML line each);
an update rewrites only the slots whose formatted row changed (`table.changed_slots`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from datetime import tzinfo
from typing import Any

from naq_ipy.client.bridge import bridge_loop
from naq_ipy.client.shortcuts import cancel_scheduled_job, pause_scheduled_job, resume_scheduled_job
from naq_ipy.errors import NaqException
from naq_ipy.ipython import schedules_table as table
from naq_ipy.ipython.livewatch import Coalescer, LiveWatch, describe_error
from naq_ipy.ipython.panel_base import Panel
from naq_ipy.ipython.schedules_form import EditBox
from naq_ipy.ipython.schedules_model import JobsModel
from naq_ipy.ipython.schedules_widgets import ALL, ScheduleControls, build_controls
from naq_ipy.schedules.record import ScheduledJob
from naq_ipy.schedules.scheduler import run_now
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.status.output import output_tails
from naq_ipy.status.results import TERMINAL, JobStatus, fetch_status
from naq_ipy.status.waiting import recent_runs
from naq_ipy.views import schedules as view
from naq_ipy.views.jobs import render_runs
from naq_ipy.wire.names import SCHEDULED_JOBS_KV_NAME
from naq_ipy.wire.settings import ConnectionSettings

TICK_S = 15.0
RUNS_SHOWN = 10


class ScheduledJobsPanel(Panel):
    """A live table of the scheduled jobs in `naq_scheduled_jobs`, with pause/resume/cancel/run now/edit.

    `queue` pre-selects one queue; `page_size` rows are shown per page; times are shown in
    `zone` (default: this machine's local zone); `read_only` leaves only the table, its filters
    and "Recent runs" (no pause, resume, run now, edit or cancel).
    """

    def __init__(self, queue: str | None = None, url: str | ConnectionSettings | None = None, *,
                 page_size: int = table.PAGE_SIZE, zone: tzinfo | None = None, read_only: bool = False) -> None:
        super().__init__(url, read_only=read_only)
        self.model = JobsModel()
        self.manager = ScheduledJobManager(self.settings)
        self.filter = table.Filter(queue=queue)
        self.page_size = page_size
        self.zone = zone
        self.page = 0
        self.selected: set[str] = set()
        self.slot_keys: list[str | None] = [None] * page_size
        self._shown: list[view.Row | None] = [None] * page_size
        self._fetching: set[str] = set()
        self._syncing = False
        self._lock = threading.RLock()
        self.controls: ScheduleControls | None = None  # the named widgets, once built
        self.editor: EditBox | None = None
        self._render_soon = Coalescer(self.marshal, self._render)
        self._watch = LiveWatch(self.settings, SCHEDULED_JOBS_KV_NAME, ScheduledJob.from_bytes, self, tick_s=TICK_S,
                                unreadable=ScheduledJob.unreadable)
        self._watch.start()

    # -- watch sink (bridge thread) ------------------------------------------------------------
    def on_snapshot(self, entries: Mapping[str, ScheduledJob]) -> None:
        """All entries after a (re)start of the watch."""
        self.model.replace(entries)
        self._render_soon.request()

    def on_changes(self, changes: Mapping[str, ScheduledJob | None]) -> None:
        """Changed entries, or a clock tick."""
        self.model.update(changes)
        self._render_soon.request()

    def on_status(self, problem: str | None) -> None:
        """The watch's health."""
        self.problem = problem
        self._render_soon.request()

    def wait_loaded(self, timeout_s: float) -> bool:
        """Wait until the first snapshot arrived; True if it did."""
        return self.model.loaded.wait(timeout_s)

    @property
    def watching(self) -> bool:
        """True while the KV watch runs."""
        return self._watch.running

    def start_watching(self) -> None:
        """Start (or restart) the KV watch."""
        self._watch.start()

    def stop_watching(self) -> None:
        """Stop the KV watch: the panel keeps what it has and learns of no change until started again."""
        self._watch.stop()

    # -- rendering (widgets' thread) -----------------------------------------------------------
    def current_page(self) -> table.Page:
        """The page shown now (clamped), of the entries that pass the filter."""
        return table.paginate(self.model.view(self.filter), self.page, self.page_size)

    def _page_rows(self) -> tuple[table.Page, list[view.Row]]:
        now = time.time()
        with self.model.lock:
            page = self.current_page()
            rows = [view.format_row(r, now, self.model.outcome(r.last_run_id), self.zone) for r in page.items]
        return page, rows

    def _render(self) -> None:
        if self._root is None or self.closed:
            return
        with self._lock:
            page, rows = self._page_rows()
            self.page = page.number
            new = table.pad(rows, self.page_size)
            for i in table.changed_slots(self._shown, new):
                self._draw_slot(i, new[i])
            self._shown = new
            self.slot_keys = [row.key if row else None for row in new]
            self._sync_controls(page)
        self._fetch_outcomes(page.items)

    def _draw_slot(self, i: int, row: view.Row | None) -> None:
        assert self.controls is not None
        slot = self.controls.slots[i]
        if row is None:
            slot.box.layout.display = "none"
            return
        slot.line.value = view.row_html(row)
        slot.box.layout.display = None

    def _sync_controls(self, page: table.Page) -> None:
        c = self.controls
        assert c is not None
        self._syncing = True
        try:
            for slot, key in zip(c.slots, self.slot_keys, strict=True):
                slot.check.value = key is not None and key in self.selected
            options = [ALL, *sorted({*self.model.queues(), *([self.filter.queue] if self.filter.queue else [])})]
            if list(c.queue.options) != options:
                c.queue.options = options
            c.queue.value = self.filter.queue if self.filter.queue in options else ALL
        finally:
            self._syncing = False
        c.pager.value = f"<span style='font-size:12px'>{table.caption(page, len(self.model.records))}</span>"
        c.prev.disabled = page.number == 0
        c.next.disabled = page.number >= page.pages - 1
        self._show_selection()
        self._show_status()

    def _show_selection(self) -> None:
        if self.controls is not None:
            self.controls.selection.value = f"<span style='font-size:12px'>{len(self.selected)} selected</span>"

    # -- public view of what is drawn ----------------------------------------------------------
    @property
    def rows(self) -> list[view.Row]:
        """The rows drawn on the current page, in order."""
        with self._lock:
            return [row for row in self._shown if row is not None]

    def row(self, key: str) -> view.Row | None:
        """The drawn row of `key`, None if it is not on the current page."""
        return next((row for row in self.rows if row.key == key), None)

    def drawn_html(self, key: str) -> str | None:
        """The HTML drawn in the slot that shows `key`, None if it is not on the page."""
        if self.controls is None or key not in self.slot_keys:
            return None
        return str(self.controls.slots[self.slot_keys.index(key)].line.value)

    # -- last-run labels -----------------------------------------------------------------------
    def _fetch_outcomes(self, records: Iterable[ScheduledJob]) -> None:
        with self.model.lock:
            wanted = [r.last_run_id for r in records
                      if r.last_run_id and r.last_run_id not in self.model.outcomes
                      and r.last_run_id not in self._fetching]
        if not wanted or self.closed:
            return
        self._fetching.update(wanted)
        future = asyncio.run_coroutine_threadsafe(self._read_outcomes(wanted), bridge_loop())
        future.add_done_callback(lambda f: self._fetching.difference_update(wanted))

    async def _read_outcomes(self, job_ids: list[str]) -> None:
        found = await asyncio.gather(*(fetch_status(i, self.settings) for i in job_ids), return_exceptions=True)
        with self.model.lock:
            for job_id, status in zip(job_ids, found, strict=True):
                if isinstance(status, BaseException):
                    self.model.outcomes[job_id] = (f"? {describe_error(status)}", False)
                elif status is None:
                    self.model.outcomes[job_id] = (view.outcome_text(None), True)
                else:
                    self.model.outcomes[job_id] = (view.outcome_text(status.status, status.error),
                                                   status.status in TERMINAL)
        self._render_soon.request()

    # -- actions -------------------------------------------------------------------------------
    def select_keys(self, keys: Iterable[str], selected: bool = True) -> None:
        """Select (or unselect) entries by key, as the row checkboxes do."""
        with self._lock:
            if selected:
                self.selected.update(keys)
            else:
                self.selected.difference_update(keys)
        self._render_soon.request()

    def _targets(self) -> list[str]:
        with self.model.lock:
            return sorted(k for k in self.selected if k in self.model.records)

    def _on_each(self, verb: str, done_label: str, action: Callable[[str], Awaitable[Any]],
                 after: Callable[[list[str]], None] | None = None) -> None:
        """Run `action` on every selected entry at once; report which failed, if any."""
        if self.refused(verb):
            return
        keys = self._targets()
        if not keys:
            self.set_status(f"select the jobs to {verb} first", error=True)
            return

        async def run_all() -> list[str]:
            results = await asyncio.gather(*(action(k) for k in keys), return_exceptions=True)
            failed = [(k, r) for k, r in zip(keys, results, strict=True) if isinstance(r, BaseException)]
            if failed:
                detail = "; ".join(f"{k}: {describe_error(e)}" for k, e in failed[:3])
                raise NaqException(f"{len(failed)} of {len(keys)} failed — {detail}")
            return keys

        def done(done_keys: list[str]) -> None:
            self.set_status(f"{done_label}: {', '.join(done_keys[:5])}" + (" …" if len(done_keys) > 5 else ""))
            if after is not None:
                after(done_keys)

        self.run_action(f"{verb} {len(keys)} job(s)", run_all(), done)

    def pause(self) -> None:
        """Pause the selected entries."""
        self._on_each("pause", "paused", lambda k: pause_scheduled_job(k, nats_url=self.settings))

    def resume(self) -> None:
        """Resume the selected entries (missed runs are skipped)."""
        self._on_each("resume", "resumed", lambda k: resume_scheduled_job(k, nats_url=self.settings))

    def run_now(self) -> None:
        """Fire one run of each selected entry now, leaving its timing alone."""
        self._on_each("run now", "ran now", lambda k: run_now(k, self.settings))

    def ask_cancel(self) -> None:
        """Show the confirm step for cancelling the selected entries."""
        if self.refused("cancel"):
            return
        keys = self._targets()
        if not keys:
            self.set_status("select the jobs to cancel first", error=True)
            return
        assert self.controls is not None
        self.controls.confirm_text.value = (f"<b>Cancel {len(keys)} scheduled job(s)?</b> "
                                            f"{', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}")
        self.controls.confirm.layout.display = None

    def cancel(self) -> None:
        """Delete the selected entries (after the confirm step)."""
        if self.controls is not None:
            self.controls.confirm.layout.display = "none"

        def forget(keys: list[str]) -> None:
            self.select_keys(keys, selected=False)

        self._on_each("cancel", "cancelled", lambda k: cancel_scheduled_job(k, nats_url=self.settings), forget)

    def runs(self) -> None:
        """Show the recent runs of the one selected entry with their outcomes (below the buttons)."""
        keys = self._targets()
        if len(keys) != 1:
            self.set_status("select exactly one job to see its runs", error=True)
            return

        def show(found: tuple[list[JobStatus], dict[str, str]]) -> None:
            assert self.controls is not None
            self.controls.runs_table.value = render_runs(found[0], f"recent runs of {keys[0]}", outputs=found[1])

        self.run_action(f"reading the runs of {keys[0]}", runs_with_output(keys[0], RUNS_SHOWN, self.settings), show)

    def edit(self) -> None:
        """Open the edit form for the one selected entry."""
        if self.refused("edit"):
            return
        keys = self._targets()
        if len(keys) != 1:
            self.set_status("select exactly one job to edit", error=True)
            return
        with self.model.lock:
            record = self.model.records[keys[0]]
        assert self.editor is not None
        self.editor.open(record)

    def reload(self, record: ScheduledJob) -> None:
        """Put a freshly read entry into the table."""
        self.model.update({record.key: record})
        self._render()

    # -- widget tree ---------------------------------------------------------------------------
    def _build(self, widgets: Any) -> Any:
        c = self.controls = build_controls(self.make, widgets, self.page_size)
        self.editor = EditBox(self, widgets)
        self._wire(c)
        assert self._status is not None
        make = self.make
        return make(widgets.VBox, [
            make(widgets.HTML, "<b>Scheduled jobs</b>"),
            make(widgets.HBox, [c.text, c.queue, c.state, c.prev, c.pager, c.next]),
            make(widgets.HBox, [*([c.runs] if self.read_only else c.buttons), c.selection]),
            *([] if self.read_only else [c.confirm, self.editor.box]), c.runs_table, self._status, c.header,
            make(widgets.VBox, [slot.box for slot in c.slots]),
        ])

    def _wire(self, c: ScheduleControls) -> None:
        guarded = self.guarded
        c.text.observe(guarded("filter", lambda change: self._set_filter(text=change["new"])), "value")
        c.queue.observe(guarded("filter", lambda change: self._set_filter(queue=change["new"])), "value")
        c.state.observe(guarded("filter", lambda change: self._set_filter(state=change["new"])), "value")
        c.all.observe(guarded("select", lambda change: self._on_check_all(change["new"])), "value")
        c.prev.on_click(guarded("page", lambda _b: self.go_to(self.page - 1)))
        c.next.on_click(guarded("page", lambda _b: self.go_to(self.page + 1)))
        for name in ("pause", "resume", "run_now", "runs", "edit"):
            getattr(c, name).on_click(guarded(name, lambda _b, name=name: getattr(self, name)()))
        c.cancel.on_click(guarded("cancel", lambda _b: self.ask_cancel()))
        c.confirm_yes.on_click(guarded("cancel", lambda _b: self.cancel()))
        c.confirm_no.on_click(guarded("cancel", lambda _b: setattr(c.confirm.layout, "display", "none")))
        for i, slot in enumerate(c.slots):
            slot.check.observe(guarded("select", lambda change, i=i: self._on_check(i, change["new"])), "value")

    def _set_filter(self, **changes: str) -> None:
        if self._syncing:
            return
        values: dict[str, Any] = {k: (None if v == ALL else v) for k, v in changes.items()}
        self.filter = replace(self.filter, **values)
        self.page = 0
        self._render()

    def go_to(self, page: int) -> None:
        """Show page `page` (0-based, clamped)."""
        self.page = page
        self._render()

    def _on_check(self, slot: int, value: bool) -> None:
        key = self.slot_keys[slot]
        if self._syncing or key is None:
            return
        if value:
            self.selected.add(key)
        else:
            self.selected.discard(key)
        self._show_selection()

    def _on_check_all(self, value: bool) -> None:
        if not self._syncing:
            self.select_keys([k for k in self.slot_keys if k], value)

    # -- static fallback -----------------------------------------------------------------------
    def _static_rows(self) -> tuple[list[view.Row], str]:
        with self.model.lock:
            page, rows = self._page_rows()
            return rows, table.caption(page, len(self.model.records))

    def _static_html(self) -> str:
        rows, caption = self._static_rows()
        return view.rows_table(rows, caption)._repr_html_()

    def _static_text(self) -> str:
        rows, caption = self._static_rows()
        return repr(view.rows_table(rows, caption)) if rows else f"{caption} (no scheduled jobs)"


async def runs_with_output(key: str, limit: int, url: ConnectionSettings) -> tuple[list[JobStatus], dict[str, str]]:
    """The latest runs of schedule `key` and the last lines of each run's output."""
    statuses = await recent_runs(key, limit, url)
    return statuses, await output_tails([status.job_id for status in statuses], url=url)
