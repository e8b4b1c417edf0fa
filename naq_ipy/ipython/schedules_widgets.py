"""The named widgets of the scheduled-jobs panel, built once: filters, pager, buttons, confirm step, row slots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from naq_ipy.schedules.record import ScheduleState
from naq_ipy.views import schedules as view

ALL = "(all)"
BUTTONS = (("pause", "Pause"), ("resume", "Resume"), ("run_now", "Run now"), ("runs", "Recent runs"),
           ("edit", "Edit"), ("cancel", "Cancel…"))


@dataclass(frozen=True)
class Slot:
    """One row widget of the page: a checkbox and an HTML line in a box (hidden when unused)."""

    box: Any
    check: Any
    line: Any


@dataclass(frozen=True)
class ScheduleControls:
    """Every widget of the panel a callback or a test needs, by name."""

    text: Any
    queue: Any
    state: Any
    prev: Any
    next: Any
    pager: Any
    selection: Any
    pause: Any
    resume: Any
    run_now: Any
    runs: Any
    edit: Any
    cancel: Any
    confirm: Any
    confirm_text: Any
    confirm_yes: Any
    confirm_no: Any
    runs_table: Any
    all: Any
    header: Any
    slots: tuple[Slot, ...]

    @property
    def buttons(self) -> list[Any]:
        """The action buttons, in the order shown."""
        return [getattr(self, name) for name, _label in BUTTONS]


def build_controls(make: Callable[..., Any], widgets: Any, page_size: int) -> ScheduleControls:
    """The panel's widgets (each made with `make`, so the panel closes them), not yet wired."""
    layout = widgets.Layout
    text = make(widgets.Text, placeholder="filter: name, function, queue, schedule", continuous_update=True,
                layout=layout(width="22em"))
    queue = make(widgets.Dropdown, options=[ALL], value=ALL, description="queue", layout=layout(width="14em"))
    state = make(widgets.Dropdown, options=[ALL, *(state.value for state in ScheduleState)], value=ALL,
                 description="state", layout=layout(width="12em"))
    buttons = {name: make(widgets.Button, description=label, layout=layout(width="auto")) for name, label in BUTTONS}
    confirm_text = make(widgets.HTML)
    confirm_yes = make(widgets.Button, description="Yes, cancel them", button_style="danger")
    confirm_no = make(widgets.Button, description="Keep them")
    check_all = make(widgets.Checkbox, value=False, indent=False, layout=layout(width="28px"),
                     tooltip="select all on this page")
    header = make(widgets.HBox, [check_all, make(widgets.HTML, view.header_html(),
                                                 layout=layout(flex="1 1 0%", min_width="0"))])
    return ScheduleControls(
        text=text, queue=queue, state=state,
        prev=make(widgets.Button, description="◀", layout=layout(width="3em"), tooltip="previous page"),
        next=make(widgets.Button, description="▶", layout=layout(width="3em"), tooltip="next page"),
        pager=make(widgets.HTML), selection=make(widgets.HTML), **buttons,
        confirm=make(widgets.HBox, [confirm_text, confirm_yes, confirm_no], layout=layout(display="none")),
        confirm_text=confirm_text, confirm_yes=confirm_yes, confirm_no=confirm_no,
        runs_table=make(widgets.HTML), all=check_all, header=header, slots=_slots(make, widgets, page_size),
    )


def _slots(make: Callable[..., Any], widgets: Any, count: int) -> tuple[Slot, ...]:
    """`count` row slots; all share the first one's layouts and styles (half as many widget models to open)."""
    slots: list[Slot] = []
    for _ in range(count):
        if not slots:
            check_parts = {"layout": widgets.Layout(width="28px")}
            line_parts = {"layout": widgets.Layout(flex="1 1 0%", min_width="0")}
        else:
            first = slots[0]
            check_parts = {"layout": first.check.layout, "style": first.check.style}
            line_parts = {"layout": first.line.layout, "style": first.line.style}
        check = make(widgets.Checkbox, value=False, indent=False, **check_parts)
        line = make(widgets.HTML, **line_parts)
        box = make(widgets.HBox, [check, line], layout=widgets.Layout(display="none"))
        box.add_class("naq-slot")
        slots.append(Slot(box, check, line))
    return tuple(slots)
