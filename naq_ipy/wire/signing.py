"""Signed jobs and records: HMAC-SHA256 with the keys of `ConnectionSettings.signing_keys`.

A signature is `<key id>:<hex HMAC>`; the key id is the first 8 hex digits of sha256(key), so a
reader holding several keys (rotation: the first key signs, any key verifies) picks the right
one at once. Keys (env `NAQ_SIGNING_KEYS`) are never logged, printed, pickled or put into an error.

- Jobs: the HMAC of `naq-job\0<queue>\0<job bytes>` in the `Naq-Signature` message header, so a
  job signed for one queue is refused on another. Whoever holds a key signs: the queue at
  enqueue, the scheduler for every run. A worker with keys refuses unsigned or badly signed
  jobs before reading anything of them (`refusal`).
- Records a client unpickles from (job statuses, which carry small results inline): the
  HMAC of `naq-<kind>\0<key>\0<JSON without its signature>`, appended to the JSON object as
  its last field `"sig"` (`sign_record`); the KV key is inside, so a record copied under another
  job's key fails. A client with keys reads a result only after `record_refusal` said None.
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


def _job_bytes(data: bytes, queue: str) -> bytes:
    return b"naq-job\0" + queue.encode() + b"\0" + data


def signature(data: bytes, key: str, queue: str) -> str:
    """The `Naq-Signature` value of job bytes `data` for `queue`, signed with `key`: `<key id>:<hex HMAC>`."""
    return f"{key_id(key)}:{_mac(key.encode(), _job_bytes(data, queue))}"


def signed_headers(settings: ConnectionSettings, data: bytes, queue: str,
                   headers: dict[str, str] | None = None) -> dict[str, str] | None:
    """`headers` plus the signature of `data` for `queue` by the first key of `settings`; unchanged without keys."""
    if not settings.signing_keys:
        return headers
    return {**(headers or {}), SIGNATURE_HEADER: signature(data, settings.signing_keys[0], queue)}


@lru_cache(maxsize=16)
def _keyring(keys: tuple[str, ...]) -> dict[str, bytes]:
    return {key_id(key): key.encode() for key in reversed(keys)}  # the first key wins an id clash


def _mismatch(value: str, data: bytes, settings: ConnectionSettings) -> str | None:
    """Why `value` (`<key id>:<hex HMAC>`) is not a signature of `data` by a key of `settings`, or None."""
    kid, _, mac = value.partition(":")
    key = _keyring(settings.signing_keys).get(kid)
    if key is None:
        shown = f" {kid}" if _KEY_ID.fullmatch(kid) else ""
        return f"{BAD_SIGNATURE}: signed with unknown key{shown}"
    if not hmac.compare_digest(_mac(key, data).encode(), mac.encode(errors="replace")):
        return BAD_SIGNATURE
    return None


def refusal(data: bytes, headers: Mapping[str, str] | None, settings: ConnectionSettings, queue: str) -> str | None:
    """Why a worker with `settings` must refuse these job bytes from `queue` unread, or None (always without keys)."""
    if not settings.signing_keys:
        return None
    value = (headers or {}).get(SIGNATURE_HEADER)
    if not value:
        return UNSIGNED
    return _mismatch(value, _job_bytes(data, queue), settings)


RECORD_SIGNATURE_FIELD = "sig"
_RECORD_SIGNATURE = re.compile(rb',"sig":"([0-9a-f]{8}:[0-9a-f]{64})"}\Z')


def _record_bytes(kind: str, key: str, body: bytes) -> bytes:
    return b"naq-" + kind.encode() + b"\0" + key.encode() + b"\0" + body


def signer_id(headers: Mapping[str, str] | None) -> str | None:
    """The key id a job message was signed with (None if unsigned): its records are signed with that key too."""
    kid = (headers or {}).get(SIGNATURE_HEADER, "").partition(":")[0]
    return kid if _KEY_ID.fullmatch(kid) else None


def sign_record(settings: ConnectionSettings, kind: str, key: str, body: bytes, prefer: str | None = None) -> bytes:
    """JSON object `body` (stored under `key`) with its signature as last field `"sig"`; unchanged without keys.

    Signed with the key of id `prefer` when held (a job's answer uses the key its client signed
    with: during a rotation, clients holding only the old key still read their results), else the first.
    """
    if not settings.signing_keys or not body.endswith(b"}") or body == b"{}":
        return body
    keyring = _keyring(settings.signing_keys)
    kid = prefer if prefer in keyring else key_id(settings.signing_keys[0])
    value = f"{kid}:{_mac(keyring[kid], _record_bytes(kind, key, body))}"
    return body[:-1] + b',"%s":"%s"}' % (RECORD_SIGNATURE_FIELD.encode(), value.encode())


def record_refusal(settings: ConnectionSettings, kind: str, key: str, raw: bytes) -> str | None:
    """Why a `kind` record read under `key` is not signed by a key of `settings`, or None (always without keys)."""
    if not settings.signing_keys:
        return None
    found = _RECORD_SIGNATURE.search(raw)
    if found is None:
        return f"unsigned {kind} record"
    body = raw[:found.start()] + b"}"
    return _mismatch(found.group(1).decode(), _record_bytes(kind, key, body), settings)
