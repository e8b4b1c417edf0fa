"""Plain-text and HTML forms of core objects (no IPython import: any frontend can use them)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from naq_ipy.client.job import Job


def job_html(job: Job, status: str = "queued") -> str:
    """A one-row table: id, queue, function, status."""
    cells = "".join(
        f"<td style='padding:2px 8px'><b>{label}</b> {html.escape(str(value))}</td>"
        for label, value in (("job", job.job_id), ("queue", job.queue_name), ("function", job.func_name),
                             ("status", status))
    )
    return f"<table class='naq-job'><tr>{cells}</tr></table>"
