"""Pure tests of the panels' logic: rows, filter/sort, paging, diffs, edit checks, static tables, tallies."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from naq_ipy.client.job import Job
from naq_ipy.errors import ConfigurationError
from naq_ipy.ipython import monitor_table as mt
from naq_ipy.ipython import schedules_table as table
from naq_ipy.schedules.record import ScheduledJob, new_record
from naq_ipy.status.results import JobStatus
from naq_ipy.views import schedules as view

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def work(x: int) -> int:
    return x


def record(key: str = "report", *, cron: str | None = "0 6 * * *", tz: str | None = None,
           interval_s: float | None = None, next_in_s: float = 180.0, queue: str = "default", **changes: object
           ) -> ScheduledJob:
    kind = "cron" if cron else "interval" if interval_s else "once"
    rec = new_record(Job(work, (1,), queue_name=queue), key=key, schedule_type=kind, next_run_utc=NOW + next_in_s,
                     cron=cron, tz=tz, interval_s=interval_s)
    return rec.evolve(**changes) if changes else rec


# -- rows ------------------------------------------------------------------------------------------
def test_format_row_has_every_column_in_local_time() -> None:
    row = view.format_row(record(repeat=5, run_count=2, last_run_id="report.1"), NOW, "finished", BERLIN)
    assert row.key == "report"
    assert row.cells == ("report", "default", f"{__name__}.work", "cron 0 6 * * *",
                         "2026-03-01 13:03:00 CET (in 3 min)", "5", "2", "—", "active", "finished")
    assert len(row.cells) == len(view.PANEL_COLUMNS)


def test_notebook_functions_are_shown_without_main() -> None:
    assert view.short_function("__main__.build_report") == "build_report"
    assert view.short_function("app.jobs.build") == "app.jobs.build"


def test_repeat_left_is_the_stored_runs_left_not_minus_the_runs_again() -> None:
    assert view.repeat_left(record()) == "∞"
    assert view.repeat_left(record(repeat=2, run_count=5)) == "2"


def test_last_run_column_before_any_run_while_loading_and_after() -> None:
    assert view.format_row(record(), NOW).cell("outcome") == view.NO_RUN_YET
    assert view.format_row(record(last_run_id="x.1"), NOW).cell("outcome") == view.LOADING
    assert view.outcome_text("failed", "ValueError: bad\n  more") == "failed: ValueError: bad"
    assert view.outcome_text(None) == "expired"


def test_paused_rows_are_flagged_and_greyed() -> None:
    row = view.format_row(record(status="paused"), NOW)
    assert row.paused and row.cell("state") == "paused"
    assert "color:#888" in view.row_html(row)


def test_interval_and_zone_schedules_are_described() -> None:
    assert view.format_row(record(cron=None, interval_s=90), NOW).cells[3] == "every 1 min 30 s"
    assert view.format_row(record(tz="Europe/Berlin"), NOW).cells[3] == "cron 0 6 * * * (Europe/Berlin)"


# -- filter, sort, paging --------------------------------------------------------------------------
def test_select_filters_by_text_queue_and_state_and_sorts_by_next_run() -> None:
    records = [record("b", next_in_s=50), record("a", next_in_s=50), record("early", next_in_s=10),
               record("mail", queue="mail", next_in_s=5), record("off", status="paused", next_in_s=1)]
    assert [r.key for r in table.select(records, table.Filter())] == ["off", "mail", "early", "a", "b"]
    assert [r.key for r in table.select(records, table.Filter(queue="mail"))] == ["mail"]
    assert [r.key for r in table.select(records, table.Filter(state="paused"))] == ["off"]
    assert [r.key for r in table.select(records, table.Filter(text="EAR"))] == ["early"]
    assert [r.key for r in table.select(records, table.Filter(text="0 6 *", queue="default", state="active"))] == [
        "early", "a", "b"]


def test_paginate_clamps_and_labels() -> None:
    page = table.paginate(list(range(60)), 5, size=25)
    assert (page.number, page.pages, page.total, page.items[0], len(page.items)) == (2, 3, 60, 50, 10)
    assert page.label() == "51–60 of 60 · page 3/3"
    empty = table.paginate([], 0, 25)
    assert (empty.items, empty.pages, empty.first) == ([], 1, 0)
    assert table.paginate(list(range(5)), -3, 2).number == 0
    with pytest.raises(ConfigurationError):
        table.paginate([], 0, 0)


def test_caption_mentions_the_unfiltered_total() -> None:
    page = table.paginate(list(range(30)), 0, 25)
    assert table.caption(page, 30) == "Scheduled jobs: 1–25 of 30 · page 1/2"
    assert table.caption(page, 10_000).endswith("· 10,000 in all")


# -- diff ------------------------------------------------------------------------------------------
def test_changed_slots_names_only_the_rows_that_differ() -> None:
    a, b = view.format_row(record("a"), NOW), view.format_row(record("b"), NOW)
    b2 = view.format_row(record("b", status="paused"), NOW)
    old = table.pad([a, b], 4)
    assert table.changed_slots(old, table.pad([a, b], 4)) == []
    assert table.changed_slots(old, table.pad([a, b2], 4)) == [1]
    assert table.changed_slots(old, table.pad([b], 4)) == [0, 1]
    assert table.changed_slots([], table.pad([a], 2)) == [0]


def test_a_clock_tick_changes_only_rows_whose_label_moved() -> None:
    soon, later = record("soon", next_in_s=90), record("later", next_in_s=3 * 86400 + 100)
    before = [view.format_row(r, NOW) for r in (soon, later)]
    after = [view.format_row(r, NOW + 40) for r in (soon, later)]
    assert table.changed_slots(before, after) == [0]


# -- edit form -------------------------------------------------------------------------------------
def test_form_for_prefills_the_records_timing() -> None:
    form = table.form_for(record(tz="Europe/Berlin", repeat=4), BERLIN)
    assert (form.mode, form.cron, form.tz, form.repeat, form.next_run) == (
        "cron", "0 6 * * *", "Europe/Berlin", "4", "2026-03-01 13:03:00")
    assert table.form_for(record(cron=None, interval_s=90)).interval == "90s"
    assert table.form_for(record(cron=None)).mode == "next run"


def test_check_edit_bad_cron_says_why() -> None:
    check = table.check_edit(record(), table.EditForm(mode="cron", cron="61 * * * *"), NOW, BERLIN)
    assert not check.ok and "out of range" in check.error
    check = table.check_edit(record(), table.EditForm(mode="cron", cron="* * *"), NOW)
    assert "expected 5 fields" in check.error
    assert "enter a cron" in table.check_edit(record(), table.EditForm(mode="cron"), NOW).error


def test_check_edit_valid_cron_previews_the_next_three_runs_in_its_zone() -> None:
    form = table.EditForm(mode="cron", cron="30 2 * * *", tz="Europe/Berlin", repeat="3")
    check = table.check_edit(record(), form, NOW, BERLIN)
    assert check.ok and check.updates == {"cron": "30 2 * * *", "tz": "Europe/Berlin", "repeat": 3}
    assert [p[:16] for p in check.preview] == ["2026-03-02 02:30", "2026-03-03 02:30", "2026-03-04 02:30"]


def test_check_edit_previews_the_repeated_hour_of_an_hourly_cron() -> None:
    form = table.EditForm(mode="cron", cron="0 * * * *", tz="Europe/Berlin")
    now = datetime(2026, 10, 24, 23, 30, tzinfo=UTC).timestamp()
    check = table.check_edit(record(), form, now, BERLIN)
    assert [p.split(" (")[0] for p in check.preview] == [
        "2026-10-25 02:00:00 CEST", "2026-10-25 02:00:00 CET", "2026-10-25 03:00:00 CET"]


def test_check_edit_bad_zone_interval_repeat_and_time() -> None:
    bad = [
        (table.EditForm(mode="cron", cron="0 6 * * *", tz="Mars/Olympus"), "unknown time zone"),
        (table.EditForm(mode="interval", interval="soon"), "invalid duration"),
        (table.EditForm(mode="interval", interval="0"), "interval must be a duration of 0.1 s"),
        (table.EditForm(mode="cron", cron="0 6 * * *", repeat="0"), "repeat must be"),
        (table.EditForm(mode="cron", cron="0 6 * * *", repeat="two"), "repeat must be"),
        (table.EditForm(mode="next run", next_run="tomorrow"), "invalid next run"),
        (table.EditForm(mode="weekly"), "unknown edit mode"),
    ]
    for form, reason in bad:
        check = table.check_edit(record(), form, NOW, BERLIN)
        assert not check.ok and reason in check.error, (form, check.error)


def test_check_edit_interval_and_next_run() -> None:
    check = table.check_edit(record(cron=None, interval_s=60), table.EditForm(mode="interval", interval="5m"), NOW)
    assert check.ok and check.updates == {"interval": "5m", "repeat": None} and len(check.preview) == 3
    check = table.check_edit(record(cron=None), table.EditForm(mode="next run", next_run="2026-03-05 08:00"),
                             NOW, BERLIN)
    assert check.ok and check.updates["next_run"] == datetime(2026, 3, 5, 8, 0, tzinfo=BERLIN)
    assert check.preview == ("2026-03-05 08:00:00 CET (in 3 d 19 h)",)


# -- static tables ---------------------------------------------------------------------------------
def test_static_html_and_text_escape_and_show_every_column() -> None:
    rows = [view.format_row(record("a<b>", queue="q1"), NOW, zone=BERLIN)]
    page_html = view.rows_table(rows, "Scheduled jobs: 1–1 of 1")._repr_html_()
    assert "a&lt;b&gt;" in page_html and "<b>a" not in page_html
    assert all(f">{c}<" in page_html for c in view.PANEL_COLUMNS)
    text = repr(view.rows_table(rows, "Scheduled jobs"))
    assert text.splitlines()[1].split()[:3] == ["name", "queue", "function"] and "a<b>" in text
    assert view.header_html().count("<div style") == len(view.PANEL_COLUMNS)


# -- monitor tally ---------------------------------------------------------------------------------
def status(job_id: str, state: str, at: float, queue: str = "default", **more: object) -> JobStatus:
    return JobStatus(job_id=job_id, status=state, queue_name=queue, started_at=at - 2, finished_at=at,
                     updated_at=at, **more)


def test_tally_counts_incrementally_and_moves_jobs_between_states() -> None:
    tally = mt.StatusTally(window_s=3600)
    tally.reset([status("a", "finished", NOW - 10), status("old", "finished", NOW - 7200),
                 status("b", "failed", NOW - 5, queue="mail")], NOW)
    assert (tally.count("default", "finished"), tally.count("mail", "failed")) == (1, 1)
    tally.apply("c", JobStatus(job_id="c", status="running", queue_name="default", updated_at=NOW), NOW)
    assert set(tally.running) == {"c"}
    tally.apply("c", status("c", "failed", NOW), NOW)
    tally.apply("b", status("b", "finished", NOW, queue="mail"), NOW)
    assert not tally.running
    assert (tally.count("default", "failed"), tally.count("mail", "failed"), tally.count("mail", "finished")) == (
        1, 0, 1)
    tally.apply("a", None, NOW)
    assert tally.count("default", "finished") == 0
    assert [s.job_id for s in tally.recent()] == ["b", "c", "old"]


def test_tally_expires_counts_that_leave_the_window_once() -> None:
    tally = mt.StatusTally(window_s=60)
    tally.apply("a", status("a", "finished", NOW), NOW)
    tally.apply("a", status("a", "finished", NOW + 30), NOW + 30)
    tally.expire(NOW + 70)
    assert tally.count("default", "finished") == 1
    tally.expire(NOW + 100)
    assert tally.count("default", "finished") == 0 and not tally.counts.get(("default", "finished"))


def test_tally_keeps_only_the_latest_jobs() -> None:
    tally = mt.StatusTally(recent_size=3)
    for i in range(5):
        tally.apply(f"j{i}", status(f"j{i}", "finished", NOW + i), NOW + i)
    assert [s.job_id for s in tally.recent()] == ["j4", "j3", "j2"]


def test_running_per_queue_and_queue_stats() -> None:
    workers = [{"queues": ["default"], "current_jobs": ["x", "y"]}, {"queues": ["a", "b"], "current_jobs": ["z"]}]
    running = mt.running_per_queue(workers, {"z": JobStatus(job_id="z", status="running", queue_name="b")})
    assert running == {"default": 2, "b": 1}
    tally = mt.StatusTally()
    tally.apply("f", status("f", "failed", NOW), NOW)
    stats = mt.queue_stats(["default", "b"], {"default": 4}, {"default": 1}, running, tally)
    assert [s.cells() for s in stats] == [("b", "0", "0", "1", "0", "0"), ("default", "4", "1", "2", "0", "1")]


def test_monitor_tables_render_rows_and_tracebacks() -> None:
    done = status("j1", "failed", NOW, func_name="m.f", error="ValueError: bad\nmore")
    rows = mt.recent_rows([done], UTC)
    assert rows == [("j1", "default", "m.f", "failed", "2.0 s", "12:00:00", "ValueError: bad")]
    assert "no live workers" in mt.html_table(mt.WORKER_COLUMNS, [], "no live workers")
    workers = mt.worker_rows([{"worker_id": "w1", "host": "h", "pid": 7, "queues": ["q"], "current_jobs": [],
                               "started_at": NOW}], UTC)
    assert workers == [("w1", "h", "7", "q", "idle", "", "", "2026-03-01 12:00")]
    folded = mt.failed_html("j1", "m.f", "ValueError: bad", NOW, "Traceback <x>", UTC)
    assert "<details" in folded and "Traceback &lt;x&gt;" in folded
    assert "<details" not in mt.failed_html("j1", None, "gone", NOW, None, UTC)
