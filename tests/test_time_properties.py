"""Property tests: durations, cron next runs in DST zones, retry specs and delays."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from functools import cache
from itertools import pairwise
from zoneinfo import ZoneInfo

from croniter import croniter
from hypothesis import example, given, settings
from hypothesis import strategies as st

from naq_ipy.errors import ConfigurationError
from naq_ipy.rules.retry import (
    ExponentialBackoff,
    parse_retry_delay,
    retry_delay_from_json,
    retry_delay_s,
    retry_delay_to_json,
    validate_retry_delay,
)
from naq_ipy.rules.times import (
    format_duration,
    is_wildcard_cron,
    next_cron_run,
    next_cron_runs,
    parse_duration,
    validate_cron,
)

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe", "Asia/Kolkata")
DST_ZONES = ("Europe/Berlin", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe")
UNIT_S = {"ms": Fraction(1, 1000), "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
FIRST, LAST = datetime(2020, 1, 1), datetime(2030, 12, 31)
RUNS = 5
MARGIN = timedelta(hours=2)  # wider than any DST shift in ZONES (1 h at most)

fast = settings(max_examples=150, deadline=None)


# ---- durations --------------------------------------------------------------------------------


@fast
@given(st.integers(0, 10_000), st.integers(0, 59), st.integers(0, 59), st.booleans(), st.booleans())
def test_hms_text_round_trips(hours: int, minutes: int, seconds: int, spaced: bool, upper: bool) -> None:
    text = (" " if spaced else "").join(
        f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (seconds, "s"))
    )
    assert parse_duration(text.upper() if upper else text) == hours * 3600 + minutes * 60 + seconds


@fast
@given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(sorted(UNIT_S))), min_size=1, max_size=5))
def test_any_unit_mix_parses_exactly(parts: list[tuple[int, str]]) -> None:
    text = " ".join(f"{value}{unit}" for value, unit in parts)
    assert parse_duration(text) == float(sum(value * UNIT_S[unit] for value, unit in parts))


@fast
@given(st.floats(0, 10**8, allow_nan=False))
def test_format_duration_parses_back_within_its_rounding(seconds: float) -> None:
    shown = format_duration(seconds)
    leading_unit = shown.split()[1]
    tolerance_s = 0.05 if "." in shown else {"ms": 0.0005, "s": 0.5, "min": 0.5, "h": 30.5, "d": 1800.5}[leading_unit]
    assert abs(parse_duration(shown) - seconds) <= tolerance_s + 1e-9 * seconds


@fast
@given(st.one_of(st.text(), st.from_regex(r"[0-9 .,:smhdwinSMHD-]{0,12}", fullmatch=True)))
def test_parse_duration_only_raises_configuration_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ConfigurationError:
        return
    assert seconds >= 0 and seconds != float("inf")
    # case and surrounding blanks do not matter; a number of seconds that came out reads back the same
    if text.upper().lower() == text.lower():
        assert parse_duration(f"  {text.upper()}\t") == seconds
    assert parse_duration(repr(seconds)) == seconds


# ---- cron -------------------------------------------------------------------------------------


def field(low: int, high: int) -> st.SearchStrategy[str]:
    """One cron field over [low, high]: '*', a value, a list, a range or a step."""
    value = st.integers(low, high).map(str)
    pair = st.tuples(st.integers(low, high), st.integers(low, high)).map(sorted)
    return st.one_of(
        st.just("*"),
        value,
        pair.map(lambda ab: f"{ab[0]},{ab[1]}"),
        pair.map(lambda ab: f"{ab[0]}-{ab[1]}"),
        st.integers(2, max(2, (high - low) // 2)).map(lambda step: f"*/{step}"),
    )


CRONS = st.one_of(
    st.tuples(field(0, 59), field(0, 23), st.sampled_from(["*", "1", "15", "28", "L"]), field(1, 12), field(0, 6)).map(
        " ".join
    ),
    # Hours 1-3 are where these zones change offset: gap and repeated wall times.
    st.tuples(field(0, 59), st.sampled_from(["2", "1-3", "2,3", "1,2", "*"])).map(lambda mh: f"{mh[0]} {mh[1]} * * *"),
    st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly", "@yearly"]),
)


@cache
def transitions(zone_name: str) -> tuple[datetime, ...]:
    """UTC instants in 2020-2030 where the zone's offset changes (to the second)."""
    zone, found = ZoneInfo(zone_name), []
    day = FIRST.replace(tzinfo=UTC)
    while day < LAST.replace(tzinfo=UTC):
        low, high = day, day + timedelta(days=1)
        if low.astimezone(zone).utcoffset() != high.astimezone(zone).utcoffset():
            while high - low > timedelta(seconds=1):
                mid = low + (high - low) / 2
                same = mid.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset()
                low, high = (mid, high) if same else (low, mid)
            found.append(high.replace(microsecond=0))
        day += timedelta(days=1)
    return tuple(found)


