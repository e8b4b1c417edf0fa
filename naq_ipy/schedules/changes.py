"""Pure rules for `modify_scheduled_job`: which fields may change and what follows from a change."""

from __future__ import annotations

import time
from typing import Any

from naq_ipy.client.job import rewrite_header, validate_max_retries
from naq_ipy.errors import ConfigurationError
from naq_ipy.rules.retry import retry_delay_to_json, validate_retry_delay
from naq_ipy.rules.times import parse_duration, to_timestamp
from naq_ipy.schedules.record import ScheduledJob, validate_interval, validate_misfire, validate_repeat, validate_timing
from naq_ipy.wire.settings import validate_queue_name

MODIFIABLE = frozenset(
    {"cron", "interval", "repeat", "next_run", "tz", "misfire", "queue", "max_retries", "retry_delay", "timeout"}
)


def _timing(record: ScheduledJob, updates: dict[str, Any]) -> dict[str, Any]:
    """New schedule type / cron / tz / interval, validated together."""
    if "cron" in updates and "interval" in updates and updates["cron"] and updates["interval"]:
        raise ConfigurationError("give exactly one of cron or interval")
    if updates.get("cron"):
        cron, interval_s, tz = updates["cron"], None, updates.get("tz", record.tz)
    elif updates.get("interval") is not None:
        cron, interval_s, tz = None, validate_interval(updates["interval"]), None
        if "tz" in updates and updates["tz"]:
            raise ConfigurationError("tz applies to cron schedules only")
    else:
        cron, interval_s, tz = record.cron, record.interval_s, updates.get("tz", record.tz)
    if record.schedule_type == "once" and cron is None and interval_s is None:
        if updates.get("tz"):
            raise ConfigurationError("tz applies to cron schedules only")
        return {}
    kind = validate_timing(cron=cron, interval_s=interval_s, tz=tz, repeat=None)
    return {"schedule_type": kind, "cron": cron, "interval_s": interval_s, "tz": tz}


def _job_header(record: ScheduledJob, updates: dict[str, Any]) -> dict[str, Any]:
    """Changes to the stored job's header (queue, retries, timeout)."""
    header: dict[str, Any] = {}
    if "queue" in updates:
        header["queue_name"] = validate_queue_name(updates["queue"])
    if "max_retries" in updates:
        header["max_retries"] = validate_max_retries(updates["max_retries"])
    if "retry_delay" in updates:
        header["retry_delay"] = retry_delay_to_json(validate_retry_delay(updates["retry_delay"]))
    if "timeout" in updates:
        timeout = None if updates["timeout"] is None else parse_duration(updates["timeout"])
        if timeout == 0:  # a Job refuses timeout 0: the stored job would become unreadable
            raise ConfigurationError("timeout must be a positive duration or None")
        header["timeout"] = timeout
    return header


def _timing_key(values: dict[str, Any]) -> tuple[Any, ...]:
    return values["schedule_type"], values["cron"], values["interval_s"], values["tz"]


def apply_updates(record: ScheduledJob, updates: dict[str, Any]) -> ScheduledJob:
    """`record` with `updates` applied; ConfigurationError for unknown keys or bad values."""
    unknown = set(updates) - MODIFIABLE
    if unknown:
        raise ConfigurationError(
            f"cannot modify {', '.join(sorted(unknown))}; modifiable: {', '.join(sorted(MODIFIABLE))}"
        )
    changes: dict[str, Any] = _timing(record, updates)
    if "repeat" in updates:
        changes["repeat"] = validate_repeat(updates["repeat"])
    if "misfire" in updates:
        changes["misfire"] = validate_misfire(updates["misfire"])
    header = _job_header(record, updates)
    if header:
        changes["job_data"] = rewrite_header(record.job_data, **header)
        changes["queue_name"] = header.get("queue_name", record.queue_name)
    if updates.get("next_run") is not None:
        changes["next_run_utc"] = to_timestamp(updates["next_run"])
    elif "schedule_type" in changes and _timing_key(changes) != _timing_key(vars(record)):
        probe = record.evolve(**changes)
        changes["next_run_utc"] = probe.next_after(time.time()) or record.next_run_utc
    return record.evolve(**changes)
