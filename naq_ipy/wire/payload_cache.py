"""Objects of the payload store read by this process: a bounded LRU cache, and one read per object at a time.

Workers read a value shared by many jobs (a fan-out) once per process; the buffers are shared, so
callers hand them out read-only.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from naq_ipy.wire.connection import Connection
from naq_ipy.wire.payloads import Buffer, PayloadRef, fetch


class PayloadCache:
    """Objects read by this process, by name, up to `max_bytes` in total (least recently used go first)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[str, Buffer] = OrderedDict()

    def get(self, name: str) -> Buffer | None:
        """The cached object, now the most recently used; None if not cached."""
        found = self._items.get(name)
        if found is not None:
            self._items.move_to_end(name)
        return found

    def put(self, name: str, value: Buffer) -> None:
        """Keep `value` (unless larger than the whole cache), dropping the least recently used beyond the bound."""
        if len(value) > self.max_bytes or name in self._items:
            return
        self._items[name] = value
        self.size += len(value)
        while self.size > self.max_bytes:
            self.size -= len(self._items.popitem(last=False)[1])


_caches: dict[int, PayloadCache] = {}
_reading: dict[tuple[int, str], asyncio.Future[Buffer]] = {}  # reads in flight, by (loop, name)


async def fetch_cached(conn: Connection, ref: PayloadRef) -> Buffer:
    """`fetch` through this process's cache (bounded by `payload_cache_bytes`); one read per object at a time.

    Callers share the returned buffer: hand it out read-only.
    """
    limit = conn.settings.payload_cache_bytes
    cache = _caches.setdefault(limit, PayloadCache(limit))
    found = cache.get(ref.name)
    if found is not None:
        return found
    key = (id(asyncio.get_running_loop()), ref.name)
    pending = _reading.get(key)
    if pending is not None:
        return await asyncio.shield(pending)
    future = asyncio.ensure_future(fetch(conn, ref))
    _reading[key] = future
    try:
        value = await asyncio.shield(future)
    finally:
        if _reading.get(key) is future:
            del _reading[key]
    cache.put(ref.name, value)
    return value
