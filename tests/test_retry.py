"""Retry delays: validation, the n-th delay, text and JSON forms."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import timedelta

import pytest

from naq_ipy.errors import ConfigurationError
from naq_ipy.rules.retry import (
    ExponentialBackoff,
    parse_retry_delay,
    retry_delay_from_json,
    retry_delay_s,
    retry_delay_to_json,
    validate_retry_delay,
)

# ---- ExponentialBackoff ---------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = ExponentialBackoff(base_s=2, max_s=20)
    assert [backoff.delay_s(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, 20.0]


def test_backoff_defaults_and_huge_retry_numbers() -> None:
    backoff = ExponentialBackoff()
    assert (backoff.base_s, backoff.max_s, backoff.factor, backoff.jitter) == (1.0, 300.0, 2.0, False)
    assert backoff.delay_s(1) == 1.0
    assert backoff.delay_s(100_000) == 300.0
    assert ExponentialBackoff(base_s=5, max_s=60, factor=1).delay_s(50) == 5.0


def test_backoff_jitter_stays_in_the_upper_half() -> None:
    backoff = ExponentialBackoff(base_s=10, max_s=100, jitter=True)
    rng = random.Random(7)
    delays = [backoff.delay_s(3, rng) for _ in range(200)]
    assert all(20.0 <= delay <= 40.0 for delay in delays)
    assert len(set(delays)) > 100
    assert backoff.delay_s(3, random.Random(1)) == backoff.delay_s(3, random.Random(1))
    assert 20.0 <= backoff.delay_s(3) <= 40.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base_s": 0}, "base_s"),
        ({"base_s": -1}, "base_s"),
        ({"base_s": float("nan")}, "base_s"),
        ({"base_s": True}, "base_s"),
        ({"base_s": "1"}, "base_s"),
        ({"base_s": 10, "max_s": 5}, "max_s"),
        ({"max_s": float("inf")}, "max_s"),
        ({"factor": 0.5}, "factor"),
        ({"factor": None}, "factor"),
        ({"jitter": 1}, "jitter"),
    ],
)
def test_backoff_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=f"invalid backoff {field}"):
        ExponentialBackoff(**kwargs)  # type: ignore[arg-type]


def test_backoff_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ExponentialBackoff().base_s = 3  # type: ignore[misc]


# ---- validate_retry_delay / retry_delay_s -------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "normal"),
    [
        (0, 0.0),
        (10, 10.0),
        (2.5, 2.5),
        (timedelta(minutes=1), 60.0),
        ([5, 30, 120], (5.0, 30.0, 120.0)),
        ((1.5,), (1.5,)),
        (ExponentialBackoff(2, 60), ExponentialBackoff(2, 60)),
    ],
)
def test_validate_retry_delay_normalises(spec: object, normal: object) -> None:
    result = validate_retry_delay(spec)
    assert result == normal
    assert type(result) is type(normal)


@pytest.mark.parametrize(
    "spec", [-1, float("nan"), float("inf"), True, [], [1, -2], [1, True], ["5"], "10", None, {"exp": {}}, 10**400]
)
def test_validate_retry_delay_rejects(spec: object) -> None:
    with pytest.raises(ConfigurationError, match="invalid retry delay"):
        validate_retry_delay(spec)


def test_retry_delay_s_for_each_form() -> None:
    assert retry_delay_s(7, 1) == retry_delay_s(7, 9) == 7.0
    assert [retry_delay_s([5, 30, 120], n) for n in range(1, 6)] == [5.0, 30.0, 120.0, 120.0, 120.0]
    assert retry_delay_s(ExponentialBackoff(3, 10), 2) == 6.0
    rng = random.Random(3)
    assert 3.0 <= retry_delay_s(ExponentialBackoff(3, 10, jitter=True), 2, rng) <= 6.0


@pytest.mark.parametrize("retry_number", [0, -1, True, 1.0, None])
def test_retry_delay_s_rejects_bad_retry_numbers(retry_number: object) -> None:
    with pytest.raises(ConfigurationError, match="invalid retry number"):
        retry_delay_s(5, retry_number)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="invalid retry number"):
        ExponentialBackoff().delay_s(retry_number)  # type: ignore[arg-type]


# ---- parse_retry_delay -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("10", 10.0),
        (" 2.5 ", 2.5),
        ("30s", 30.0),
        ("5,30,120", (5.0, 30.0, 120.0)),
        ("5s, 1m, 1h", (5.0, 60.0, 3600.0)),
        ("exp:2:300", ExponentialBackoff(2, 300)),
        ("exp:2:300:jitter", ExponentialBackoff(2, 300, jitter=True)),
        ("exp:2", ExponentialBackoff(2)),
        ("EXP:1s:5m:3", ExponentialBackoff(1, 300, 3)),
        ("exp", ExponentialBackoff()),
        ("exp:jitter", ExponentialBackoff(jitter=True)),
    ],
)
def test_parse_retry_delay(text: str, spec: object) -> None:
    assert parse_retry_delay(text) == spec


@pytest.mark.parametrize(
    "text", ["", "abc", "5,", ",5", "5,,30", "-5", "exp:", "exp:x", "exp:1:2:3:4", "exp:2:300:jit", "expo:2", "5;30"]
)
def test_parse_retry_delay_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_retry_delay(text)
    message = str(info.value)
    assert message.startswith(f"invalid retry delay {text!r}: expected ")
    assert "'5,30,120'" in message and "exp:BASE" in message and "\n" not in message


def test_parse_retry_delay_reports_bad_backoff_values() -> None:
    with pytest.raises(ConfigurationError, match=r"invalid retry delay 'exp:10:5': invalid backoff max_s"):
        parse_retry_delay("exp:10:5")
    with pytest.raises(ConfigurationError, match="invalid backoff base_s"):
        parse_retry_delay("exp:0")


def test_parse_retry_delay_rejects_non_text() -> None:
    with pytest.raises(ConfigurationError, match="invalid retry delay 5"):
        parse_retry_delay(5)  # type: ignore[arg-type]


# ---- JSON -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "json_form"),
    [
        (10, 10.0),
        (0.5, 0.5),
        ([5, 30], [5.0, 30.0]),
        (
            ExponentialBackoff(2.0, 300.0, 3.0, True),
            {"exp": {"base_s": 2.0, "max_s": 300.0, "factor": 3.0, "jitter": True}},
        ),
    ],
)
def test_json_round_trip(spec: object, json_form: object) -> None:
    assert retry_delay_to_json(spec) == json_form  # type: ignore[arg-type]
    decoded = retry_delay_from_json(json.loads(json.dumps(retry_delay_to_json(spec))))  # type: ignore[arg-type]
    assert decoded == validate_retry_delay(spec)
    assert retry_delay_to_json(decoded) == json_form


@pytest.mark.parametrize(
    "value",
    [{"exp": 5}, {"fixed": {}}, {"exp": {}, "x": 1}, {"exp": {"bogus": 1}}, {"exp": {"base_s": -1}}, "10", True, None],
)
def test_retry_delay_from_json_rejects(value: object) -> None:
    with pytest.raises(ConfigurationError, match="invalid"):
        retry_delay_from_json(value)


def test_retry_delay_to_json_rejects_invalid_specs() -> None:
    with pytest.raises(ConfigurationError, match="invalid retry delay"):
        retry_delay_to_json(-3)
