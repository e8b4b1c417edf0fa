"""Large values in the JetStream Object Store `naq_payloads`: content-addressed, streamed, verified.

An object is named by its content, `sha256-<hex>`, so a value stored by many jobs exists once.
The layout is the NATS Object Store's own (chunks on `$O.<bucket>.C.<nuid>`, a JSON meta
message on `$O.<bucket>.M.<base64 name>`), so `nats object` tools read it, but both ways
are done here: a write pipelines its chunks straight from the caller's memory (no joined copy),
then writes the meta only over the one it looked up (two writers of one value leave one object); a
read takes the meta by direct get and then the chunks (naq_ipy.wire.payload_chunks) into a
preallocated buffer (nats-py's `get` grows a bytes object and is quadratic). Every read checks
size and digest before anything uses it.

The meta carries `Naq-Keep-Until` (unix seconds): the sweep (naq_ipy.status.payload_sweep)
never removes an object before that, and never one a queued job or a schedule refers to.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import mmap
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.js.errors
from nats.js import api

from naq_ipy.errors import ConflictError, RefusedError, SerializationError
from naq_ipy.wire import direct_get
from naq_ipy.wire.connection import Connection, nats_errors, publish
from naq_ipy.wire.names import (
    EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
    PAYLOAD_BUCKET_NAME,
    PAYLOAD_KEEP_UNTIL_HEADER,
    PAYLOAD_NAME_PREFIX,
    PAYLOAD_STREAM_NAME,
    ROLLUP_HEADER,
    is_wrong_last_sequence,
    payload_chunk_subject,
    payload_meta_subject,
    payload_subjects,
)
from naq_ipy.wire.payload_chunks import read_chunks, transfer_timeout_s
from naq_ipy.wire.publish import publish_many

logger = logging.getLogger(__name__)

CHUNK_BYTES = 512 * 1024  # nats-py writes 128 KiB; fewer, larger messages read faster (any size reads back)
NAME_PREFIX = PAYLOAD_NAME_PREFIX
KEEP_UNTIL_HEADER = PAYLOAD_KEEP_UNTIL_HEADER
STREAM_NAME = PAYLOAD_STREAM_NAME
IN_FLIGHT_BYTES = 32 * 2**20  # chunks sent ahead of their acks (the server refuses far more: "too many requests")
_MMAP_MIN_BYTES = 2**20
_STORE_ATTEMPTS = 5


@dataclass(frozen=True)
class PayloadRef:
    """One stored object: its name `sha256-<hex>` (the digest) and size in bytes."""

    name: str
    size: int

    @property
    def digest(self) -> str:
        """The hex SHA-256 of the content."""
        return self.name.removeprefix(NAME_PREFIX)

    def to_json(self) -> list[object]:
        """The form carried in job headers and status records: `[name, size]`."""
        return [self.name, self.size]

    @classmethod
    def from_json(cls, value: object) -> PayloadRef:
        """A ref from its JSON form `[name, size]`; SerializationError for anything else."""
        if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str)
                or not value[0].startswith(NAME_PREFIX) or len(value[0]) != len(NAME_PREFIX) + 64
                or not isinstance(value[1], int) or isinstance(value[1], bool) or value[1] < 0):
            raise SerializationError(f"invalid payload reference {value!r}")
        return cls(value[0], value[1])


async def ensure_bucket(conn: Connection) -> None:
    """Create the payload bucket if missing (an existing one, with its limits, is kept as it is)."""

    async def create() -> None:
        with contextlib.suppress(nats.js.errors.BadRequestError):  # created concurrently: fine
            await conn.js.create_object_store(PAYLOAD_BUCKET_NAME, config=api.ObjectStoreConfig(
                description="naq job arguments and results",
                storage=api.StorageType.FILE, replicas=conn.settings.replicas))

    await conn.ensure_stream(STREAM_NAME, create=create)


@dataclass(frozen=True)
class Stored:
    """An object's meta subject: its record (None: no object, or a deleted one) and its sequence (0: no message)."""

    meta: dict[str, object] | None = None
    seq: int = 0

    def holds(self, ref: PayloadRef) -> bool:
        """True if this is a live object of `ref`'s size."""
        return self.meta is not None and self.meta.get("size") == ref.size


def _parse_meta(data: bytes | None) -> dict[str, object] | None:
    try:
        meta = json.loads(data or b"{}")
    except ValueError:
        return None
    return None if not isinstance(meta, dict) or meta.get("deleted") else meta


