"""Pure time helpers: durations, zones, UTC conversion, cron next runs in a zone, short labels."""

from __future__ import annotations

import heapq
import math
import numbers
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from fractions import Fraction
from itertools import islice
from typing import SupportsFloat
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from naq_ipy.errors import ConfigurationError
from naq_ipy.rules.records import check_timestamp

_UTC_ZONE = ZoneInfo("UTC")
_UNIT_S: dict[str, Fraction | int] = {
    "ms": Fraction(1, 1000),
    "s": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?:ms|min|s|m|h|d|w)"
_PLAIN_RE = re.compile(_NUMBER, re.ASCII)
_DURATION_RE = re.compile(rf"(?:{_NUMBER}\s*{_UNIT}\s*)+", re.ASCII)
_PART_RE = re.compile(rf"({_NUMBER})\s*({_UNIT})", re.ASCII)
_DURATION_FORMS = (
    "a number of seconds >= 0 ('90', '1.5'), a timedelta, or numbers with units "
    "ms, s, m/min, h, d, w ('90s', '5m', '1h30m', '250ms', '1d 2h')"
)
# croniter: ValueError family for bad fields, KeyError/TypeError/OverflowError on some garbage.
_CRON_ERRORS = (ValueError, KeyError, TypeError, OverflowError)
_RANDOM_FIELD_RE = re.compile(r"r(?:\(\d+-\d+\))?(?:/\d+)?", re.ASCII | re.IGNORECASE)
_CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# Longer than any DST shift in use (2 h at most): how far ahead a fall-back can repeat wall times already passed.
_DST_LOOKAHEAD = timedelta(hours=3)


def parse_duration(spec: str | int | float | timedelta) -> float:
    """Seconds in `spec`: a number of seconds, a timedelta, or text such as '90', '5m', '1h 30m'."""
    if isinstance(spec, bool):
        raise _duration_error(spec)
    if isinstance(spec, timedelta):
        return _checked_seconds(spec.total_seconds(), spec)
    if isinstance(spec, numbers.Real):
        return _checked_seconds(spec, spec)
    if isinstance(spec, str):
        return _checked_seconds(_parse_duration_text(spec), spec)
    raise _duration_error(spec)


def _parse_duration_text(spec: str) -> Fraction:
    """Exact seconds in a duration text, or raise."""
    text = spec.strip().lower()
    if _PLAIN_RE.fullmatch(text):
        return Fraction(text)
    if _DURATION_RE.fullmatch(text):
        return sum((Fraction(number) * _UNIT_S[unit] for number, unit in _PART_RE.findall(text)), Fraction(0))
    raise _duration_error(spec)


def _checked_seconds(value: SupportsFloat, spec: object) -> float:
    """`value` as float seconds if finite and >= 0, else raise naming `spec`."""
    try:
        seconds = float(value)
    except OverflowError:
        raise _duration_error(spec) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise _duration_error(spec)
    return seconds


def _duration_error(spec: object) -> ConfigurationError:
    """The one error for a bad duration."""
    return ConfigurationError(f"invalid duration {spec!r}: expected {_DURATION_FORMS}")


def resolve_zone(name: str | None) -> ZoneInfo:
    """The zone called `name` (IANA key); None or 'UTC' mean UTC."""
    if name is None or (isinstance(name, str) and name.upper() == "UTC"):
        return _UTC_ZONE
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, TypeError) as exc:
        raise ConfigurationError(f"unknown time zone {name!r}") from exc


def to_utc(value: datetime, tz: str | None = None) -> datetime:
    """`value` as an aware UTC datetime; a naive `value` is wall time in `tz` (default UTC)."""
    if value.utcoffset() is None:
        value = value.replace(tzinfo=resolve_zone(tz))
    return value.astimezone(UTC)


