"""Live workers (heartbeats in KV `naq_workers`, each living 3 heartbeats), read from the client side.

Every heartbeat is checked by one strict decoder (`read_heartbeat`). A job queued where no live
worker serves its queue will not move: `idle_queue_hint` says so.
"""

from __future__ import annotations

import logging
from typing import Any

from naq_ipy.errors import SerializationError
from naq_ipy.rules.records import TIMESTAMP, decode_checked, flag, integer, optional, text, text_list
from naq_ipy.wire import names
from naq_ipy.wire.connection import get_connection, nats_errors
from naq_ipy.wire.settings import KEY_MAX, QUEUE_NAME_MAX, ConnectionSettings

logger = logging.getLogger(__name__)

_COUNT = integer(0, 2**53)
_HEARTBEAT_SPEC = {
    "worker_id": text(KEY_MAX), "host": text(255), "pid": _COUNT, "queues": text_list(QUEUE_NAME_MAX),
    "concurrency": _COUNT, "process_pool": flag, "current_jobs": text_list(KEY_MAX, 100_000),
    "waiting_jobs": text_list(KEY_MAX, 100_000), "processed": _COUNT, "failed": _COUNT,
    "started_at": optional(TIMESTAMP), "heartbeat_at": TIMESTAMP,
}


def read_heartbeat(raw: bytes) -> dict[str, Any]:
    """A stored heartbeat record, strictly checked; SerializationError for anything malformed."""
    return decode_checked(raw, _HEARTBEAT_SPEC, "corrupt heartbeat", frozenset({"worker_id", "heartbeat_at"}),
                          max_bytes=16 << 20)


async def list_workers(url: str | ConnectionSettings | None = None) -> list[dict[str, Any]]:
    """The heartbeat records of all live workers, by worker id."""
    conn = await get_connection(url)
    kv = await conn.kv(names.WORKERS_KV_NAME)
    workers: list[dict[str, Any]] = []
    async with nats_errors(conn.settings):
        watcher = await kv.watchall(ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.value and entry.operation is None:
                    try:
                        workers.append(read_heartbeat(entry.value))
                    except SerializationError as e:
                        logger.warning("skipping heartbeat %r: %s", entry.key, e)
        finally:
            await watcher.stop()
    return sorted(workers, key=lambda w: str(w.get("worker_id")))


async def queue_served(queue_name: str, url: str | ConnectionSettings | None = None) -> bool:
    """True if a live worker serves `queue_name`."""
    return any(queue_name in (w.get("queues") or ()) for w in await list_workers(url))


def idle_queue_hint(queue_name: str) -> str:
    """What to say about a job waiting on a queue no live worker serves."""
    return f"no worker serves queue '{queue_name}' — start one with `%naq worker start -q {queue_name}`"