async def stored(conn: Connection, name: str) -> Stored:
    """The object's meta as the stream leader has it (the newest: for decisions that write)."""
    try:
        async with nats_errors(conn.settings):
            msg = await conn.js.get_msg(STREAM_NAME, subject=payload_meta_subject(name))
    except nats.js.errors.NotFoundError:  # no such object, or no bucket yet
        return Stored()
    return Stored(_parse_meta(msg.data), msg.seq or 0)


async def read_meta(conn: Connection, name: str) -> dict[str, object] | None:
    """The object's meta record, None if there is none (or it was deleted, or there is no bucket)."""
    return (await stored(conn, name)).meta


def keep_until(meta: dict[str, object]) -> float:
    """Unix seconds before which the sweep keeps this object (0 when unknown)."""
    headers = meta.get("headers")
    values = headers.get(KEEP_UNTIL_HEADER) if isinstance(headers, dict) else None
    try:
        return float(values[0]) if isinstance(values, list) and values else 0.0
    except (TypeError, ValueError):
        return 0.0


def _meta(ref: PayloadRef, nuid: str, chunks: int, chunk_bytes: int, until: float) -> dict[str, object]:
    digest = base64.urlsafe_b64encode(bytes.fromhex(ref.digest)).decode()
    return {"name": ref.name, "bucket": PAYLOAD_BUCKET_NAME, "nuid": nuid, "size": ref.size, "chunks": chunks,
            "mtime": datetime.now(UTC).isoformat(), "digest": f"SHA-256={digest}",
            "headers": {KEEP_UNTIL_HEADER: [f"{until:.3f}"]}, "options": {"max_chunk_size": chunk_bytes}}


async def write_meta(conn: Connection, name: str, meta: dict[str, object], over: int) -> bool:
    """Write `meta` for `name` only over the meta message of sequence `over` (0: none); False if another came first."""
    try:
        await publish(conn, payload_meta_subject(name), json.dumps(meta).encode(),
                      headers={ROLLUP_HEADER: "sub", EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: str(over)})
    except nats.js.errors.APIError as e:
        if is_wrong_last_sequence(e):
            return False
        raise
    return True


async def store(conn: Connection, ref: PayloadRef, view: memoryview, keep_s: float) -> bool:
    """Store `view` as `ref` unless it exists (then only its keep-until is extended); True if written.

    On any failure (a full store is RefusedError) the chunks written so far are purged: no
    partial object is left, and none is ever visible, since the meta is written last. Every meta
    write is checked against the meta it looked up: a writer that lost a race to another (the same
    value uploaded twice at once, or a sweep deleting it) looks again.
    """
    until = time.time() + keep_s
    await ensure_bucket(conn)
    for _ in range(_STORE_ATTEMPTS):
        written = await _store_once(conn, ref, view, until)
        if written is not None:
            return written
    raise ConflictError(f"payload {ref.name} changed {_STORE_ATTEMPTS} times while it was being stored")


