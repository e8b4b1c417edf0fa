"""The one strict decoder of stored records: every field's type, range and size checked before use.

Schedule records, job statuses, worker heartbeats and failed-store headers are written by other
processes (and, with enough permissions, by anyone): a reader decodes them here and gets a
SerializationError naming the record and the field, never a TypeError or RecursionError later in
a loop that must go on. Times are finite UTC seconds within years 1970-9999.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from naq_ipy.errors import SerializationError

TIME_MIN_S = 0.0
TIME_MAX_S = 253402300799.0  # 9999-12-31T23:59:59Z
TEXT_MAX = 1000
LONG_TEXT_MAX = 65536
LIST_MAX = 1000
RECORD_MAX_BYTES = 1 << 20

Check = Callable[[Any], Any]


def decode_object(raw: bytes | str, what: str, max_bytes: int = RECORD_MAX_BYTES) -> dict[str, Any]:
    """A JSON object from `raw`; SerializationError if it is too large, too deep, malformed or not an object."""
    if len(raw) > max_bytes:
        raise SerializationError(f"{what}: {len(raw):,} bytes, over the {max_bytes:,} a record may have")
    try:
        data = json.loads(raw)
    except RecursionError:  # the C decoder stops at the interpreter's depth limit: nested far too deep
        raise SerializationError(f"{what}: nested too deep") from None
    except (ValueError, TypeError) as e:
        raise SerializationError(f"{what}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise SerializationError(f"{what}: not a JSON object")
    return data


def checked(data: Mapping[str, Any], spec: Mapping[str, Check], what: str,
            required: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields of `data` named in `spec`, each passed through its check; unknown fields are dropped."""
    missing = sorted(required - data.keys())
    if missing:
        raise SerializationError(f"{what}: missing {', '.join(missing)}")
    out = {}
    for name, check in spec.items():
        if name in data:
            try:
                out[name] = check(data[name])
            except (TypeError, ValueError) as e:
                raise SerializationError(f"{what}: field {name} {e}") from None
    return out


def decode_checked(raw: bytes | str, spec: Mapping[str, Check], what: str,
                   required: frozenset[str] = frozenset(), max_bytes: int = RECORD_MAX_BYTES) -> dict[str, Any]:
    """`decode_object` then `checked`: the one way a stored JSON record is read."""
    return checked(decode_object(raw, what, max_bytes), spec, what, required)


def optional(check: Check) -> Check:
    """`check`, or None passed through."""
    return lambda value: None if value is None else check(value)


def text(max_length: int = TEXT_MAX) -> Check:
    """A string of at most `max_length` characters."""
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"must be text, got {type(value).__name__}")
        if len(value) > max_length:
            raise ValueError(f"is {len(value):,} characters, over {max_length:,}")
        return value
    return check


def number(low: float, high: float) -> Check:
    """A finite int or float within [low, high] (never a bool)."""
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"must be within {low:g}..{high:g}, got {value!r}")
        return value
    return check


def integer(low: int, high: int) -> Check:
    """An int within [low, high] (never a bool)."""
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"must be an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"must be within {low}..{high}, got {value}")
        return value
    return check


def flag(value: Any) -> bool:
    """A JSON boolean."""
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, got {type(value).__name__}")
    return value


def text_list(max_length: int = TEXT_MAX, max_items: int = LIST_MAX) -> Check:
    """A list of at most `max_items` strings."""
    item = text(max_length)

    def check(value: Any) -> list[str]:
        if not isinstance(value, list):
            raise TypeError(f"must be a list, got {type(value).__name__}")
        if len(value) > max_items:
            raise ValueError(f"has {len(value):,} items, over {max_items:,}")
        return [item(one) for one in value]
    return check


TIMESTAMP = number(TIME_MIN_S, TIME_MAX_S)


def check_timestamp(value: Any, what: str = "time") -> float:
    """`value` as UTC seconds if it is a finite time within years 1970-9999, else ValueError naming `what`."""
    try:
        return float(TIMESTAMP(value))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} {e} (UTC seconds, years 1970-9999)") from None
