"""Retry delays of a job: fixed seconds, a per-retry list, or exponential backoff; text and JSON forms."""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, TypeAlias

from naq_ipy.errors import ConfigurationError
from naq_ipy.rules.times import parse_duration

_RNG = random.Random()
_TEXT_FORMS = "seconds ('10', '30s'), a list ('5,30,120', '5s,1m') or 'exp:BASE[:MAX[:FACTOR]][:jitter]' ('exp:2:300')"


@dataclass(frozen=True)
class ExponentialBackoff:
    """Delay `base_s * factor ** (n - 1)` before retry n, capped at `max_s`; jitter draws in [delay/2, delay]."""

    base_s: float = 1.0
    max_s: float = 300.0
    factor: float = 2.0
    jitter: bool = False

    def __post_init__(self) -> None:
        base_s, max_s, factor = (_finite_float(value) for value in (self.base_s, self.max_s, self.factor))
        if base_s is None or base_s <= 0:
            raise ConfigurationError(f"invalid backoff base_s {self.base_s!r}: must be a number > 0")
        if max_s is None or max_s < base_s:
            raise ConfigurationError(f"invalid backoff max_s {self.max_s!r}: must be a number >= base_s")
        if factor is None or factor < 1:
            raise ConfigurationError(f"invalid backoff factor {self.factor!r}: must be a number >= 1")
        if not isinstance(self.jitter, bool):
            raise ConfigurationError(f"invalid backoff jitter {self.jitter!r}: must be True or False")

    def delay_s(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry `retry_number` (1-based); `rng` drives the jitter."""
        _check_retry_number(retry_number)
        try:
            delay = min(float(self.max_s), float(self.base_s) * float(self.factor) ** (retry_number - 1))
        except OverflowError:
            delay = float(self.max_s)
        return (rng or _RNG).uniform(delay / 2, delay) if self.jitter else delay


RetryDelay: TypeAlias = float | int | Sequence[float] | ExponentialBackoff
NormalRetryDelay: TypeAlias = float | tuple[float, ...] | ExponentialBackoff


def _finite_float(value: object) -> float | None:
    """`value` as a finite float, or None if it is not a finite real number (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _check_retry_number(retry_number: int) -> None:
    """Raise unless `retry_number` is an int >= 1."""
    if isinstance(retry_number, bool) or not isinstance(retry_number, int) or retry_number < 1:
        raise ConfigurationError(f"invalid retry number {retry_number!r}: must be an int >= 1")


def _seconds(value: object, spec: object) -> float:
    """`value` (seconds or a timedelta) as float seconds >= 0, else raise naming `spec`."""
    seconds = _finite_float(value.total_seconds() if isinstance(value, timedelta) else value)
    if seconds is None or seconds < 0:
        raise ConfigurationError(
            f"invalid retry delay {spec!r}: expected seconds >= 0, a non-empty list of them, or ExponentialBackoff"
        )
    return seconds


def validate_retry_delay(spec: object) -> NormalRetryDelay:
    """`spec` normalised: seconds as a float, a list as a tuple of floats, or the ExponentialBackoff."""
    if type(spec) is float and 0 <= spec < math.inf:  # the common case, checked on every job: skip the ABCs
        return spec
    if isinstance(spec, ExponentialBackoff):
        return spec
    if isinstance(spec, list | tuple):
        if not spec:
            raise ConfigurationError(f"invalid retry delay {spec!r}: the list of delays is empty")
        return tuple(_seconds(item, spec) for item in spec)
    return _seconds(spec, spec)


def retry_delay_s(spec: RetryDelay, retry_number: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry `retry_number` (1-based); a list's last item repeats."""
    _check_retry_number(retry_number)
    spec = validate_retry_delay(spec)
    if isinstance(spec, ExponentialBackoff):
        return spec.delay_s(retry_number, rng)
    if isinstance(spec, tuple):
        return spec[min(retry_number, len(spec)) - 1]
    return spec


def parse_retry_delay(text: str) -> NormalRetryDelay:
    """A retry delay from text: '10', '5,30,120', '5s,1m', 'exp:2', 'exp:2:300', 'exp:2:300:jitter'."""
    if not isinstance(text, str):
        raise _text_error(text)
    lowered = text.strip().lower()
    if lowered == "exp" or lowered.startswith("exp:"):
        return _parse_backoff(text, lowered.split(":")[1:])
    delays = tuple(_item_s(item, text) for item in lowered.split(","))
    return delays[0] if len(delays) == 1 else delays


def _parse_backoff(text: str, parts: list[str]) -> ExponentialBackoff:
    """ExponentialBackoff from the parts after 'exp:': BASE, MAX, FACTOR (each optional), then 'jitter'."""
    jitter = bool(parts) and parts[-1].strip() == "jitter"
    values = [_item_s(part, text) for part in (parts[:-1] if jitter else parts)]
    if len(values) > 3:
        raise _text_error(text)
    try:
        return ExponentialBackoff(jitter=jitter, **dict(zip(("base_s", "max_s", "factor"), values, strict=False)))
    except ConfigurationError as exc:
        raise ConfigurationError(f"invalid retry delay {text!r}: {exc}") from exc


def _item_s(item: str, text: str) -> float:
    """Seconds in one item of a retry-delay text, else raise naming the whole text."""
    try:
        return parse_duration(item)
    except ConfigurationError as exc:
        raise _text_error(text) from exc


def _text_error(text: object) -> ConfigurationError:
    """The one error for unreadable retry-delay text."""
    return ConfigurationError(f"invalid retry delay {text!r}: expected {_TEXT_FORMS}")


def retry_delay_to_json(spec: RetryDelay) -> float | list[float] | dict[str, dict[str, Any]]:
    """The JSON form of a retry delay: a number, a list, or {"exp": {base_s, max_s, factor, jitter}}."""
    spec = validate_retry_delay(spec)
    if isinstance(spec, ExponentialBackoff):
        return {"exp": asdict(spec)}
    return list(spec) if isinstance(spec, tuple) else spec


def retry_delay_from_json(value: object) -> NormalRetryDelay:
    """A retry delay from its JSON form (see `retry_delay_to_json`)."""
    if not isinstance(value, dict):
        return validate_retry_delay(value)
    fields = value.get("exp") if len(value) == 1 else None
    if not isinstance(fields, dict):
        raise ConfigurationError(f'invalid retry delay {value!r}: expected {{"exp": {{backoff fields}}}}')
    try:
        return ExponentialBackoff(**fields)
    except TypeError as exc:
        raise ConfigurationError(f"invalid retry delay {value!r}: {exc}") from exc
