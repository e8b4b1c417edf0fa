"""Stored messages read without a consumer: JetStream direct gets (nats-server >= 2.11, `allow_direct` streams).

One request names a subject and the server answers with its messages in sequence order on one
inbox, ending the batch with an empty `204` status message; there is no consumer to create or
delete. The server sends a batch without flow control, so a long read is cut into windows of
`WINDOW_BYTES`, and a connection has at most `WINDOWS_IN_FLIGHT` windows open (the server drops a
client that falls 64 MB behind).

Any replica of a stream answers a direct get, so on a cluster a read may miss the newest writes:
callers that must see a write go to the leader (`STREAM.MSG.GET`) when a direct read comes back short.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from naq_ipy.errors import NaqConnectionError
from naq_ipy.wire.connection import Connection, nats_errors
from naq_ipy.wire.names import (
    END_OF_BATCH_STATUS,
    NUM_PENDING_HEADER,
    SEQUENCE_HEADER,
    STATUS_HEADER,
    direct_get_subject,
)

WINDOW_BYTES = 4 * 2**20
WINDOWS_IN_FLIGHT = 8  # per connection: at most ~36 MB sent ahead of what the client has read
REQUEST_TIMEOUT_S = 5.0

_windows: weakref.WeakKeyDictionary[Client, asyncio.Semaphore] = weakref.WeakKeyDictionary()


async def last_message(conn: Connection, stream: str, subject: str) -> Msg | None:
    """The last message on `subject` (one round trip); None if this replica has none, or the stream no direct gets."""
    try:
        async with nats_errors(conn.settings):
            msg = await conn.nc.request(direct_get_subject(stream, subject), b"", timeout=REQUEST_TIMEOUT_S)
    except nats.errors.NoRespondersError:  # allow_direct is off for this stream
        return None
    return None if msg.headers and msg.headers.get(STATUS_HEADER) else msg


async def read_subject(conn: Connection, stream: str, subject: str, count: int, on_data: Callable[[bytes], None],
                       timeout_s: float) -> int:
    """Hand the data of the first `count` messages on `subject` to `on_data`, in order; the last sequence read.

    0 if none was read. A read stops short when this replica holds fewer messages or the stream has
    no direct gets: the caller reads the rest from the leader, after that sequence. An error
    `on_data` raises ends the read; NaqConnectionError when it takes longer than `timeout_s`.
    """
    reader = _SubjectReader(conn, stream, subject, count, on_data)
    return await reader.run(timeout_s)


class _SubjectReader:
    """One read: a window at a time, each one batched direct get of up to `WINDOW_BYTES` on one inbox."""

    def __init__(self, conn: Connection, stream: str, subject: str, count: int,
                 on_data: Callable[[bytes], None]) -> None:
        self.conn = conn
        self.stream = stream
        self.subject = subject
        self.count = count
        self.on_data = on_data
        self.read = 0
        self.last_seq = 0
        self.more = True  # the server has more messages on the subject than it sent so far
        self.window: asyncio.Future[None] | None = None

    async def run(self, timeout_s: float) -> int:
        nc = self.conn.nc
        inbox = nc.new_inbox()
        windows = _windows.setdefault(nc, asyncio.Semaphore(WINDOWS_IN_FLIGHT))
        async with nats_errors(self.conn.settings):
            sub = await nc.subscribe(inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
        try:
            async with asyncio.timeout(timeout_s):
                while self.read < self.count and self.more:
                    async with windows:
                        self.window = asyncio.get_running_loop().create_future()
                        request = {"batch": self.count - self.read, "seq": self.last_seq + 1,
                                   "next_by_subj": self.subject, "max_bytes": WINDOW_BYTES}
                        await nc.publish(direct_get_subject(self.stream), json.dumps(request).encode(), reply=inbox)
                        await self.window
        except TimeoutError:
            raise NaqConnectionError(f"reading {self.subject} from NATS at {self.conn.settings.safe_url} timed out "
                                     f"({self.read} of {self.count} messages)") from None
        finally:
            await sub.unsubscribe()
        return self.last_seq

    async def _on_msg(self, msg: Msg) -> None:
        window = self.window
        if window is None or window.done():
            return
        headers = msg.headers or {}
        status = headers.get(STATUS_HEADER)
        if status is None:
            if self.read < self.count:
                try:
                    self.on_data(msg.data)
                except Exception as e:
                    window.set_exception(e)
                    return
                self.read += 1
                self.last_seq = int(headers.get(SEQUENCE_HEADER, self.last_seq))
            return
        # the end of a window (and how many are left), or: 404 nothing more, 503 no direct gets, 408 refused
        self.more = status == END_OF_BATCH_STATUS and int(headers.get(NUM_PENDING_HEADER) or 0) > 0
        window.set_result(None)
