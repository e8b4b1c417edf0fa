"""Signed jobs: an HMAC-SHA256 over a job's wire bytes, carried in the `Naq-Signature` message header.

The header is `<key id>:<hex HMAC>`; the key id is the first 8 hex digits of sha256(key), so a
worker holding several keys (rotation: the first key signs, any key verifies) picks the right
one at once. Keys live in `ConnectionSettings.signing_keys` (env `NAQ_SIGNING_KEYS`); they are
never logged, printed or put into an error. Whoever holds a key signs: the queue at enqueue,
the scheduler for every run it publishes. A worker with keys refuses unsigned or badly signed
jobs before reading anything of them (see `refusal`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from functools import lru_cache

from naq_ipy.wire.names import SIGNATURE_HEADER
from naq_ipy.wire.settings import ConnectionSettings

UNSIGNED = "unsigned job"
BAD_SIGNATURE = "bad signature"
_KEY_ID = re.compile(r"[0-9a-f]{8}")


def key_id(key: str) -> str:
    """The public id of a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def _mac(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def signature(data: bytes, key: str) -> str:
    """The `Naq-Signature` value of `data` signed with `key`: `<key id>:<hex HMAC-SHA256>`."""
    return f"{key_id(key)}:{_mac(key.encode(), data)}"


def signed_headers(settings: ConnectionSettings, data: bytes,
                   headers: dict[str, str] | None = None) -> dict[str, str] | None:
    """`headers` plus the signature of `data` by the first key of `settings`; unchanged without keys."""
    if not settings.signing_keys:
        return headers
    return {**(headers or {}), SIGNATURE_HEADER: signature(data, settings.signing_keys[0])}


@lru_cache(maxsize=16)
def _keyring(keys: tuple[str, ...]) -> dict[str, bytes]:
    return {key_id(key): key.encode() for key in reversed(keys)}  # the first key wins an id clash


def refusal(data: bytes, headers: Mapping[str, str] | None, settings: ConnectionSettings) -> str | None:
    """Why a worker with `settings` must refuse these job bytes unread, or None (always None without keys)."""
    if not settings.signing_keys:
        return None
    value = (headers or {}).get(SIGNATURE_HEADER)
    if not value:
        return UNSIGNED
    kid, _, mac = value.partition(":")
    key = _keyring(settings.signing_keys).get(kid)
    if key is None:
        shown = f" {kid}" if _KEY_ID.fullmatch(kid) else ""
        return f"{BAD_SIGNATURE}: signed with unknown key{shown}"
    if not hmac.compare_digest(_mac(key, data).encode(), mac.encode(errors="replace")):
        return BAD_SIGNATURE
    return None
