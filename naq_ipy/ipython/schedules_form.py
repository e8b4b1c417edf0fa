"""The edit form of the scheduled-jobs panel: checks as you type, saves only over the entry as it was shown."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

from naq_ipy.errors import ConflictError
from naq_ipy.ipython import schedules_table as table
from naq_ipy.schedules.changes import apply_updates
from naq_ipy.schedules.record import ScheduledJob

if TYPE_CHECKING:
    from naq_ipy.ipython.schedules_panel import ScheduledJobsPanel

CONFLICT_MESSAGE = "changed elsewhere, reloaded — nothing was saved; check the new values and save again"
_FIELDS_OF_MODE = {"cron": ("cron", "tz"), "interval": ("interval",), "next run": ("next_run",)}


class EditBox:
    """Widgets of the edit form for one entry; `shown` is the record as it was when the form opened."""

    def __init__(self, panel: ScheduledJobsPanel, widgets: Any) -> None:
        self.panel = panel
        self.shown: ScheduledJob | None = None
        self._loading = False
        make, layout = panel.make, widgets.Layout
        self.title = make(widgets.HTML)
        self.mode = make(widgets.ToggleButtons, options=list(table.EDIT_MODES), value="cron")
        texts = {
            "cron": ("cron", "*/5 * * * *"), "tz": ("zone", "UTC, Europe/Berlin, …"),
            "interval": ("every", "90s, 5m, 1h30m"), "next_run": ("next run", "YYYY-MM-DD HH:MM (local time)"),
            "repeat": ("repeat", "runs left; empty = forever"),
        }
        self.fields = {name: make(widgets.Text, description=label, placeholder=hint, continuous_update=True,
                                  layout=layout(width="24em"))
                       for name, (label, hint) in texts.items()}
        self.feedback = make(widgets.HTML)
        self.save_button = make(widgets.Button, description="Save", button_style="primary")
        self.close_button = make(widgets.Button, description="Close")
        self.box = make(widgets.VBox, [
            self.title, self.mode, *self.fields.values(), self.feedback,
            make(widgets.HBox, [self.save_button, self.close_button]),
        ], layout=layout(display="none", border="1px solid #ccc", padding="4px", margin="4px 0"))
        check = panel.guarded("check", lambda _change: self.check())
        self.mode.observe(check, "value")
        for text in self.fields.values():
            text.observe(check, "value")
        self.save_button.on_click(panel.guarded("save", lambda _b: self.save()))
        self.close_button.on_click(panel.guarded("close form", lambda _b: self.hide()))

    def open(self, record: ScheduledJob) -> None:
        """Show the form filled from `record`, remembered as the version the save is checked against."""
        self.shown = record
        form = table.form_for(record, self.panel.zone)
        self.title.value = f"<b>Edit {html.escape(record.key)}</b> ({html.escape(record.describe())})"
        self._loading = True
        try:
            self.mode.value = form.mode
            for name in self.fields:
                self.fields[name].value = getattr(form, name)
        finally:
            self._loading = False
        self.box.layout.display = None
        self.check()

    def hide(self) -> None:
        """Close the form without saving."""
        self.box.layout.display = "none"
        self.shown = None

    def read(self) -> table.EditForm:
        """The form's current texts."""
        return table.EditForm(mode=self.mode.value, **{name: text.value for name, text in self.fields.items()})

    def check(self) -> table.EditCheck | None:
        """Validate what is typed: show why it is wrong, or the next three runs; enable Save only if valid."""
        if self.shown is None or self._loading:
            return None
        for name, text in self.fields.items():
            visible = name == "repeat" or name in _FIELDS_OF_MODE[self.mode.value]
            text.layout.display = None if visible else "none"
        result = table.check_edit(self.shown, self.read(), time.time(), self.panel.zone)
        if result.ok:
            runs = " · ".join(html.escape(r) for r in result.preview)
            self.feedback.value = f"<span style='color:#2e7d32'>next runs: {runs}</span>"
        else:
            self.feedback.value = f"<span style='color:#b00020'>{html.escape(result.error)}</span>"
        self.save_button.disabled = not result.ok
        return result

    def save(self) -> None:
        """Write the edit only if the entry is still as shown; a conflict reloads the row and the form."""
        result = self.check()
        shown = self.shown
        if shown is None or result is None or result.updates is None:
            return
        new = apply_updates(shown, result.updates)
        manager = self.panel.manager

        async def save_or_reload() -> tuple[bool, ScheduledJob]:
            try:
                return True, await manager.update_if_unchanged(shown, new)
            except ConflictError:
                return False, await manager.get(shown.key)

        def done(outcome: tuple[bool, ScheduledJob]) -> None:
            saved, record = outcome
            self.panel.reload(record)
            if saved:
                self.hide()
                self.panel.set_status(f"saved {record.key}: {record.describe()}")
            else:
                self.open(record)
                self.panel.set_status(f"{record.key} {CONFLICT_MESSAGE}", error=True)

        self.panel.run_action(f"save {shown.key}", save_or_reload(), done)
