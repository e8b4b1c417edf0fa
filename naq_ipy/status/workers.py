"""Live workers (heartbeats in KV `naq_workers`, each living 3 heartbeats), read from the client side.

A job queued where no live worker serves its queue will not move: `idle_queue_hint` says so.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from naq_ipy.wire import settings as names
from naq_ipy.wire.connection import get_connection, nats_errors
from naq_ipy.wire.settings import ConnectionSettings

logger = logging.getLogger(__name__)


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
                        workers.append(json.loads(entry.value))
                    except ValueError:
                        logger.warning("skipping corrupt heartbeat %r", entry.key)
        finally:
            await watcher.stop()
    return sorted(workers, key=lambda w: str(w.get("worker_id")))


async def queue_served(queue_name: str, url: str | ConnectionSettings | None = None) -> bool:
    """True if a live worker serves `queue_name`."""
    return any(queue_name in (w.get("queues") or ()) for w in await list_workers(url))


def idle_queue_hint(queue_name: str) -> str:
    """What to say about a job waiting on a queue no live worker serves."""
    return f"no worker serves queue '{queue_name}' — start one with `%naq worker start -q {queue_name}`"
