"""Connection settings and the validators of names users give (queue names, keys); wire names: `names`."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from naq_ipy.errors import ConfigurationError

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_QUEUE_NAME = "default"
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_RESULT_TTL_S = 7 * 24 * 3600.0
# the failed-jobs store's limits (oldest entries go first): settings `failed_max_bytes` / `failed_max_age_s`
DEFAULT_FAILED_MAX_BYTES = 1 << 30
DEFAULT_FAILED_MAX_AGE_S = 30 * 24 * 3600.0

QUEUE_NAME_MAX = 64
KEY_MAX = 200
# a schedule's run ids are `<name>.<13-digit ms>` and `<name>.now-<13-digit ms>`: they must stay keys too
SCHEDULE_NAME_MAX = KEY_MAX - len(".now-") - 13
# whole-string patterns (fullmatch: `$` would let a trailing newline through); never a leading `-`,
# which a command line would read as an option
_QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_KEY_RE = re.compile(r"[A-Za-z0-9_=][A-Za-z0-9_=.-]*")


def validate_queue_name(name: str) -> str:
    """Return `name` if it is one NATS subject token (letters, digits, `_`, `-`; not `-` first), else raise."""
    if not isinstance(name, str) or len(name) > QUEUE_NAME_MAX or not _QUEUE_NAME_RE.fullmatch(name):
        raise ConfigurationError(
            f"invalid queue name {name!r}: use 1-{QUEUE_NAME_MAX} letters, digits, '_' or '-' "
            "(not '-' first; no dots or spaces)"
        )
    return name


def validate_key(name: str, what: str = "schedule name", max_length: int = KEY_MAX) -> str:
    """Return `name` if it can be a KV key (letters, digits, `_ - = .`; not `-` or `.` first), else raise."""
    if (not isinstance(name, str) or len(name) > max_length or not _KEY_RE.fullmatch(name) or name.endswith(".")
            or ".." in name):
        raise ConfigurationError(
            f"invalid {what} {name!r}: use letters, digits, '_', '-', '=' or '.' (max {max_length}, not '-' first)"
        )
    return name


def validate_schedule_name(name: str) -> str:
    """A schedule name: a key short enough that its run ids (`<name>.now-<ms>`) are keys as well."""
    return validate_key(name, "schedule name", SCHEDULE_NAME_MAX)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _without_userinfo(url: str, replacement: str) -> str:
    """Each server of `url` with everything before its last `@` (user, password, token) replaced.

    Not `urlsplit`: a password with a raw `/`, `?` or `#` would end its netloc early and leak the
    rest, and a URL without a scheme has no netloc at all.
    """
    parts = []
    for one in url.split(","):
        one = one.strip()
        scheme = _SCHEME.match(one)
        start = scheme.end() if scheme else 0
        at = one.rfind("@", start)
        parts.append(one if at < 0 else one[:start] + replacement + one[at + 1:])
    return ",".join(parts)


def redact_url(url: str) -> str:
    """`url` with any user, password or token replaced by `***`, safe for logs, reprs and errors."""
    return _without_userinfo(url, "***@")


def strip_credentials(url: str) -> str:
    """`url` with any user, password or token removed: the server's address only."""
    return _without_userinfo(url, "")


@dataclass(frozen=True)
class UrlOverride:
    """The URL of calls given none, set for the whole process (by the IPython extension).

    `instead_of=None`: always (a URL the user configured, e.g. `%config NaqMagics.url`); else only
    while the URL they would use otherwise (`$NAQ_URL`, else `DEFAULT_URL`) is `instead_of` — a
    local server standing in for that address.
    """

    url: str
    instead_of: str | None = None


_url_override: UrlOverride | None = None


def set_default_url(url: str, *, instead_of: str | None = None) -> None:
    """Make calls given no URL use `url`: always, or with `instead_of` only in place of that URL."""
    global _url_override
    _url_override = UrlOverride(url, instead_of)


def clear_default_url() -> None:
    """Forget the process's URL override: calls given no URL use `$NAQ_URL`, else `DEFAULT_URL`."""
    global _url_override
    _url_override = None


def default_url() -> str:
    """The URL of a call given none: configured override > `$NAQ_URL` > stand-in > `DEFAULT_URL`."""
    override = _url_override
    fallback = os.environ.get("NAQ_URL") or DEFAULT_URL
    if override is not None and override.instead_of in (None, fallback):
        return override.url
    return fallback


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
    failed_max_bytes: int = DEFAULT_FAILED_MAX_BYTES  # size limit of a new failed-jobs store (oldest go first)
    failed_max_age_s: float = DEFAULT_FAILED_MAX_AGE_S  # age limit of a new failed-jobs store's entries

    def __post_init__(self) -> None:
        object.__setattr__(self, "signing_keys", parse_signing_keys(self.signing_keys))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle a reference to the server only: its address and options, never a credential or key.

        Settings travel inside every pickled Queue and Job (a job's argument, a result that holds
        jobs): the process that unpickles them resolves user, password, token, creds file and
        signing keys from its own environment (`resolve`).
        """
        kept = {name: getattr(self, name) for name in _REFERENCE_FIELDS}
        return _settings_from_reference, (strip_credentials(self.url), kept)

    def __copy__(self) -> ConnectionSettings:
        return self  # immutable; and `copy` would otherwise go through `__reduce__`, losing the credentials

    def __deepcopy__(self, memo: dict[int, Any]) -> ConnectionSettings:
        return self

    @classmethod
    def resolve(cls, url: str | ConnectionSettings | None = None, **overrides: Any) -> ConnectionSettings:
        """Settings from an explicit URL, else `default_url()` (`$NAQ_URL`, the kernel's, the local default).

        Auth comes from keyword overrides or env (`NAQ_USER`, `NAQ_PASSWORD`, `NAQ_TOKEN`,
        `NAQ_CREDS`, `NAQ_TLS_CA`, `NAQ_TLS_CERT`, `NAQ_TLS_KEY`, `NAQ_REPLICAS`,
        `NAQ_CONNECT_TIMEOUT`). Job signing keys: `signing_key=` (a key or a list) or env
        `NAQ_SIGNING_KEYS` (comma-separated: the first signs, any verifies) / `NAQ_SIGNING_KEY`.
        Failed-jobs store limits: `NAQ_FAILED_MAX_BYTES`, `NAQ_FAILED_MAX_AGE` (seconds).
        """
        if isinstance(url, ConnectionSettings):
            return url
        env = os.environ
        values: dict[str, Any] = {
            "url": url or default_url(),
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
            "failed_max_bytes": int(_env_float("NAQ_FAILED_MAX_BYTES", DEFAULT_FAILED_MAX_BYTES)),
            "failed_max_age_s": _env_float("NAQ_FAILED_MAX_AGE", DEFAULT_FAILED_MAX_AGE_S),
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


# what a pickled ConnectionSettings keeps: no user, password, token, creds file or signing key
_REFERENCE_FIELDS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "connect_timeout_s", "replicas",
                     "failed_max_bytes", "failed_max_age_s")


def _settings_from_reference(url: str, kept: dict[str, Any]) -> ConnectionSettings:
    """Unpickle settings: the pickled server address, credentials and keys from this process's environment."""
    return ConnectionSettings.resolve(url, **kept)
