"""The CLI, `%naq list` and the scheduled-jobs panel show the same fields of the same record."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import jobs
import pytest
from magic_shell import RaisingShell
from polling import wait_until

from naq_ipy.client.bridge import run_sync
from naq_ipy.client.queue import Queue
from naq_ipy.ipython.schedules_panel import ScheduledJobsPanel
from naq_ipy.schedules.record import ScheduledJob
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.status.results import FINISHED, fetch_status
from naq_ipy.views.schedules import COLUMNS

TESTS_DIR = Path(__file__).parent
COMPARED = ("repeat left", "runs", "next run", "last run", "state")


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """A fixed-width text table as {name: {column: cell}}, cut at the header's column starts."""
    lines = text.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("name "))
    header = lines[header_at]
    names = [name for name in header.split("  ") if name.strip()]
    starts = [header.index(name.strip()) for name in names]
    table = {}
    for line in lines[header_at + 1:]:
        if not line.strip() or set(line.strip()) <= {"-", " "}:
            continue
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        row = dict(zip((n.strip() for n in names), cells, strict=True))
        table[row["name"]] = row
    return table


def without_relative(cell: str) -> str:
    """A time cell without its `(in 3 min)` part, which moves with the clock."""
    return re.sub(r" \([^)]*\)$", "", cell)


@pytest.fixture
def services(nats_url: str, tmp_path: Path) -> Iterator[None]:
    """A scheduler and a worker process on the test server."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))}
    procs = []
    for command in ("scheduler", "worker"):
        with (tmp_path / f"{command}.log").open("wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "naq_ipy.cli", command, "--url", nats_url],
                                          env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
    yield
    for proc in procs:
        proc.kill()
        proc.wait(10)


def record_of(url: str, key: str) -> ScheduledJob | None:
    return next((r for r in run_sync(ScheduledJobManager(url).list()) if r.key == key), None)


def first_run_finished(url: str) -> bool:
    record = record_of(url, "tick")
    if record is None or record.run_count < 1 or record.last_run_id is None:
        return False
    status = run_sync(fetch_status(record.last_run_id, url=url))
    return status is not None and status.status == FINISHED


@pytest.mark.slow
def test_cli_magic_and_panel_agree_after_the_first_of_three_runs(nats_url: str, services: None,
                                                                 ip: RaisingShell) -> None:
    Queue("default", nats_url).schedule_sync(jobs.add, 1, 2, interval="1h", repeat=3, name="tick",
                                              start_at=time.time() + 1)
    wait_until(lambda: first_run_finished(nats_url), 30, "the first run of tick to finish")

    cli = subprocess.run([sys.executable, "-m", "naq_ipy.cli", "list-scheduled", "--url", nats_url],
                         capture_output=True, text=True, check=True).stdout
    magic = repr(ip.run_line_magic("naq", "list"))
    panel = ScheduledJobsPanel(url=nats_url, zone=UTC)
    try:
        assert panel.wait_loaded(5) and panel.widget is not None  # the widget's render fetches outcomes
        wait_until(lambda: parse_table(repr(panel)).get("tick", {}).get("outcome") == FINISHED, 5,
                   "the panel's row of tick with its last run's outcome")
        shown = {"cli": parse_table(cli)["tick"], "%naq list": parse_table(magic)["tick"],
                 "panel": parse_table(repr(panel))["tick"]}
    finally:
        panel.close()

    assert all(set(COLUMNS) <= set(row) for row in shown.values()), shown
    for column in COMPARED:
        cells = {view: without_relative(row[column]) for view, row in shown.items()}
        assert len(set(cells.values())) == 1, f"{column}: {cells}"
    assert (shown["cli"]["repeat left"], shown["cli"]["runs"], shown["cli"]["state"]) == ("2", "1", "active")
