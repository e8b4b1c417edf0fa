"""Pure logic of the queue monitor: incremental per-queue counts from status changes, and its HTML tables."""

from __future__ import annotations

import heapq
import html
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from naq_ipy.rules.times import format_duration, from_timestamp
from naq_ipy.status.results import FAILED, FINISHED, REJECTED, RUNNING, JobStatus

WINDOW_S = 3600.0
RECENT_SIZE = 20
COUNTED = {FINISHED: "finished", FAILED: "failed", REJECTED: "failed"}
QUEUE_COLUMNS = ("queue", "pending", "in flight", "running", "finished (1 h)", "failed (1 h)")
WORKER_COLUMNS = ("worker", "host", "pid", "queues", "current jobs", "processed", "failed", "up since")
RECENT_COLUMNS = ("job", "queue", "function", "status", "duration", "updated", "error")
_TD = "text-align:left;padding:1px 8px;white-space:nowrap;max-width:28em;overflow:hidden;text-overflow:ellipsis"


class StatusTally:
    """Finished/failed counts per queue over the last `window_s` and the latest jobs, kept per change (no scans)."""

    def __init__(self, window_s: float = WINDOW_S, recent_size: int = RECENT_SIZE) -> None:
        self.window_s = window_s
        self.recent_size = recent_size
        self._clear()

    def _clear(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.running: dict[str, JobStatus] = {}
        self._counted: dict[str, tuple[str, str, float]] = {}
        self._expiry: list[tuple[float, str]] = []
        self._recent: OrderedDict[str, JobStatus] = OrderedDict()

    def reset(self, statuses: Iterable[JobStatus], now: float) -> None:
        """Start over from a full snapshot (oldest update first)."""
        self._clear()
        for status in sorted(statuses, key=lambda s: s.updated_at):
            self.apply(status.job_id, status, now)

    def apply(self, job_id: str, status: JobStatus | None, now: float) -> None:
        """Account for one changed status record (None = deleted or expired)."""
        old = self._counted.pop(job_id, None)
        if old is not None:
            self.counts[old[:2]] -= 1
        self.running.pop(job_id, None)
        self._recent.pop(job_id, None)
        if status is None:
            return
        self._recent[job_id] = status
        while len(self._recent) > self.recent_size:
            self._recent.popitem(last=False)
        if status.status == RUNNING:
            self.running[job_id] = status
        kind = COUNTED.get(status.status)
        ended_at = status.finished_at or status.updated_at
        if kind and ended_at >= now - self.window_s:
            entry = (status.queue_name or "?", kind, ended_at)
            self._counted[job_id] = entry
            self.counts[entry[:2]] += 1
            heapq.heappush(self._expiry, (ended_at, job_id))

    def expire(self, now: float) -> None:
        """Drop counts that left the window (each entry is looked at once)."""
        while self._expiry and self._expiry[0][0] < now - self.window_s:
            ended_at, job_id = heapq.heappop(self._expiry)
            entry = self._counted.get(job_id)
            if entry is not None and entry[2] == ended_at:
                del self._counted[job_id]
                self.counts[entry[:2]] -= 1

    def count(self, queue: str, kind: str) -> int:
        """Jobs of `queue` that ended as `kind` (`finished` or `failed`) inside the window."""
        return self.counts.get((queue, kind), 0)

    def recent(self) -> list[JobStatus]:
        """The latest changed jobs, newest first."""
        return list(reversed(self._recent.values()))

    def queues(self) -> set[str]:
        """Queues seen in the counted or running jobs."""
        return {q for q, _ in self.counts} | {s.queue_name for s in self.running.values() if s.queue_name}


@dataclass(frozen=True)
class QueueStats:
    """What the monitor shows of one queue."""

    name: str
    pending: int = 0
    in_flight: int = 0
    running: int = 0
    finished: int = 0
    failed: int = 0

    def cells(self) -> tuple[str, ...]:
        """The row of the queues table, in `QUEUE_COLUMNS` order."""
        return (self.name, f"{self.pending:,}", f"{self.in_flight:,}", f"{self.running:,}", f"{self.finished:,}",
                f"{self.failed:,}")


def running_per_queue(workers: Sequence[Mapping[str, Any]], statuses: Mapping[str, JobStatus]) -> Counter[str]:
    """Running jobs per queue from workers' `current_jobs` (queue from the job's status, else the worker's)."""
    counts: Counter[str] = Counter()
    for worker in workers:
        queues = list(worker.get("queues") or [])
        for job_id in worker.get("current_jobs") or []:
            status = statuses.get(job_id)
            queue = status.queue_name if status and status.queue_name else (queues[0] if len(queues) == 1 else "?")
            counts[queue] += 1
    return counts


def queue_stats(names: Iterable[str], pending: Mapping[str, int], in_flight: Mapping[str, int],
                running: Mapping[str, int], tally: StatusTally) -> list[QueueStats]:
    """One `QueueStats` per queue name, sorted by name."""
    return [QueueStats(q, pending.get(q, 0), in_flight.get(q, 0), running.get(q, 0), tally.count(q, "finished"),
                       tally.count(q, "failed")) for q in sorted(set(names))]


def html_table(columns: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """A compact HTML table; `empty` is shown when there are no rows."""
    body = "".join("<tr>" + "".join(f"<td style='{_TD}' title='{html.escape(c)}'>{html.escape(c)}</td>" for c in r)
                   + "</tr>" for r in rows)
    if not body:
        return f"<div style='color:#777;font-size:12px'>{html.escape(empty)}</div>"
    head = "".join(f"<th style='{_TD}'>{html.escape(c)}</th>" for c in columns)
    return f"<table style='font-size:12px;border-collapse:collapse'><tr>{head}</tr>{body}</table>"


def clock(ts: float | None, zone: tzinfo | None = None, fmt: str = "%H:%M:%S") -> str:
    """Local wall time of unix seconds `ts` (absolute, so a table only changes when its data does)."""
    return f"{from_timestamp(ts).astimezone(zone):{fmt}}" if ts else ""


def worker_rows(workers: Sequence[Mapping[str, Any]], zone: tzinfo | None = None) -> list[tuple[str, ...]]:
    """Cells of the workers table."""
    return [(str(w.get("worker_id", "?")), str(w.get("host", "")), str(w.get("pid", "")),
             ", ".join(w.get("queues") or []), ", ".join(w.get("current_jobs") or []) or "idle",
             str(w.get("processed", "")), str(w.get("failed", "")), clock(w.get("started_at"), zone, "%Y-%m-%d %H:%M"))
            for w in workers]


def recent_rows(statuses: Sequence[JobStatus], zone: tzinfo | None = None) -> list[tuple[str, ...]]:
    """Cells of the latest-jobs table: status, duration and the error's first line."""
    rows: list[tuple[str, ...]] = []
    for s in statuses:
        duration = s.duration_s if s.finished_at or s.status == RUNNING else None
        error = (s.error or "").strip().splitlines()
        rows.append((s.job_id, s.queue_name or "", s.func_name or "", s.status,
                     format_duration(duration) if duration is not None else "", clock(s.updated_at, zone),
                     error[0][:120] if error else ""))
    return rows


_PRE = "font-size:11px;max-height:16em;overflow:auto"

def failed_html(job_id: str, func: str | None, reason: str, failed_at: float, traceback: str | None,
                zone: tzinfo | None = None, output: str | None = None) -> str:
    """One failed job: id, function, when and why, and its output's last lines and traceback folded away."""
    when = clock(failed_at, zone, "%Y-%m-%d %H:%M:%S")
    head = (f"<b>{html.escape(job_id)}</b> {html.escape(func or '')} · failed {when} · "
            f"<span style='color:#b00020'>{html.escape(reason)}</span>")
    if not traceback and not output:
        return f"<div style='font-size:12px'>{head}</div>"
    parts = [f"<pre class='naq-output' style='{_PRE}'>{html.escape(text)}</pre>"
             for text in (output, traceback) if text]
    return f"<details style='font-size:12px'><summary>{head}</summary>{''.join(parts)}</details>"
