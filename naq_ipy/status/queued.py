"""Jobs waiting in the queues: their headers read from the jobs stream by sequence, oldest first.

A work-queue stream allows no consumer beside the workers' own (filters may not overlap), so its
messages are read with message gets, `WINDOW` in flight at a time; a sequence acked meanwhile is
skipped. Messages held by a worker (running, or waiting for dependencies) are still in the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats.js.errors

from naq_ipy.client.job import read_header
from naq_ipy.errors import SerializationError
from naq_ipy.wire.connection import Connection, nats_errors
from naq_ipy.wire.names import JOB_STREAM_NAME

WINDOW = 256  # message gets in flight at once


async def queued_headers(conn: Connection, window: int = WINDOW) -> AsyncIterator[dict[str, Any]]:
    """The job header of every message in the jobs stream, oldest first (unreadable messages skipped).

    `window`: message gets in flight at once (a reader that wants only the first few asks for fewer).
    """
    async with nats_errors(conn.settings):
        try:
            state = (await conn.js.stream_info(JOB_STREAM_NAME)).state
        except nats.js.errors.NotFoundError:
            return
    if not state.messages:
        return
    for start in range(state.first_seq, state.last_seq + 1, window):
        seqs = range(start, min(start + window, state.last_seq + 1))
        async with nats_errors(conn.settings):
            got = await asyncio.gather(*(conn.js.get_msg(JOB_STREAM_NAME, seq) for seq in seqs),
                                       return_exceptions=True)
        for msg in got:
            if isinstance(msg, nats.js.errors.NotFoundError):
                continue  # acked (and so deleted) since the stream's state was read
            if isinstance(msg, BaseException):
                raise msg
            try:
                yield read_header(msg.data or b"")[0]
            except SerializationError:
                continue  # not a naq job: nothing to show or cancel in it


async def find_queued(conn: Connection, wanted: set[str]) -> set[str]:
    """Those of the job ids `wanted` whose message is in the jobs stream (stops once all were seen)."""
    found: set[str] = set()
    if not wanted:
        return found
    async for header in queued_headers(conn):
        if header.get("job_id") in wanted:
            found.add(header["job_id"])
            if found == wanted:
                break
    return found
