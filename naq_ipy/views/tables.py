"""Tables and one-line notes with a text and an HTML form, for the CLI, the magics and the panels."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

_COLORS = {"info": "inherit", "warning": "#b26b00", "error": "#c62828"}


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], rule: bool = False) -> str:
    """A plain fixed-width text table (`rule`: a dashed line under the headers)."""
    text_rows = [[("" if cell is None else str(cell)) for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text_rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    if rule:
        lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in text_rows]
    return "\n".join(line.rstrip() for line in lines)


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
    css_class: str = "naq-table"

    def __repr__(self) -> str:
        headed = any(self.headers)
        lines = format_table([str(h) for h in self.headers], self.rows, rule=headed).split("\n")
        if not headed:
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
        return f"<table class='{self.css_class}'>{caption}{head}<tbody>{body}</tbody></table>"
