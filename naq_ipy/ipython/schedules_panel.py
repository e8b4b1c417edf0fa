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
from naq_ipy.ipython.jobview import render_runs
from naq_ipy.ipython.livewatch import Coalescer, LiveWatch, describe_error
from naq_ipy.ipython.panels import Panel
from naq_ipy.ipython.schedules_form import EditBox
from naq_ipy.ipython.schedules_model import JobsModel
from naq_ipy.schedules.record import ScheduledJob
from naq_ipy.schedules.scheduler import run_now
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.status.output import output_tails
from naq_ipy.status.results import TERMINAL, JobStatus, fetch_status
from naq_ipy.status.waiting import recent_runs
from naq_ipy.wire.settings import (
    SCHEDULED_JOB_STATUS_ACTIVE,
    SCHEDULED_JOB_STATUS_PAUSED,
    SCHEDULED_JOBS_KV_NAME,
    ConnectionSettings,
)

TICK_S = 15.0
RUNS_SHOWN = 10
ALL = "(all)"


class ScheduledJobsPanel(Panel):
    """A live table of the scheduled jobs in `naq_scheduled_jobs`, with pause/resume/cancel/run now/edit.

    `queue` pre-selects one queue; `page_size` rows are shown per page; times are shown in
    `zone` (default: this machine's local zone).
    """

    def __init__(self, queue: str | None = None, url: str | ConnectionSettings | None = None, *,
                 page_size: int = table.PAGE_SIZE, zone: tzinfo | None = None) -> None:
        super().__init__(url)
        self.model = JobsModel()
        self.manager = ScheduledJobManager(self.settings)
        self.filter = table.Filter(queue=queue)
        self.page_size = page_size
        self.zone = zone
        self.page = 0
        self.selected: set[str] = set()
        self.slot_keys: list[str | None] = [None] * page_size
        self._shown: list[table.Row | None] = [None] * page_size
        self._fetching: set[str] = set()
        self._syncing = False
        self._lock = threading.RLock()
        self._w: dict[str, Any] = {}
        self._slots: list[tuple[Any, Any, Any]] = []
        self._render_soon = Coalescer(self.marshal, self._render)
        self._watch = LiveWatch(self.settings, SCHEDULED_JOBS_KV_NAME, ScheduledJob.from_bytes, self, tick_s=TICK_S)
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

    def _start(self) -> None:
        self._watch.start()

    def _stop(self) -> None:
        self._watch.stop()

    # -- rendering (widgets' thread) -----------------------------------------------------------
    def current_page(self) -> table.Page:
        """The page shown now (clamped), of the entries that pass the filter."""
        return table.paginate(self.model.view(self.filter), self.page, self.page_size)

    def _page_rows(self) -> tuple[table.Page, list[table.Row]]:
        now = time.time()
        with self.model.lock:
            page = self.current_page()
            rows = [table.format_row(r, now, self.model.outcome(r.last_run_id), self.zone) for r in page.items]
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

    def _draw_slot(self, i: int, row: table.Row | None) -> None:
        box, _check, line = self._slots[i]
        if row is None:
            box.layout.display = "none"
            return
        line.value = table.row_html(row)
        box.layout.display = None

    def _sync_controls(self, page: table.Page) -> None:
        w = self._w
        self._syncing = True
        try:
            for (_box, check, _line), key in zip(self._slots, self.slot_keys, strict=True):
                check.value = key is not None and key in self.selected
            options = [ALL, *sorted({*self.model.queues(), *([self.filter.queue] if self.filter.queue else [])})]
            if list(w["queue"].options) != options:
                w["queue"].options = options
            w["queue"].value = self.filter.queue if self.filter.queue in options else ALL
        finally:
            self._syncing = False
        w["pager"].value = f"<span style='font-size:12px'>{table.caption(page, len(self.model.records))}</span>"
        w["prev"].disabled = page.number == 0
        w["next"].disabled = page.number >= page.pages - 1
        w["selection"].value = f"<span style='font-size:12px'>{len(self.selected)} selected</span>"
        self._show_status()

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
                    self.model.outcomes[job_id] = (table.outcome_text(None), True)
                else:
                    self.model.outcomes[job_id] = (table.outcome_text(status.status, status.error),
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
        keys = self._targets()
        if not keys:
            self.set_status("select the jobs to cancel first", error=True)
            return
        self._w["confirm_text"].value = (f"<b>Cancel {len(keys)} scheduled job(s)?</b> "
                                         f"{', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}")
        self._w["confirm"].layout.display = None

    def cancel(self) -> None:
        """Delete the selected entries (after the confirm step)."""
        self._w["confirm"].layout.display = "none"

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
            self._w["runs_table"].value = render_runs(found[0], f"recent runs of {keys[0]}", outputs=found[1])

        self.run_action(f"reading the runs of {keys[0]}", runs_with_output(keys[0], RUNS_SHOWN, self.settings), show)

    def edit(self) -> None:
        """Open the edit form for the one selected entry."""
        keys = self._targets()
        if len(keys) != 1:
            self.set_status("select exactly one job to edit", error=True)
            return
        with self.model.lock:
            record = self.model.records[keys[0]]
        self.editor.open(record)

    def reload(self, record: ScheduledJob) -> None:
        """Put a freshly read entry into the table."""
        self.model.update({record.key: record})
        self._render()

    # -- widget tree ---------------------------------------------------------------------------
    def _build(self, widgets: Any) -> Any:
        w = self._w
        make = self.make
        w["text"] = make(widgets.Text, placeholder="filter: name, function, queue, schedule",
                         continuous_update=True, layout=widgets.Layout(width="22em"))
        w["queue"] = make(widgets.Dropdown, options=[ALL], value=ALL, description="queue",
                          layout=widgets.Layout(width="14em"))
        w["state"] = make(widgets.Dropdown, options=[ALL, SCHEDULED_JOB_STATUS_ACTIVE, SCHEDULED_JOB_STATUS_PAUSED],
                          value=ALL, description="state", layout=widgets.Layout(width="12em"))
        w["prev"] = make(widgets.Button, description="◀", layout=widgets.Layout(width="3em"), tooltip="previous page")
        w["next"] = make(widgets.Button, description="▶", layout=widgets.Layout(width="3em"), tooltip="next page")
        w["pager"] = make(widgets.HTML)
        w["selection"] = make(widgets.HTML)
        buttons = {name: make(widgets.Button, description=label, layout=widgets.Layout(width="auto"))
                   for name, label in (("pause", "Pause"), ("resume", "Resume"), ("run_now", "Run now"),
                                       ("runs", "Recent runs"), ("edit", "Edit"), ("cancel", "Cancel…"))}
        w.update(buttons)
        w["confirm_text"] = make(widgets.HTML)
        w["confirm_yes"] = make(widgets.Button, description="Yes, cancel them", button_style="danger")
        w["confirm_no"] = make(widgets.Button, description="Keep them")
        w["confirm"] = make(widgets.HBox, [w["confirm_text"], w["confirm_yes"], w["confirm_no"]],
                            layout=widgets.Layout(display="none"))
        self.editor = EditBox(self, widgets)
        w["runs_table"] = make(widgets.HTML)
        w["all"] = make(widgets.Checkbox, value=False, indent=False, layout=widgets.Layout(width="28px"),
                        tooltip="select all on this page")
        header = make(widgets.HBox, [w["all"], make(widgets.HTML, table.header_html(),
                                                    layout=widgets.Layout(flex="1 1 0%", min_width="0"))])
        self._slots = []
        for i in range(self.page_size):
            self._slots.append(self._make_slot(widgets, i))  # appended one by one: slot 0 lends its layouts
        self._wire()
        assert self._status is not None
        return make(widgets.VBox, [
            make(widgets.HTML, "<b>Scheduled jobs</b>"),
            make(widgets.HBox, [w["text"], w["queue"], w["state"], w["prev"], w["pager"], w["next"]]),
            make(widgets.HBox, [*buttons.values(), w["selection"]]),
            w["confirm"], self.editor.box, w["runs_table"], self._status, header,
            make(widgets.VBox, [slot[0] for slot in self._slots]),
        ])

    def _make_slot(self, widgets: Any, i: int) -> tuple[Any, Any, Any]:
        if i == 0:
            parts = {"check": {"layout": widgets.Layout(width="28px")},
                     "line": {"layout": widgets.Layout(flex="1 1 0%", min_width="0")}}
        else:  # share the first slot's layouts and styles: half as many widget models to open
            _box, check0, line0 = self._slots[0]
            parts = {"check": {"layout": check0.layout, "style": check0.style},
                     "line": {"layout": line0.layout, "style": line0.style}}
        check = self.make(widgets.Checkbox, value=False, indent=False, **parts["check"])
        line = self.make(widgets.HTML, **parts["line"])
        box = self.make(widgets.HBox, [check, line], layout=widgets.Layout(display="none"))
        box.add_class("naq-slot")
        check.observe(self.guarded("select", lambda change: self._on_check(i, change["new"])), "value")
        return box, check, line

    def _wire(self) -> None:
        w, guarded = self._w, self.guarded
        w["text"].observe(guarded("filter", lambda c: self._set_filter(text=c["new"])), "value")
        w["queue"].observe(guarded("filter", lambda c: self._set_filter(queue=c["new"])), "value")
        w["state"].observe(guarded("filter", lambda c: self._set_filter(state=c["new"])), "value")
        w["all"].observe(guarded("select", lambda c: self._on_check_all(c["new"])), "value")
        w["prev"].on_click(guarded("page", lambda _b: self.go_to(self.page - 1)))
        w["next"].on_click(guarded("page", lambda _b: self.go_to(self.page + 1)))
        for name in ("pause", "resume", "run_now", "runs", "edit"):
            w[name].on_click(guarded(name, lambda _b, name=name: getattr(self, name)()))
        w["cancel"].on_click(guarded("cancel", lambda _b: self.ask_cancel()))
        w["confirm_yes"].on_click(guarded("cancel", lambda _b: self.cancel()))
        w["confirm_no"].on_click(guarded("cancel", lambda _b: setattr(w["confirm"].layout, "display", "none")))

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
        self._w["selection"].value = f"<span style='font-size:12px'>{len(self.selected)} selected</span>"

    def _on_check_all(self, value: bool) -> None:
        if not self._syncing:
            self.select_keys([k for k in self.slot_keys if k], value)

    # -- static fallback -----------------------------------------------------------------------
    def _static_rows(self) -> tuple[list[table.Row], str]:
        with self.model.lock:
            page, rows = self._page_rows()
            return rows, table.caption(page, len(self.model.records))

    def _static_html(self) -> str:
        rows, caption = self._static_rows()
        return table.table_html(rows, caption)

    def _static_text(self) -> str:
        rows, caption = self._static_rows()
        return table.table_text(rows, caption) if rows else f"{caption} (no scheduled jobs)"


async def runs_with_output(key: str, limit: int, url: ConnectionSettings) -> tuple[list[JobStatus], dict[str, str]]:
    """The latest runs of schedule `key` and the last lines of each run's output."""
    statuses = await recent_runs(key, limit, url)
    return statuses, await output_tails([status.job_id for status in statuses], url=url)