def parse_iso_time(text: str, zone: tzinfo | None = None, what: str = "time") -> datetime:
    """An ISO 8601 time (`2026-11-28 09:00`, `2026-11-28T09:00+01:00`); naive text is wall time in `zone` if given."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError(
            f"invalid {what} {text!r}: use ISO 8601, e.g. 2026-11-28T09:00 or 2026-11-28T09:00+01:00"
        ) from None
    return value.replace(tzinfo=zone) if zone is not None and value.tzinfo is None else value


def to_timestamp(value: datetime | float | int, tz: str | None = None) -> float:
    """Unix seconds of `value` (a datetime, naive read in `tz`, or already unix seconds)."""
    if isinstance(value, datetime):
        seconds = to_utc(value, tz).timestamp()
    elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigurationError(f"invalid time {value!r}: expected a datetime or unix seconds")
    else:
        seconds = float(value)
    try:  # what the stored records accept (naq_ipy.rules.records): refused here, before anything is written
        return check_timestamp(seconds, "time")
    except ValueError as e:
        raise ConfigurationError(f"invalid time {value!r}: {e}") from None


def from_timestamp(ts: float) -> datetime:
    """The aware UTC datetime of unix seconds `ts`."""
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (OverflowError, ValueError, OSError, TypeError) as exc:
        raise ConfigurationError(f"invalid unix timestamp {ts!r}") from exc


def validate_cron(expr: str) -> str:
    """`expr` stripped if it is a valid cron: 5 fields, 6 with seconds last, or '@daily'-style."""
    if not isinstance(expr, str):
        raise ConfigurationError(f"invalid cron expression {expr!r}: not a string")
    text = expr.strip()
    problem = _cron_shape_problem(text)
    if problem:
        raise ConfigurationError(f"invalid cron expression {expr!r}: {problem}")
    try:
        croniter.expand(text, strict=True)
    except _CRON_ERRORS as exc:
        raise ConfigurationError(f"invalid cron expression {expr!r}: {exc}") from exc
    return text


def _cron_shape_problem(text: str) -> str | None:
    """Why `text` is not a cron this module accepts before croniter reads the fields, or None."""
    fields = text.split()
    if text.startswith("@"):
        return None if text.lower() in _CRON_ALIASES else f"unknown alias, use one of {', '.join(_CRON_ALIASES)}"
    if len(fields) not in (5, 6):
        return f"expected 5 fields (or 6 with seconds last), got {len(fields)}"
    if any(_RANDOM_FIELD_RE.fullmatch(field) for field in fields):
        # 'R' draws a new value each time croniter parses the text: next runs would not be stable.
        return "random 'R' fields are not supported"
    return None


def next_cron_run(expr: str, after: datetime, tz: str | None = None) -> datetime:
    """Next fire (aware UTC) strictly after `after` (naive = UTC) of `expr` read in wall time of `tz` (default UTC).

    Daylight-saving changes follow cron(8) (Vixie cron, cronie), see `is_wildcard_cron`:
    - a wildcard job runs on real time: it fires at every instant whose wall time matches. Through a
      fall-back it also fires in the repeated hour ('0 * * * *' in Europe/Berlin on 2026-10-25 fires at
      00:00, 01:00 and 02:00 UTC); through a spring-forward it goes on at the new wall time at once,
      and wall times inside the gap do not exist, so they do not fire;
    - a fixed-time job fires once when its wall time repeats (the first occurrence), and once, right
      after the jump, when its wall time is skipped ('30 2 * * *' in Europe/Berlin on 2026-03-29 fires
      at 03:00 CEST = 01:00 UTC); several skipped wall times of one jump give that one fire.
    The fires are one set of instants whatever `after` is, so iterating (`after` = the previous fire)
    gives strictly increasing fires, the same as starting anywhere in between. Wall times come from
    croniter on naive local datetimes (its own zone handling is wrong around DST).
    """
    return next(_fires(validate_cron(expr), to_utc(after), resolve_zone(tz)))


def next_cron_runs(expr: str, after: datetime, tz: str | None = None, count: int = 3) -> list[datetime]:
    """The next `count` fires of `expr` after `after`, in order (see `next_cron_run`)."""
    if count < 0:
        raise ConfigurationError(f"invalid count {count!r}: must be >= 0")
    return list(islice(_fires(validate_cron(expr), to_utc(after), resolve_zone(tz)), count))


def is_wildcard_cron(expr: str) -> bool:
    """Whether valid cron `expr` runs on real time at DST changes: its minute or hour field starts with '*'.

    As in cronie (MIN_STAR/HR_STAR): '*' and '*/15' are wildcards; ranges and lists ('1-5', '0,30',
    '0-59/5') are fixed; '@hourly' is a wildcard, the other aliases are fixed; a seconds field does not count.
    """
    text = expr.strip().lower()
    if text.startswith("@"):
        return text == "@hourly"
    minute, hour = text.split()[:2]
    return minute.startswith("*") or hour.startswith("*")


def _fires(expr: str, after_utc: datetime, zone: ZoneInfo) -> Iterator[datetime]:
    """Distinct UTC fires of `expr` after `after_utc`, ascending, from naive wall times in `zone`.

    Wall order and UTC order differ around a fall-back (a repeated wall time's second instant comes
    after later wall times' first ones): the scan starts early enough for those, and a candidate is held
    until the scan reaches a wall time whose earlier mapping is not before it; no wall time from there
    on has a fire before that mapping (a gap's fire is the jump, after its wall times' fold-1 mappings).
    """
    wildcard = is_wildcard_cron(expr)
    start = min(_wall(after_utc, zone), _wall(after_utc + _DST_LOOKAHEAD, zone) - _DST_LOOKAHEAD)
    pending: list[datetime] = []
    last = after_utc
    for wall in _wall_times(expr, start):
        fold0, fold1 = (wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
        while pending and pending[0] <= min(fold0, fold1):
            fire = heapq.heappop(pending)
            # Skipped wall times of one jump share a fire, which may also be a real wall time's.
            if fire > last:
                last = fire
                yield fire
        for fire in _wall_fires(wall, fold0, fold1, zone, wildcard):
            heapq.heappush(pending, fire)


def _wall_fires(
    wall: datetime, fold0: datetime, fold1: datetime, zone: ZoneInfo, wildcard: bool
) -> tuple[datetime, ...]:
    """The fires of naive `wall` (mapped to UTC with fold 0 and 1) by the cron(8) rule of `next_cron_run`."""
    if _wall(fold0, zone) != wall:  # in a spring-forward gap: fold 1 is before the jump, fold 0 after it
        return () if wildcard else (_jump_instant(fold1, fold0, zone),)
    if wildcard and fold1 != fold0:  # repeated by a fall-back: both real instants
        return (fold0, fold1)
    return (fold0,)


def _jump_instant(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The first whole second with the offset of `after`, bisected between `before` and `after` (one change between)."""
    low, high = math.floor(before.timestamp()), math.ceil(after.timestamp())
    offset = after.astimezone(zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if from_timestamp(middle).astimezone(zone).utcoffset() == offset:
            high = middle
        else:
            low = middle
    return from_timestamp(high)


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    """The naive local wall time of aware `instant` in `zone`."""
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def _wall_times(expr: str, start: datetime) -> Iterator[datetime]:
    """Naive wall times matching `expr` strictly after naive `start` (croniter without zones)."""
    try:
        walls = croniter(expr, start)
        while True:
            yield walls.get_next(datetime)
    except _CRON_ERRORS as exc:
        raise ConfigurationError(f"cron expression {expr!r} has no run after {start}: {exc}") from exc


def format_relative(when: datetime, now: datetime) -> str:
    """Short label of `when` seen from `now`: 'in 3 min', '5 min ago', 'now' (naive = UTC)."""
    delta_s = (to_utc(when) - to_utc(now)).total_seconds()
    size_s = math.floor(abs(delta_s))
    if size_s < 1:
        return "now"
    if size_s < 60:
        text = f"{size_s} s"
    elif size_s < 3600:
        text = f"{size_s // 60} min"
    else:
        text = _two_units(size_s - size_s % (3600 if size_s >= 86400 else 60))
    return f"in {text}" if delta_s > 0 else f"{text} ago"


def format_duration(seconds: float) -> str:
    """Short label of a duration: '250 ms', '4.2 s', '3 min 5 s', '2 h 5 min', '1 d 2 h'."""
    if seconds < 0:
        return f"-{format_duration(-seconds)}"
    if round(seconds * 1000) < 1000:
        return f"{round(seconds * 1000)} ms"
    if round(seconds * 10) < 100:
        return f"{seconds:.1f} s"
    return _two_units(round(seconds))


def _two_units(seconds: int) -> str:
    """Whole `seconds` in the two largest units, the smaller rounded: '3 min 5 s', '1 d 2 h'."""
    for major_s, major, minor_s, minor in ((86400, "d", 3600, "h"), (3600, "h", 60, "min")):
        minors = round(seconds / minor_s)
        if minors * minor_s >= major_s:
            count, rest = divmod(minors, major_s // minor_s)
            return f"{count} {major} {rest} {minor}" if rest else f"{count} {major}"
    count, rest = divmod(seconds, 60)
    if not count:
        return f"{rest} s"
    return f"{count} min {rest} s" if rest else f"{count} min"