async def _store_once(conn: Connection, ref: PayloadRef, view: memoryview, until: float) -> bool | None:
    """One attempt of `store`: True written, False there already (kept long enough), None lost a race."""
    # first, not beside the chunks: that measured within noise at 1 MB (<= 0.2 ms) and sends a stored value again
    found = await stored(conn, ref.name)
    if found.holds(ref):
        return await _keep(conn, ref, found, until)
    nuid = os.urandom(11).hex()
    subject = payload_chunk_subject(nuid)
    step = min(CHUNK_BYTES, conn.max_payload // 2)
    chunks = [(subject, view[i:i + step], None, None) for i in range(0, ref.size, step)]
    try:
        await publish_many(conn, chunks, transfer_timeout_s(ref.size),  # type: ignore[arg-type]  # no copies
                           window=max(2, IN_FLIGHT_BYTES // step))
        if await write_meta(conn, ref.name, _meta(ref, nuid, len(chunks), step, until), over=found.seq):
            logger.debug("stored payload %s (%d bytes)", ref.name, ref.size)
            return True
    except BaseException as e:
        await asyncio.shield(_purge_subject(conn, subject))
        if isinstance(e, RefusedError):
            raise RefusedError(f"the payload store {PAYLOAD_BUCKET_NAME} refused {ref.name} ({ref.size:,} bytes): "
                               f"{e}") from None
        raise
    await asyncio.shield(_purge_subject(conn, subject))  # another writer's meta came first: that object stays
    return None


async def _keep(conn: Connection, ref: PayloadRef, found: Stored, until: float) -> bool | None:
    """Extend an existing object's keep-until to `until`: False when done (or not needed), None if its meta changed."""
    meta = found.meta or {}
    if keep_until(meta) >= until:
        return False
    headers = meta.get("headers") if isinstance(meta.get("headers"), dict) else {}
    extended = {**meta, "headers": {**headers, KEEP_UNTIL_HEADER: [f"{until:.3f}"]},  # type: ignore[dict-item]
                "mtime": datetime.now(UTC).isoformat()}
    return False if await write_meta(conn, ref.name, extended, over=found.seq) else None


async def _purge_subject(conn: Connection, subject: str) -> None:
    try:
        async with nats_errors(conn.settings):
            await conn.js.purge_stream(STREAM_NAME, subject=subject)
    except Exception as e:  # the chunks stay unreachable (no meta points at them); the sweep drops them
        logger.warning("payload chunks %s not purged: %s", subject, e)


Buffer = bytearray | mmap.mmap


def _allocate(size: int) -> Buffer:
    """A writable zeroed buffer; large ones are anonymous maps (no memset: the kernel maps zero pages lazily)."""
    return mmap.mmap(-1, size) if size >= _MMAP_MIN_BYTES else bytearray(size)


async def fetch(conn: Connection, ref: PayloadRef) -> Buffer:
    """The object's bytes, read into one preallocated buffer; SerializationError if missing or corrupt."""
    msg = await direct_get.last_message(conn, STREAM_NAME, payload_meta_subject(ref.name))
    meta = _parse_meta(msg.data) if msg is not None else None
    if meta is None:  # not on the replica that answered (a cluster may lag), or no direct gets: ask the leader
        meta = await read_meta(conn, ref.name)
    if meta is None:
        raise SerializationError(f"payload {ref.name} ({ref.size:,} bytes) is missing from the store")
    nuid, chunks = meta.get("nuid"), meta.get("chunks")
    if meta.get("size") != ref.size or not isinstance(nuid, str) or not isinstance(chunks, int):
        raise SerializationError(f"payload {ref.name}: stored size {meta.get('size')} is not {ref.size}")
    buf = _allocate(ref.size)
    digest = hashlib.sha256().hexdigest()
    if ref.size:
        digest = await read_chunks(conn, payload_chunk_subject(nuid), memoryview(buf), chunks)
    if digest != ref.digest:
        raise SerializationError(f"payload {ref.name} is corrupt: its content has digest sha256-{digest}")
    return buf


async def delete(conn: Connection, name: str, *, expired_by: float | None = None) -> bool:
    """Remove an object (meta tombstone, then its chunks); False if it was not there.

    `expired_by` (unix seconds): only if its keep-until is not later. Also False when its meta
    changed between the read and the tombstone (uploaded again meanwhile: that write wins).
    """
    found = await stored(conn, name)
    if found.meta is None or (expired_by is not None and keep_until(found.meta) > expired_by):
        return False
    nuid = found.meta.get("nuid")
    if not await write_meta(conn, name, {**found.meta, "deleted": True, "size": 0, "chunks": 0, "digest": ""},
                            over=found.seq):
        return False
    if isinstance(nuid, str):
        await _purge_subject(conn, payload_chunk_subject(nuid))
    logger.info("deleted payload %s", name)
    return True


async def stored_subjects(conn: Connection, kind: str) -> list[str]:
    """The subjects holding messages in the bucket: `kind` "M" (metas) or "C" (chunks); none without a bucket."""
    try:
        async with nats_errors(conn.settings):
            info = await conn.js.stream_info(STREAM_NAME, subjects_filter=payload_subjects(kind))
    except nats.js.errors.NotFoundError:  # no bucket yet (it is made on first upload): nothing stored
        return []
    return list(info.state.subjects or {})


async def list_objects(conn: Connection) -> dict[str, dict[str, object]]:
    """Every live object's meta record, by name (one pass over the meta subjects)."""
    found: dict[str, dict[str, object]] = {}
    for subject in await stored_subjects(conn, "M"):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            async with nats_errors(conn.settings):
                msg = await conn.js.get_msg(STREAM_NAME, subject=subject)
            with contextlib.suppress(ValueError):
                meta = json.loads(msg.data or b"{}")
                if isinstance(meta, dict) and not meta.get("deleted") and isinstance(meta.get("name"), str):
                    found[str(meta["name"])] = meta
    return found


async def stored_bytes(conn: Connection) -> int:
    """Bytes the payload bucket holds right now (0 if it does not exist yet)."""
    try:
        async with nats_errors(conn.settings):
            info = await conn.js.stream_info(STREAM_NAME)
    except nats.js.errors.NotFoundError:
        return 0
    return int(info.state.bytes or 0)
