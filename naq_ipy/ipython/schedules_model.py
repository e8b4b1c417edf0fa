"""The scheduled jobs a panel knows: written by the watch on the bridge thread, read on the widgets' thread."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from naq_ipy.ipython import schedules_table as table
from naq_ipy.schedules.record import ScheduledJob


class JobsModel:
    """The entries the panel knows and the last-run labels fetched; written by the watch thread."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.records: dict[str, ScheduledJob] = {}
        self.outcomes: dict[str, tuple[str, bool]] = {}
        self.loaded = threading.Event()
        self._version = 0
        self._view: tuple[int, table.Filter, list[ScheduledJob]] | None = None

    def replace(self, entries: Mapping[str, ScheduledJob]) -> None:
        """Take a full snapshot."""
        with self.lock:
            self.records = dict(entries)
            self._version += 1
        self.loaded.set()

    def update(self, changes: Mapping[str, ScheduledJob | None]) -> None:
        """Apply changed entries (None = deleted); an empty batch forgets unfinished last-run labels."""
        with self.lock:
            if not changes:
                self.outcomes = {k: v for k, v in self.outcomes.items() if v[1]}
                return
            for key, record in changes.items():
                if record is None:
                    self.records.pop(key, None)
                elif key not in self.records or record.revision >= self.records[key].revision:
                    self.records[key] = record
            self._version += 1

    def view(self, flt: table.Filter) -> list[ScheduledJob]:
        """Filtered and sorted entries, cached until the data or the filter changes."""
        with self.lock:
            if self._view is None or self._view[:2] != (self._version, flt):
                self._view = (self._version, flt, table.select(self.records.values(), flt))
            return self._view[2]

    def queues(self) -> list[str]:
        """The queue names in use, sorted."""
        with self.lock:
            return sorted({r.queue_name for r in self.records.values()})

    def outcome(self, job_id: str | None) -> str | None:
        """The last-run label of `job_id` if fetched."""
        found = self.outcomes.get(job_id) if job_id else None
        return found[0] if found else None
