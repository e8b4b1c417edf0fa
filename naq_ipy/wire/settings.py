"""Wire names and connection settings: every subject, stream and bucket name lives here."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from naq_ipy.errors import ConfigurationError

NAQ_PREFIX = "naq"
DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_QUEUE_NAME = "default"
JOB_STREAM_NAME = f"{NAQ_PREFIX}_jobs"
QUEUE_SUBJECT_PREFIX = f"{NAQ_PREFIX}.queue"
FAILED_STREAM_NAME = f"{NAQ_PREFIX}_failed_jobs"
FAILED_SUBJECT_PREFIX = f"{NAQ_PREFIX}.failed"
SCHEDULED_JOBS_KV_NAME = f"{NAQ_PREFIX}_scheduled_jobs"
JOB_STATUS_KV_NAME = f"{NAQ_PREFIX}_job_status"
RESULTS_KV_NAME = f"{NAQ_PREFIX}_results"
WORKERS_KV_NAME = f"{NAQ_PREFIX}_workers"
SCHEDULER_CLOCK_KV_NAME = f"{NAQ_PREFIX}_scheduler_clock"
WORKER_DURABLE_PREFIX = f"{NAQ_PREFIX}-worker-"
LOGS_STREAM_NAME = f"{NAQ_PREFIX}_job_logs"  # a job's captured stdout/stderr/logging, in batches
LOGS_SUBJECT_PREFIX = f"{NAQ_PREFIX}.logs"
OUTPUT_STREAM_HEADER = "Naq-Output"  # which stream a batch of output came from: `stdout` or `stderr`
SIGNATURE_HEADER = "Naq-Signature"  # `<key id>:<hex HMAC-SHA256 of the job bytes>`, see naq_ipy.wire.signing

SCHEDULED_JOB_STATUS_ACTIVE = "active"
SCHEDULED_JOB_STATUS_PAUSED = "paused"
JOB_SERIALIZER = "cloudpickle"

DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_RESULT_TTL_S = 7 * 24 * 3600.0
DUPLICATE_WINDOW_S = 600.0

_QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_=-][A-Za-z0-9_=.-]{0,199}$")


def validate_queue_name(name: str) -> str:
    """Return `name` if it is one NATS subject token (letters, digits, `_`, `-`), else raise."""
    if not isinstance(name, str) or not _QUEUE_NAME_RE.match(name):
        raise ConfigurationError(
            f"invalid queue name {name!r}: use 1-64 letters, digits, '_' or '-' (no dots or spaces)"
        )
    return name


def validate_key(name: str, what: str = "schedule name") -> str:
    """Return `name` if it can be a KV key (letters, digits, `_ - = .`), else raise."""
    if not isinstance(name, str) or not _KEY_RE.match(name) or name.endswith(".") or ".." in name:
        raise ConfigurationError(
            f"invalid {what} {name!r}: use letters, digits, '_', '-', '=' or '.' (max 200)"
        )
    return name


def queue_subject(queue_name: str) -> str:
    """The subject jobs of `queue_name` are published on: `naq.queue.<name>`."""
    return f"{QUEUE_SUBJECT_PREFIX}.{validate_queue_name(queue_name)}"


def logs_subject(job_id: str) -> str:
    """The subject a job's output is published on: `naq.logs.<job_id>`."""
    return f"{LOGS_SUBJECT_PREFIX}.{validate_key(job_id, 'job id')}"


def redact_url(url: str) -> str:
    """`url` with any user, password or token replaced by `***`, safe for logs and errors."""
    parts = []
    for one in url.split(","):
        split = urlsplit(one.strip())
        if split.username or split.password:
            host = split.hostname or ""
            netloc = f"***@{host}" + (f":{split.port}" if split.port else "")
            one = urlunsplit(split._replace(netloc=netloc))
        parts.append(one.strip())
    return ",".join(parts)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as e:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from e


def parse_signing_keys(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Signing keys from a comma-separated string or a sequence; blanks dropped, the first one signs."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    if not all(isinstance(item, str) for item in items):
        raise ConfigurationError("signing keys must be strings")
    return tuple(item.strip() for item in items if item.strip())


@dataclass(frozen=True)
class ConnectionSettings:
    """How to reach NATS; hashable so connections can be pooled by it. Secrets never print."""

    url: str = DEFAULT_URL
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    credentials_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    replicas: int = 1
    signing_keys: tuple[str, ...] = field(default=(), repr=False)  # job HMAC keys: the first signs, any verifies

    def __post_init__(self) -> None:
        object.__setattr__(self, "signing_keys", parse_signing_keys(self.signing_keys))

    @classmethod
    def resolve(cls, url: str | ConnectionSettings | None = None, **overrides: Any) -> ConnectionSettings:
        """Settings from an explicit URL, else env `NAQ_URL`, else the local default.

        Auth comes from keyword overrides or env (`NAQ_USER`, `NAQ_PASSWORD`, `NAQ_TOKEN`,
        `NAQ_CREDS`, `NAQ_TLS_CA`, `NAQ_TLS_CERT`, `NAQ_TLS_KEY`, `NAQ_REPLICAS`,
        `NAQ_CONNECT_TIMEOUT`). Job signing keys: `signing_key=` (a key or a list) or env
        `NAQ_SIGNING_KEYS` (comma-separated: the first signs, any verifies) / `NAQ_SIGNING_KEY`.
        """
        if isinstance(url, ConnectionSettings):
            return url
        env = os.environ
        values: dict[str, Any] = {
            "url": url or env.get("NAQ_URL") or DEFAULT_URL,
            "user": env.get("NAQ_USER") or None,
            "password": env.get("NAQ_PASSWORD") or None,
            "token": env.get("NAQ_TOKEN") or None,
            "credentials_file": env.get("NAQ_CREDS") or None,
            "tls_ca_file": env.get("NAQ_TLS_CA") or None,
            "tls_cert_file": env.get("NAQ_TLS_CERT") or None,
            "tls_key_file": env.get("NAQ_TLS_KEY") or None,
            "connect_timeout_s": _env_float("NAQ_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S),
            "replicas": int(_env_float("NAQ_REPLICAS", 1)),
            "signing_keys": env.get("NAQ_SIGNING_KEYS") or env.get("NAQ_SIGNING_KEY") or (),
        }
        if "signing_key" in overrides:
            overrides["signing_keys"] = overrides.pop("signing_key")
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.replicas < 1:
            raise ConfigurationError(f"replicas must be >= 1, got {settings.replicas}")
        return settings

    def __repr__(self) -> str:
        # the URL itself may carry `user:password@` or a token: show it redacted
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr and f.name != "url")
        return f"ConnectionSettings(url={self.safe_url!r}, {shown})"

    @property
    def servers(self) -> list[str]:
        """The server URLs, from a comma-separated `url`."""
        return [u.strip() for u in self.url.split(",") if u.strip()]

    @property
    def safe_url(self) -> str:
        """The URL with credentials removed, for messages."""
        return redact_url(self.url)