@st.composite
def zone_and_start(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone from ZONES and an instant in 2020-2030, half the time within 2 h of a DST change."""
    zone_name = draw(st.sampled_from(ZONES))
    near = transitions(zone_name)
    if near and draw(st.booleans()):
        return zone_name, draw(st.sampled_from(near)) + timedelta(seconds=draw(st.integers(-7200, 7200)))
    return zone_name, draw(st.datetimes(FIRST, LAST)).replace(tzinfo=UTC)


def real_instants(wall: datetime, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants whose wall time in `zone` is naive `wall`: none in a gap, two in a repeated hour."""
    mapped = {wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)}
    return sorted(when for when in mapped if when.astimezone(zone).replace(tzinfo=None) == wall)


def jump_after(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first minute with the new offset after the spring-forward gap holding naive `wall`, by walking."""
    when = min(wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
    offset = when.astimezone(zone).utcoffset()
    while when.astimezone(zone).utcoffset() == offset:
        when += timedelta(minutes=1)
    return when


def cron8_fires(expr: str, wall: datetime, zone: ZoneInfo) -> list[datetime]:
    """cron(8): a wildcard job fires at every real instant of `wall`; a fixed one at the first, or after the jump."""
    real = real_instants(wall, zone)
    if expr.startswith("@hourly") or any(field.startswith("*") for field in expr.split()[:2]):
        return real
    return real[:1] or [jump_after(wall, zone)]


def brute_force_runs(expr: str, after: datetime, zone: ZoneInfo) -> list[datetime]:
    """The first RUNS distinct fires after `after`: all wall times near them mapped by cron(8), sorted."""
    walls = croniter(expr, after.astimezone(zone).replace(tzinfo=None) - MARGIN)
    fires: set[datetime] = set()
    while True:
        wall = walls.get_next(datetime)
        fires.update(cron8_fires(expr, wall, zone))
        later = sorted(fire for fire in fires if fire > after)
        if len(later) >= RUNS and wall > later[RUNS - 1].astimezone(zone).replace(tzinfo=None) + MARGIN:
            return later[:RUNS]


@settings(max_examples=150, deadline=None)
@given(CRONS, zone_and_start())
@example("20,40 2 * * *", ("Australia/Lord_Howe", datetime(2026, 10, 3, 14, tzinfo=UTC)))
@example("10,50 2 * * *", ("Europe/Berlin", datetime(2026, 3, 29, 1, 5, tzinfo=UTC)))
@example("*/20 * * * *", ("Europe/Berlin", datetime(2026, 10, 25, 1, 10, tzinfo=UTC)))
def test_cron_runs_strictly_increase_and_lose_nothing(expr: str, zone_start: tuple[str, datetime]) -> None:
    zone_name, start = zone_start
    runs = next_cron_runs(validate_cron(expr), start, zone_name, count=RUNS)
    assert runs[0] > start
    assert all(later > earlier for earlier, later in pairwise(runs))
    assert all(next_cron_run(expr, earlier, zone_name) == later for earlier, later in pairwise(runs))
    assert runs == brute_force_runs(expr, start, ZoneInfo(zone_name))


@fast
@given(st.sampled_from(DST_ZONES), st.data())
def test_fixed_time_jobs_fire_once_a_day_across_dst(zone_name: str, data: st.DataObject) -> None:
    zone = ZoneInfo(zone_name)
    change = data.draw(st.sampled_from(transitions(zone_name)))
    local_hour = change.astimezone(zone).hour  # near the change half the time: the gap or the repeated hour
    hour = data.draw(st.one_of(st.integers(max(0, local_hour - 2), min(23, local_hour + 1)), st.integers(0, 23)))
    minute = data.draw(st.one_of(st.sampled_from([0, 15, 30, 45, 59]), st.integers(0, 59)))
    first_day = change.astimezone(zone).date() - timedelta(days=2)
    start = datetime.combine(first_day, datetime.min.time(), zone).astimezone(UTC) - timedelta(seconds=1)
    runs = next_cron_runs(f"{minute} {hour} * * *", start, zone_name, count=5)
    assert [run.astimezone(zone).date() for run in runs] == [first_day + timedelta(days=n) for n in range(5)]
    for run in runs:
        wall = datetime.combine(run.astimezone(zone).date(), datetime.min.time()).replace(hour=hour, minute=minute)
        assert run == (real_instants(wall, zone)[:1] or [jump_after(wall, zone)])[0]


def shift_minutes(zone_name: str, change: datetime) -> int:
    """The size of the DST change of `zone_name` at UTC `change`, in minutes."""
    zone = ZoneInfo(zone_name)
    before, after = (when.astimezone(zone).utcoffset() for when in (change - timedelta(seconds=1), change))
    assert before is not None and after is not None
    return abs(int((after - before).total_seconds())) // 60


@fast
@given(st.sampled_from(DST_ZONES), st.data())
def test_wildcard_jobs_keep_real_time_spacing_across_dst(zone_name: str, data: st.DataObject) -> None:
    change = data.draw(st.sampled_from(transitions(zone_name)))
    shift = shift_minutes(zone_name, change)
    # Wall times repeat every `period` minutes; when the shift is a multiple of it, real time keeps that spacing.
    period = data.draw(st.sampled_from([n for n in (1, 2, 3, 5, 6, 10, 12, 15, 20, 30, 60) if shift % n == 0]))
    minutes = ",".join(str(minute) for minute in range(data.draw(st.integers(0, period - 1)), 60, period))
    expr = data.draw(st.sampled_from([f"*/{period} * * * *", f"{minutes} * * * *"]))
    assert is_wildcard_cron(expr)
    start = change - timedelta(minutes=data.draw(st.integers(1, 150)))
    runs = next_cron_runs(expr, start, zone_name, count=max(3, 240 // period))
    assert runs[0] - start <= timedelta(minutes=period)
    assert all(later - earlier == timedelta(minutes=period) for earlier, later in pairwise(runs))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["* * * * * */15", "*/10 * * * * 0,30", "0 2 * * * 30"]), zone_and_start())
def test_cron_with_seconds_strictly_increases(expr: str, zone_start: tuple[str, datetime]) -> None:
    zone_name, start = zone_start
    runs = next_cron_runs(expr, start, zone_name, count=RUNS)
    assert runs[0] > start
    assert all(later > earlier for earlier, later in pairwise(runs))


# ---- retry ------------------------------------------------------------------------------------


@fast
@given(st.one_of(st.text(), st.from_regex(r"(exp:)?[0-9 .,:smhjiter]{0,16}", fullmatch=True)))
def test_parse_retry_delay_only_raises_configuration_error(text: str) -> None:
    try:
        spec = parse_retry_delay(text)
    except ConfigurationError:
        return
    delays = [retry_delay_s(spec, n, random.Random(0)) for n in range(1, 6)]
    assert all(d >= 0 and math.isfinite(d) for d in delays)
    items = text.strip().lower().split(",")
    if isinstance(spec, tuple):  # each comma-separated item is one retry's delay, the last one repeats
        assert delays == [parse_duration(items[min(n, len(items)) - 1]) for n in range(1, 6)]
    elif isinstance(spec, float):
        assert delays == [parse_duration(text)] * 5
    elif not spec.jitter:  # exponential: never shrinks, never passes its cap
        assert delays == sorted(delays) and max(delays) <= spec.max_s


BACKOFFS = st.builds(
    lambda base_s, extra_s, factor, jitter: ExponentialBackoff(base_s, base_s + extra_s, factor, jitter),
    st.floats(0.001, 1e4),
    st.floats(0, 1e6),
    st.floats(1, 10),
    st.booleans(),
)


@fast
@given(BACKOFFS, st.integers(1, 100_000), st.randoms(use_true_random=False))
def test_backoff_delays_are_within_bounds(backoff: ExponentialBackoff, retry_number: int, rng: random.Random) -> None:
    delay = retry_delay_s(backoff, retry_number, rng)
    assert 0 <= delay <= backoff.max_s
    assert delay >= (backoff.base_s / 2 if backoff.jitter else backoff.base_s)


SPECS = st.one_of(
    st.floats(0, 1e9), st.integers(0, 10**9), st.lists(st.floats(0, 1e9), min_size=1, max_size=5), BACKOFFS
)


@fast
@given(SPECS, st.integers(1, 50))
def test_retry_specs_round_trip_through_json(spec: object, retry_number: int) -> None:
    normal = validate_retry_delay(spec)
    decoded = retry_delay_from_json(json.loads(json.dumps(retry_delay_to_json(normal))))
    assert decoded == normal
    assert retry_delay_s(decoded, retry_number, random.Random(0)) == retry_delay_s(
        normal, retry_number, random.Random(0)
    )
