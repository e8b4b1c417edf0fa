"""The scheduler's pure rules (naq_ipy.schedules.fires): fire plans, misfire policies, DST, its view of the store."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from naq_ipy.client.job import Job
from naq_ipy.errors import SerializationError
from naq_ipy.rules.times import next_cron_run, next_cron_runs
from naq_ipy.schedules.fires import ScheduleView, advanced, check_plannable, next_regular_run, plan_fires, run_id
from naq_ipy.schedules.record import ScheduledJob, new_record
from naq_ipy.wire.names import fire_msg_id

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()
BERLIN = ZoneInfo("Europe/Berlin")


def work() -> None:
    """A job function (never called here)."""


def record(schedule_type: str = "interval", next_run_utc: float = NOW, **options: object) -> ScheduledJob:
    job = Job(work, job_id="job1")
    if schedule_type == "interval":
        options.setdefault("interval_s", 60.0)
    return new_record(job, key=str(options.pop("key", "tick")), schedule_type=schedule_type,
                      next_run_utc=next_run_utc, **options)  # type: ignore[arg-type]


def test_not_due_yet_plans_nothing() -> None:
    plan = plan_fires(record(next_run_utc=NOW + 1), NOW)
    assert plan.due_times == () and plan.next_run_utc == NOW + 1 and not plan.done


def test_paused_entry_never_fires_even_when_long_due() -> None:
    rec = record(next_run_utc=NOW - 3600, paused=True, misfire="all")
    plan = plan_fires(rec, NOW)
    assert plan.due_times == () and plan.next_run_utc == rec.next_run_utc and not plan.done


def test_interval_on_time_fires_once_and_moves_one_interval_from_the_scheduled_time() -> None:
    plan = plan_fires(record(), NOW + 0.07)
    assert plan.due_times == (NOW,)
    assert plan.next_run_utc == NOW + 60  # from the due time, not from now
    assert plan.repeat_left is None and not plan.done


def test_runs_within_the_grace_window_all_fire_whatever_the_policy() -> None:
    rec = record(interval_s=1.0, next_run_utc=NOW - 2.5, misfire="skip")
    plan = plan_fires(rec, NOW, grace_s=60)
    assert plan.due_times == (NOW - 2.5, NOW - 1.5, NOW - 0.5)
    assert plan.next_run_utc == NOW + 0.5


def test_repeat_counts_down_to_done() -> None:
    rec = record(interval_s=1.0, repeat=3)
    fired = []
    now = NOW
    while True:
        plan = plan_fires(rec, now)
        fired += plan.due_times
        if plan.done:
            break
        rec = advanced(rec, plan, now)
        now = rec.next_run_utc + 0.01
    assert fired == [NOW, NOW + 1, NOW + 2]
    assert plan.repeat_left == 0 and plan.next_run_utc is None
    assert rec.run_count == 2 and rec.repeat == 1  # the last advance before the final fire


def test_repeat_caps_catch_up_runs() -> None:
    rec = record(next_run_utc=NOW - 270, misfire="all", repeat=2)
    plan = plan_fires(rec, NOW)
    assert plan.due_times == (NOW - 270, NOW - 210) and plan.done and plan.repeat_left == 0


def test_one_off_fires_once_with_its_own_id_and_is_done() -> None:
    rec = record("once", next_run_utc=NOW - 0.01)
    plan = plan_fires(rec, NOW)
    assert plan.due_times == (rec.next_run_utc,) and plan.done and plan.next_run_utc is None
    assert run_id(rec, rec.next_run_utc) == "job1"


def test_missed_one_off_with_skip_is_done_without_a_run() -> None:
    plan = plan_fires(record("once", next_run_utc=NOW - 600, misfire="skip"), NOW)
    assert plan.due_times == () and plan.done


def test_misfire_once_is_one_catch_up_then_the_next_regular_run() -> None:
    rec = record(next_run_utc=NOW - 600 + 5)  # default misfire: once
    plan = plan_fires(rec, NOW)
    assert plan.due_times == (rec.next_run_utc,)  # the earliest missed one: the same id on every scheduler
    assert plan.next_run_utc == NOW + 5  # on the entry's grid, after now
    assert not plan.done


def test_misfire_skip_runs_nothing_and_moves_past_now() -> None:
    plan = plan_fires(record(next_run_utc=NOW - 600 + 5, misfire="skip"), NOW)
    assert plan.due_times == () and plan.next_run_utc == NOW + 5


def test_misfire_all_fires_every_missed_run() -> None:
    rec = record(next_run_utc=NOW - 270, misfire="all")  # 1-minute interval, 5 missed
    plan = plan_fires(rec, NOW)
    assert plan.due_times == tuple(NOW - 270 + 60 * k for k in range(5))
    assert plan.next_run_utc == NOW + 30


def test_misfire_all_is_capped_oldest_first() -> None:
    rec = record(interval_s=1.0, next_run_utc=NOW - 1000, misfire="all")
    plan = plan_fires(rec, NOW, max_catch_up=100)
    assert len(plan.due_times) == 100 and plan.due_times[0] == NOW - 1000
    assert plan.next_run_utc == NOW + 1


def test_advanced_counts_runs_and_remembers_the_last() -> None:
    rec = record(next_run_utc=NOW - 270, misfire="all", repeat=10, key="rep")
    plan = plan_fires(rec, NOW)
    new = advanced(rec, plan, NOW)
    assert new.run_count == 5 and new.repeat == 5 and new.next_run_utc == NOW + 30
    assert new.last_run_utc == NOW - 30 and new.last_run_id == f"rep.{int((NOW - 30) * 1000)}"
    assert new.updated_at == NOW and new.job_data == rec.job_data


def test_run_and_message_ids() -> None:
    rec = record(key="daily")
    assert run_id(rec, 1700000000.1234) == "daily.1700000000123"
    assert fire_msg_id("daily", 1700000000.1234) == "daily:1700000000123"


@given(offset=st.floats(-1e6, 1e6), interval=st.floats(0.001, 1e5))
def test_next_regular_run_is_the_first_grid_point_after_now(offset: float, interval: float) -> None:
    rec = record(next_run_utc=NOW, interval_s=interval)
    now = NOW + offset
    nxt = next_regular_run(rec, now)
    assert nxt is not None and nxt > now
    assert nxt == NOW or nxt - interval <= now + 1e-6 * max(1.0, abs(offset))


def _berlin_days(start: datetime, days: int) -> list[datetime]:
    rec = record("cron", next_run_utc=next_cron_run("0 2 * * *", start, "Europe/Berlin").timestamp(),
                 cron="0 2 * * *", tz="Europe/Berlin")
    fires = []
    now = rec.next_run_utc + 0.05
    for _ in range(days):
        plan = plan_fires(rec, now)
        assert len(plan.due_times) == 1
        fires.append(datetime.fromtimestamp(plan.due_times[0], BERLIN))
        rec = advanced(rec, plan, now)
        assert plan_fires(rec, now + 3 * 3600).due_times == ()  # nothing else due in the next hours
        now = rec.next_run_utc + 0.05
    return fires


@pytest.mark.parametrize("first_day", [date(2026, 3, 26), date(2026, 10, 22)])
def test_cron_across_dst_fires_exactly_once_per_local_day(first_day: date) -> None:
    start = datetime.combine(first_day, datetime.min.time(), BERLIN).astimezone(UTC)
    fires = _berlin_days(start, 7)
    assert [f.date() for f in fires] == [first_day + timedelta(days=i) for i in range(7)]
    for fire in fires:
        if fire.date() == date(2026, 3, 29):
            assert (fire.hour, fire.utcoffset()) == (3, timedelta(hours=2))  # 02:00 does not exist: 03:00 CEST
        else:
            assert fire.hour == 2
        if fire.date() == date(2026, 10, 25):
            assert fire.utcoffset() == timedelta(hours=2)  # the first 02:00 (CEST), never the second


def test_cron_catch_up_across_dst_matches_day_by_day() -> None:
    start = datetime(2026, 3, 26, tzinfo=UTC)
    day_by_day = [f.timestamp() for f in _berlin_days(start, 6)]
    rec = record("cron", next_run_utc=day_by_day[0], cron="0 2 * * *", tz="Europe/Berlin", misfire="all")
    plan = plan_fires(rec, day_by_day[-1] + 60)
    assert list(plan.due_times) == day_by_day


def _fired_step_by_step(cron: str, start: datetime, count: int, lag_s: float) -> list[float]:
    """The due times a scheduler waking `lag_s` after each next run fires for `cron` in Berlin, `count` times."""
    rec = record("cron", next_run_utc=next_cron_run(cron, start, "Europe/Berlin").timestamp(), cron=cron,
                 tz="Europe/Berlin")
    fired: list[float] = []
    while len(fired) < count:
        now = rec.next_run_utc + lag_s
        plan = plan_fires(rec, now)
        fired.extend(plan.due_times)
        rec = advanced(rec, plan, now)
    return fired[:count]


@pytest.mark.parametrize(
    ("cron", "start"),
    [
        ("0 * * * *", datetime(2026, 10, 24, 22, tzinfo=UTC)),  # fall-back: 02:00 CEST and 02:00 CET both fire
        ("*/30 * * * *", datetime(2026, 10, 24, 23, tzinfo=UTC)),
        ("30 2 * * *", datetime(2026, 10, 23, tzinfo=UTC)),  # fall-back: once, at 02:30 CEST
        ("0 * * * *", datetime(2026, 3, 28, 22, tzinfo=UTC)),  # spring-forward: 01:00 CET, then 03:00 CEST
        ("30 2 * * *", datetime(2026, 3, 27, tzinfo=UTC)),  # spring-forward: once, at 03:00 CEST
        ("10,50 2 * * *", datetime(2026, 3, 27, tzinfo=UTC)),  # two skipped wall times, one fire at the jump
    ],
)
@pytest.mark.parametrize("lag_s", [0.05, 45.0])
def test_scheduler_advances_across_dst_without_double_fire_or_skip(cron: str, start: datetime, lag_s: float) -> None:
    expected = [run.timestamp() for run in next_cron_runs(cron, start, "Europe/Berlin", count=8)]
    assert _fired_step_by_step(cron, start, 8, lag_s) == expected
    # A scheduler down over the change catches up on the same due times (misfire 'all').
    rec = record("cron", next_run_utc=expected[0], cron=cron, tz="Europe/Berlin", misfire="all")
    assert list(plan_fires(rec, expected[-1] + 1).due_times) == expected


def test_view_ignores_stale_revisions_and_tracks_deletes() -> None:
    view = ScheduleView()
    rec = record(key="a")
    assert view.apply("a", 3, None, rec.to_bytes())
    view.wrote(replace(rec, next_run_utc=NOW + 60, revision=4))
    assert not view.apply("a", 4, None, rec.to_bytes())  # the watch echoing our own write
    assert view.due(NOW) == [] and view.next_due() == NOW + 60
    view.deleted("a", 4)
    assert view.entries == {} and view.next_due() is None  # our own delete takes it out at once
    assert not view.apply("a", 4, None, rec.to_bytes())  # a late copy of the deleted revision
    assert view.apply("a", 5, "DEL", None) and view.entries == {}
    assert view.apply("a", 6, None, rec.to_bytes()) and view.due(NOW) == [replace(rec, revision=6)]


def test_view_keeps_a_newer_watch_revision_over_our_late_write_ack() -> None:
    view = ScheduleView()
    rec = record(key="a")
    view.apply("a", 1, None, rec.to_bytes())
    view.apply("a", 2, None, replace(rec, next_run_utc=NOW + 5).to_bytes())  # our write, echoed
    view.apply("a", 3, None, replace(rec, next_run_utc=NOW + 99).to_bytes())  # a user's change right after
    view.wrote(replace(rec, next_run_utc=NOW + 5, revision=2))  # the ack of our write arrives last
    assert view.next_due() == NOW + 99
    view.deleted("a", 2)
    assert set(view.entries) == {"a"}


def test_view_blocks_a_lost_entry_until_a_newer_revision() -> None:
    view = ScheduleView()
    rec = record(key="a")
    view.apply("a", 1, None, rec.to_bytes())
    view.block("a", 0)  # lost at an older revision than the one in view: nothing to block
    assert [r.revision for r in view.due(NOW)] == [1]
    view.block("a", 1)
    assert view.due(NOW) == [] and view.next_due() is None
    view.apply("a", 2, None, rec.to_bytes())
    assert [r.revision for r in view.due(NOW)] == [2]


def test_view_marks_corrupt_entries_once_per_revision(caplog: pytest.LogCaptureFixture) -> None:
    view = ScheduleView()
    assert view.apply("bad", 1, None, b"\x00garbage")  # news: the timer looks again
    assert not view.apply("bad", 1, None, b"\x00garbage")
    view.apply("other", 2, None, record(key="not-other").to_bytes())  # key field does not match its key
    view.apply("timeless", 3, None, replace(record(key="timeless"), interval_s=None).to_bytes())
    view.apply("zoned", 4, None, replace(record(key="zoned"), tz="Mars/Olympus").to_bytes())
    assert view.corrupt_keys == {"bad", "other", "timeless", "zoned"} and view.due(NOW) == []
    assert sum(r.getMessage().startswith("corrupt scheduled job 'bad' (revision 1) skipped: ")
               for r in caplog.records) == 1
    assert any("its key field is 'not-other'" in r.getMessage() for r in caplog.records)  # why, in the log
    view.apply("bad", 5, None, record(key="bad").to_bytes())
    assert view.corrupt_keys == {"other", "timeless", "zoned"} and len(view.due(NOW)) == 1
    view.prune({"bad"})
    assert view.corrupt_keys == set() and set(view.entries) == {"bad"}


# --- edges found by mutation testing (scripts/mutation naq_ipy.schedules.fires) ---


@pytest.mark.parametrize(("now", "expected"), [
    (NOW - 5, NOW), (NOW, NOW + 10), (NOW + 9.999, NOW + 10), (NOW + 30, NOW + 40), (NOW + 10_000, NOW + 10_010),
])
def test_next_regular_run_is_the_first_grid_point_strictly_after_now(now: float, expected: float) -> None:
    assert next_regular_run(record(interval_s=10.0), now) == expected


def test_an_entry_due_exactly_now_fires_and_a_not_due_one_keeps_its_counts() -> None:
    assert plan_fires(record(), NOW).due_times == (NOW,)
    waiting = plan_fires(record(next_run_utc=NOW + 1, repeat=3), NOW)
    assert (waiting.due_times, waiting.next_run_utc, waiting.repeat_left, waiting.done) == ((), NOW + 1, 3, False)


def test_the_grace_window_is_60_s_by_default_and_its_edge_still_counts_as_on_time() -> None:
    on_edge = record(interval_s=3600.0, next_run_utc=NOW - 60, misfire="skip")
    assert plan_fires(on_edge, NOW).due_times == (NOW - 60,)
    assert plan_fires(on_edge, NOW, grace_s=60).due_times == (NOW - 60,)
    past_edge = record(interval_s=3600.0, next_run_utc=NOW - 60.5, misfire="skip")
    assert plan_fires(past_edge, NOW).due_times == ()


def test_catch_up_is_capped_at_100_by_default_and_at_least_one() -> None:
    rec = record(interval_s=1.0, next_run_utc=NOW - 500, misfire="all")
    assert len(plan_fires(rec, NOW).due_times) == 100
    assert plan_fires(rec, NOW, max_catch_up=1).due_times == (NOW - 500,)
    assert plan_fires(rec, NOW, max_catch_up=0).due_times == (NOW - 500,)


def test_an_entry_with_no_runs_left_fires_nothing_and_is_done() -> None:
    plan = plan_fires(record(repeat=0), NOW)
    assert (plan.due_times, plan.repeat_left, plan.done, plan.next_run_utc) == ((), 0, True, None)


def test_check_plannable_accepts_a_good_cron_entry_and_names_what_is_wrong() -> None:
    check_plannable(record("cron", cron="0 6 * * *", tz="Europe/Berlin", key="daily"), "daily")
    with pytest.raises(SerializationError, match="^unusable scheduled-job record: its key field is 'tick'$"):
        check_plannable(record(), "other")


def test_view_forgets_a_deleted_key_and_its_corrupt_mark_and_keeps_its_highest_own_delete() -> None:
    view = ScheduleView()
    view.apply("a", 1, None, record(key="a").to_bytes())
    view.apply("b", 2, None, b"garbage")
    assert view.apply("a", 3, "DEL", None) and view.apply("b", 4, "PURGE", None)
    assert view.entries == {} and view.corrupt_keys == set()
    view.deleted("c", 7)
    view.deleted("c", 5)  # an older delete acknowledged late
    assert not view.apply("c", 6, None, record(key="c").to_bytes())


def test_an_interval_grid_is_start_plus_k_steps_not_a_running_sum() -> None:
    # a running sum of 0.1 s drifts below the grid (run id ...799 instead of ...800): two schedulers
    # that started summing at different points would then publish one fire under two ids
    rec = record(interval_s=0.1, next_run_utc=NOW - 1.0, misfire="all")
    plan = plan_fires(rec, NOW)
    assert plan.due_times == tuple(NOW - 1.0 + k * 0.1 for k in range(11))
    assert run_id(rec, plan.due_times[-1]) == f"tick.{int(NOW * 1000)}"
