"""Durations, zones, UTC conversion, cron next runs across DST, and short labels."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from naq_ipy.errors import ConfigurationError
from naq_ipy.rules.times import (
    format_duration,
    format_relative,
    from_timestamp,
    is_wildcard_cron,
    next_cron_run,
    next_cron_runs,
    parse_duration,
    resolve_zone,
    to_timestamp,
    to_utc,
    validate_cron,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    """An aware UTC datetime."""
    return datetime(*args, tzinfo=UTC)


def local(zone: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    """An aware datetime in `zone`."""
    return datetime(*args, tzinfo=zone, fold=fold)


def runs_between(expr: str, start: datetime, end: datetime, tz: str) -> list[datetime]:
    """Every fire in (start, end], found by iterating `next_cron_run`."""
    runs: list[datetime] = []
    when = next_cron_run(expr, start, tz)
    while when <= end:
        runs.append(when)
        when = next_cron_run(expr, when, tz)
    return runs


# ---- parse_duration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "seconds"),
    [
        ("90", 90.0),
        ("1.5", 1.5),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("1d2h3m4s", 93784.0),
        ("1w", 604800.0),
        ("1h 30m", 5400.0),
        (" 1H30M ", 5400.0),
        ("3 min 5 s", 185.0),
        (".5s", 0.5),
        ("0", 0.0),
        ("0s", 0.0),
        (90, 90.0),
        (2.5, 2.5),
        (0, 0.0),
        (timedelta(minutes=2), 120.0),
    ],
)
def test_parse_duration_accepts(spec: object, seconds: float) -> None:
    assert parse_duration(spec) == seconds  # type: ignore[arg-type]
    assert isinstance(parse_duration(spec), float)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec",
    ["", "  ", "-5", "-5s", "5x", "m", "5 m m", "1e3", "nan", "inf", "1,5s", "٣s", "9" * 400 + "w", True, False],
)
def test_parse_duration_rejects_text_and_bools(spec: object) -> None:
    with pytest.raises(ConfigurationError, match="invalid duration .*expected .*'1h30m'"):
        parse_duration(spec)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", [-1, -0.5, float("nan"), float("inf"), 10**400, timedelta(seconds=-1), None, [5]])
def test_parse_duration_rejects_bad_values(spec: object) -> None:
    with pytest.raises(ConfigurationError, match="invalid duration"):
        parse_duration(spec)  # type: ignore[arg-type]


def test_parse_duration_message_is_one_line_naming_the_text() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_duration("5 parsecs")
    assert "'5 parsecs'" in str(info.value)
    assert "\n" not in str(info.value)


# ---- zones and UTC ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "UTC", "utc"])
def test_resolve_zone_utc(name: str | None) -> None:
    assert resolve_zone(name) == ZoneInfo("UTC")


def test_resolve_zone_named() -> None:
    assert resolve_zone("Europe/Berlin") is BERLIN


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "Europe/", "/etc/passwd", "../x", "a\x00b", "x" * 5000])
def test_resolve_zone_unknown(name: str) -> None:
    with pytest.raises(ConfigurationError, match="^unknown time zone "):
        resolve_zone(name)


def test_resolve_zone_message() -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve_zone("Mars/Olympus")
    assert str(info.value) == "unknown time zone 'Mars/Olympus'"


def test_to_utc_naive_is_utc_by_default() -> None:
    result = to_utc(datetime(2026, 6, 1, 12))
    assert result == utc(2026, 6, 1, 12)
    assert result.tzinfo is UTC


def test_to_utc_naive_in_zone() -> None:
    assert to_utc(datetime(2026, 6, 1, 12), "Europe/Berlin") == utc(2026, 6, 1, 10)
    assert to_utc(datetime(2026, 1, 1, 12), "Asia/Kolkata") == utc(2026, 1, 1, 6, 30)


def test_to_utc_aware_ignores_tz() -> None:
    aware = datetime(2026, 6, 1, 12, tzinfo=timezone(timedelta(hours=-4)))
    assert to_utc(aware, "Europe/Berlin") == utc(2026, 6, 1, 16)


def test_timestamps_round_trip() -> None:
    assert to_timestamp(utc(1970, 1, 1, 0, 1)) == 60.0
    assert to_timestamp(datetime(1970, 1, 1, 1), "Europe/Berlin") == 0.0
    assert to_timestamp(12) == 12.0
    assert from_timestamp(1_780_000_000.5) == utc(2026, 5, 28, 20, 26, 40) + timedelta(microseconds=500_000)
    assert from_timestamp(to_timestamp(utc(2030, 2, 3, 4, 5, 6))) == utc(2030, 2, 3, 4, 5, 6)
    assert from_timestamp(0).tzinfo is UTC


@pytest.mark.parametrize("value", [True, float("nan"), float("inf"), "12", None])
def test_to_timestamp_rejects(value: object) -> None:
    with pytest.raises(ConfigurationError, match="invalid time"):
        to_timestamp(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1e20, float("nan")])
def test_from_timestamp_rejects(value: float) -> None:
    with pytest.raises(ConfigurationError, match="invalid unix timestamp"):
        from_timestamp(value)


# ---- validate_cron ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "* * * * *",
        "*/5 9-17 * * mon-fri",
        "0 0 L * *",
        "0 0 * * 1#2",
        "0 0 29 2 *",
        "0 12 * * * 30",
        "@daily",
        "@Hourly",
    ],
)
def test_validate_cron_accepts(expr: str) -> None:
    assert validate_cron(f"  {expr}\n") == expr


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("* * * *", "expected 5 fields"),
        ("0 0 * * * * 2030", "expected 5 fields"),
        ("", "expected 5 fields"),
        ("R * * * *", "random 'R'"),
        ("r(0-5)/2 * * * *", "random 'R'"),
        ("@sometimes", "unknown alias"),
        ("60 * * * *", "out of range"),
        ("0 0 * * * 61", "out of range"),
        ("0 0 31 2 *", "can never occur"),
        ("H * * * *", "hash_id"),
        ("a b c d e", "not acceptable"),
        ("0 0 * * 5L", "not acceptable"),
    ],
)
def test_validate_cron_rejects(expr: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^invalid cron expression {re.escape(repr(expr))}: .*{reason}"):
        validate_cron(expr)


def test_validate_cron_rejects_non_text() -> None:
    with pytest.raises(ConfigurationError, match="not a string"):
        validate_cron(5)  # type: ignore[arg-type]


# ---- next_cron_run basics ---------------------------------------------------------------------


def test_next_cron_run_utc_strictly_after() -> None:
    assert next_cron_run("*/15 * * * *", utc(2026, 5, 1, 10, 0)) == utc(2026, 5, 1, 10, 15)
    assert next_cron_run("*/15 * * * *", utc(2026, 5, 1, 10, 0, 0, 1)) == utc(2026, 5, 1, 10, 15)
    assert next_cron_run("*/15 * * * *", utc(2026, 5, 1, 9, 59, 59)) == utc(2026, 5, 1, 10, 0)


def test_next_cron_run_naive_after_is_utc() -> None:
    assert next_cron_run("0 * * * *", datetime(2026, 5, 1, 10, 30), "Europe/Berlin") == utc(2026, 5, 1, 11)


def test_next_cron_run_seconds_last() -> None:
    assert next_cron_run("* * * * * 30", utc(2026, 5, 1, 10, 0, 30)) == utc(2026, 5, 1, 10, 1, 30)


def test_next_cron_run_alias_and_zone() -> None:
    assert next_cron_run("@daily", utc(2026, 5, 1, 12), "Asia/Kolkata") == utc(2026, 5, 1, 18, 30)


def test_next_cron_run_result_is_aware_utc() -> None:
    result = next_cron_run("0 9 * * *", utc(2026, 5, 1), "America/New_York")
    assert result == utc(2026, 5, 1, 13)
    assert result.utcoffset() == timedelta(0)


def test_next_cron_runs_matches_iteration() -> None:
    start = utc(2026, 3, 28, 20)
    runs = next_cron_runs("*/20 1-3 * * *", start, "Europe/Berlin", count=12)
    assert runs == runs_between("*/20 1-3 * * *", start, runs[-1], "Europe/Berlin")
    assert next_cron_runs("0 0 * * *", start, count=0) == []
    with pytest.raises(ConfigurationError, match="count"):
        next_cron_runs("0 0 * * *", start, count=-1)


def test_next_cron_run_rejects_bad_input() -> None:
    with pytest.raises(ConfigurationError, match="invalid cron expression"):
        next_cron_run("nope", utc(2026, 1, 1))
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        next_cron_run("* * * * *", utc(2026, 1, 1), "Nowhere/Land")


# ---- DST ----------------------------------------------------------------------------------------


def assert_one_run_per_local_day(runs: list[datetime], zone: ZoneInfo, first: date, last: date) -> None:
    """Exactly one run on each local day from `first` to `last`."""
    days = Counter(run.astimezone(zone).date() for run in runs)
    expected = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    assert [days[day] for day in expected] == [1] * len(expected)
    assert all(later > earlier for earlier, later in pairwise(runs))


def test_berlin_spring_forward_fires_missing_time_once() -> None:
    start, end = local(BERLIN, 2026, 3, 27), local(BERLIN, 2026, 4, 1, 23, 59)
    runs = runs_between("0 2 * * *", start, end, "Europe/Berlin")
    assert_one_run_per_local_day(runs, BERLIN, date(2026, 3, 27), date(2026, 4, 1))
    # 02:00 does not exist on 2026-03-29: it fires right after the jump, at 03:00 CEST = 01:00 UTC.
    assert runs[1:4] == [utc(2026, 3, 28, 1), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0)]


def test_berlin_fall_back_fires_repeated_time_once() -> None:
    start, end = local(BERLIN, 2026, 10, 23), local(BERLIN, 2026, 10, 28, 23, 59)
    runs = runs_between("0 2 * * *", start, end, "Europe/Berlin")
    assert_one_run_per_local_day(runs, BERLIN, date(2026, 10, 23), date(2026, 10, 28))
    # 02:00 happens twice on 2026-10-25: only the first (CEST) fires.
    assert runs[1:4] == [utc(2026, 10, 24, 0), utc(2026, 10, 25, 0), utc(2026, 10, 26, 1)]


def test_berlin_day_by_day_from_local_midnight() -> None:
    for first in (date(2026, 3, 27), date(2026, 10, 23)):
        for offset in range(6):
            day = first + timedelta(days=offset)
            midnight = local(BERLIN, day.year, day.month, day.day)
            run = next_cron_run("0 2 * * *", midnight, "Europe/Berlin")
            assert run.astimezone(BERLIN).date() == day
            assert next_cron_run("0 2 * * *", run, "Europe/Berlin").astimezone(BERLIN).date() == day + timedelta(1)


@pytest.mark.parametrize(
    ("tz", "start", "end"),
    [
        ("Europe/Berlin", utc(2026, 10, 24, 20), utc(2026, 10, 25, 6)),
        ("America/New_York", utc(2026, 10, 31, 23), utc(2026, 11, 1, 12)),
        ("Europe/Berlin", utc(2026, 3, 28, 20), utc(2026, 3, 29, 6)),
        ("America/New_York", utc(2026, 3, 7, 23), utc(2026, 3, 8, 12)),
    ],
)
def test_half_past_every_hour_keeps_real_hours(tz: str, start: datetime, end: datetime) -> None:
    runs = runs_between("30 * * * *", start, end, tz)
    assert all(later - earlier == timedelta(hours=1) for earlier, later in pairwise(runs))
    assert all(run.astimezone(ZoneInfo(tz)).minute == 30 for run in runs)


def test_berlin_fall_back_hourly_fires_in_the_repeat() -> None:
    runs = runs_between("30 * * * *", utc(2026, 10, 24, 23), utc(2026, 10, 25, 3), "Europe/Berlin")
    # A wildcard job runs on real time: 02:30 CEST (00:30 UTC) and 02:30 CET (01:30 UTC) both fire.
    assert runs == [utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30),
                    utc(2026, 10, 25, 2, 30)]


def test_after_in_repeated_hour() -> None:
    second_pass = local(BERLIN, 2026, 10, 25, 2, 10, fold=1)
    assert next_cron_run("30 2 * * *", second_pass, "Europe/Berlin") == utc(2026, 10, 26, 1, 30)
    # 02:20 CET, the second 02:20 of the night.
    assert next_cron_run("*/20 * * * *", second_pass, "Europe/Berlin") == utc(2026, 10, 25, 1, 20)


def test_new_york_transitions() -> None:
    spring = runs_between("30 2 * * *", utc(2026, 3, 7), utc(2026, 3, 10), "America/New_York")
    # 02:30 does not exist on 2026-03-08: it fires right after the jump, at 03:00 EDT = 07:00 UTC.
    assert spring == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)]
    fall = runs_between("30 1 * * *", utc(2026, 10, 31), utc(2026, 11, 3), "America/New_York")
    # 01:30 happens twice on 2026-11-01: only the first (EDT) fires.
    assert fall == [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


@pytest.mark.parametrize("expr", ["*/20 2,3 * * *", "0,20,40 2,3 * * *"])
def test_gap_times_merge_with_the_real_times_after_the_jump(expr: str) -> None:
    # Wildcard: 02:xx does not exist and does not fire. Fixed: 02:00, 02:20, 02:40 fire once at 03:00 CEST,
    # which is also the fire of 03:00.
    runs = runs_between(expr, utc(2026, 3, 28, 22), utc(2026, 3, 29, 6), "Europe/Berlin")
    assert runs == [utc(2026, 3, 29, 1), utc(2026, 3, 29, 1, 20), utc(2026, 3, 29, 1, 40)]


def test_gap_times_fire_right_after_a_30_minute_jump() -> None:
    # Lord Howe springs forward 30 min at 02:00: 02:20 is in the gap (fires at 02:30 LHDT), 02:40 is real.
    runs = next_cron_runs("20,40 2 * * *", utc(2026, 10, 3, 12), "Australia/Lord_Howe", count=3)
    assert runs == [utc(2026, 10, 3, 15, 30), utc(2026, 10, 3, 15, 40), utc(2026, 10, 4, 15, 20)]
    # Both gap times of Berlin fired at the jump (01:00 UTC), before 01:10 UTC: next is the day after.
    assert next_cron_run("10,50 2 * * *", utc(2026, 3, 29, 1, 10), "Europe/Berlin") == utc(2026, 3, 30, 0, 10)


# ---- cron(8) at DST changes: wildcard jobs on real time, fixed-time jobs once -------------------


@pytest.mark.parametrize(
    ("expr", "wildcard"),
    [
        ("* * * * *", True),
        ("*/15 * * * *", True),
        ("0 * * * *", True),
        ("0 */2 * * *", True),
        ("* 2 * * *", True),
        ("1-5 * * * *", True),
        ("*/5 2 * * * 30", True),
        (" @HOURLY ", True),
        ("0 2 * * *", False),
        ("0,30 1-3 * * *", False),
        ("0-59 2 * * *", False),
        ("0-59/5 0-23 * * *", False),
        ("30 2 * * * *", False),
        ("@daily", False),
        ("@weekly", False),
    ],
)
def test_is_wildcard_cron_reads_minute_and_hour_like_cronie(expr: str, wildcard: bool) -> None:
    assert is_wildcard_cron(expr) is wildcard


def test_berlin_fall_back_hourly_fires_every_real_hour() -> None:
    runs = runs_between("0 * * * *", utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 2, 30), "Europe/Berlin")
    # 02:00 CEST, 02:00 CET, 03:00 CET: no two-hour gap.
    assert runs == [utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), utc(2026, 10, 25, 2)]


def test_berlin_fall_back_half_hourly_covers_the_repeated_hour() -> None:
    runs = runs_between("*/30 * * * *", utc(2026, 10, 24, 23, 45), utc(2026, 10, 25, 2, 45), "Europe/Berlin")
    assert runs == [utc(2026, 10, 25, 0) + timedelta(minutes=30 * n) for n in range(6)]
    walls = [f"{run.astimezone(BERLIN):%H:%M %Z}" for run in runs]
    assert walls == ["02:00 CEST", "02:30 CEST", "02:00 CET", "02:30 CET", "03:00 CET", "03:30 CET"]


def test_berlin_spring_forward_fixed_time_fires_once_right_after_the_jump() -> None:
    runs = next_cron_runs("30 2 * * *", utc(2026, 3, 28, 12), "Europe/Berlin", count=2)
    assert runs == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)]
    assert f"{runs[0].astimezone(BERLIN):%H:%M %Z}" == "03:00 CEST"


def test_berlin_spring_forward_hourly_goes_on_at_the_new_wall_time() -> None:
    runs = runs_between("0 * * * *", utc(2026, 3, 28, 23, 30), utc(2026, 3, 29, 2, 30), "Europe/Berlin")
    assert [f"{run.astimezone(BERLIN):%H:%M %Z}" for run in runs] == ["01:00 CET", "03:00 CEST", "04:00 CEST"]
    assert all(later - earlier == timedelta(hours=1) for earlier, later in pairwise(runs))


def test_minute_wildcard_in_a_fixed_hour_is_a_wildcard_job() -> None:
    # '* 2 * * *' runs on real time: no 02:xx on the spring-forward day, both 02:xx hours at fall-back.
    assert next_cron_run("* 2 * * *", utc(2026, 3, 28, 2), "Europe/Berlin") == utc(2026, 3, 30, 0)
    fall = runs_between("* 2 * * *", utc(2026, 10, 24, 12), utc(2026, 10, 25, 12), "Europe/Berlin")
    assert len(fall) == 120 and fall[0] == utc(2026, 10, 25, 0) and fall[-1] == utc(2026, 10, 25, 1, 59)
    # '0-59 2 * * *' is the same set of wall times as a fixed-time job: once at the jump, the first hour only.
    assert next_cron_runs("0-59 2 * * *", utc(2026, 3, 28, 2), "Europe/Berlin", 2) == [utc(2026, 3, 29, 1),
                                                                                       utc(2026, 3, 30, 0)]
    fall = runs_between("0-59 2 * * *", utc(2026, 10, 24, 12), utc(2026, 10, 25, 12), "Europe/Berlin")
    assert len(fall) == 60 and fall[-1] == utc(2026, 10, 25, 0, 59)


@pytest.mark.parametrize(
    ("tz", "fall", "spring"),
    [
        ("Europe/Berlin", utc(2026, 10, 25, 1), utc(2026, 3, 29, 1)),
        ("America/New_York", utc(2026, 11, 1, 6), utc(2026, 3, 8, 7)),
        ("Australia/Sydney", utc(2026, 4, 4, 16), utc(2026, 10, 3, 16)),
    ],
)
def test_hourly_and_fixed_jobs_in_both_hemispheres(tz: str, fall: datetime, spring: datetime) -> None:
    zone, hour = ZoneInfo(tz), timedelta(hours=1)
    for change in (fall, spring):  # hourly: every real hour, also across the change
        assert runs_between("0 * * * *", change - 2 * hour, change + 2 * hour, tz) == [
            change + n * hour for n in range(-1, 3)
        ]
    # A wall time of the repeated hour fires once, the first time; one of the skipped hour once, at the change.
    repeated = f"{(fall - hour / 2).astimezone(zone):%M %H} * * *"
    assert runs_between(repeated, fall - 2 * hour, fall + 2 * hour, tz) == [fall - hour / 2]
    skipped = f"{(spring - hour / 2).astimezone(zone) + hour:%M %H} * * *"
    assert runs_between(skipped, spring - 2 * hour, spring + 2 * hour, tz) == [spring]


def test_lord_howe_hourly_follows_the_wall_clock_through_a_30_minute_shift() -> None:
    # 02:00 LHST jumps to 02:30 LHDT (15:30 UTC): minute 0 comes again at 03:00 LHDT, 1.5 h after 01:00 LHST.
    runs = runs_between("0 * * * *", utc(2026, 10, 3, 14), utc(2026, 10, 3, 17), "Australia/Lord_Howe")
    assert runs == [utc(2026, 10, 3, 14, 30), utc(2026, 10, 3, 16), utc(2026, 10, 3, 17)]
    half_hourly = runs_between("*/30 * * * *", utc(2026, 10, 3, 14), utc(2026, 10, 3, 16), "Australia/Lord_Howe")
    assert half_hourly == [utc(2026, 10, 3, 14) + timedelta(minutes=30 * n) for n in range(1, 5)]


# ---- labels -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta_s", "text"),
    [
        (0.4, "now"),
        (-0.9, "now"),
        (45, "in 45 s"),
        (180, "in 3 min"),
        (239, "in 3 min"),
        (7500, "in 2 h 5 min"),
        (3600, "in 1 h"),
        (3 * 86400, "in 3 d"),
        (86400 + 5 * 3600 + 59 * 60, "in 1 d 5 h"),
        (-300, "5 min ago"),
        (-45.5, "45 s ago"),
    ],
)
def test_format_relative(delta_s: float, text: str) -> None:
    now = utc(2026, 1, 1)
    assert format_relative(now + timedelta(seconds=delta_s), now) == text


def test_format_relative_naive_is_utc() -> None:
    assert format_relative(datetime(2026, 1, 1, 0, 3), utc(2026, 1, 1)) == "in 3 min"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 ms"),
        (0.25, "250 ms"),
        (4.2, "4.2 s"),
        (9.96, "10 s"),
        (42, "42 s"),
        (185, "3 min 5 s"),
        (180, "3 min"),
        (7500, "2 h 5 min"),
        (7200, "2 h"),
        (93600, "1 d 2 h"),
        (86400, "1 d"),
        (-3, "-3.0 s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
