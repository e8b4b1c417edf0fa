"""Reading a payload object's chunks into one buffer, hashed as they come (see naq_ipy.wire.payloads).

Two ways, by size (measured on a 2-core machine, loopback): up to `DIRECT_READ_MAX_BYTES` one
batched direct get (no consumer to create: 0.1-0.4 ms less per object); larger objects through one
ordered consumer, which the server feeds continuously under flow control, while a direct get
is staged whole on the server before its first message goes out (windows of 4 MiB read a 100 MB
object ~15% slower). Either way a chunk missing at the end is known from the server's answer
(a direct get's end of batch, a consumer's pending count), not from a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import nats.js.errors
from nats.aio.msg import Msg

from naq_ipy.errors import NaqConnectionError, SerializationError
from naq_ipy.wire import direct_get
from naq_ipy.wire.connection import Connection, nats_errors
from naq_ipy.wire.names import PAYLOAD_STREAM_NAME

DIRECT_READ_MAX_BYTES = 4 * 2**20
_MIN_RATE = 20 * 2**20  # bytes/s a transfer may not fall below before it times out


def transfer_timeout_s(size: int) -> float:
    """Seconds a transfer of `size` bytes may take."""
    return 10.0 + size / _MIN_RATE


class _ChunkSink:
    """Chunks copied in order into one buffer and hashed as they come; SerializationError past its end."""

    def __init__(self, subject: str, view: memoryview, chunks: int) -> None:
        self.subject = subject
        self.view = view
        self.chunks = chunks
        self.sha = hashlib.sha256()  # on the loop: a hashing thread measured slower here (GIL hand-offs, 2 cores)
        self.pos = 0
        self.count = 0

    def add(self, data: bytes) -> None:
        pos = self.pos
        if pos + len(data) > len(self.view):
            raise SerializationError(f"payload chunks on {self.subject} exceed its size")
        self.view[pos:pos + len(data)] = data
        self.sha.update(data)
        self.pos, self.count = pos + len(data), self.count + 1

    @property
    def complete(self) -> bool:
        return self.count >= self.chunks

    def digest(self) -> str:
        """The hex SHA-256 of what was read; SerializationError if chunks are missing."""
        if self.pos != len(self.view) or self.count != self.chunks:
            raise SerializationError(f"payload chunks on {self.subject} are incomplete ({self.pos:,} of "
                                     f"{len(self.view):,} bytes)")
        return self.sha.hexdigest()


async def read_chunks(conn: Connection, subject: str, view: memoryview, chunks: int) -> str:
    """Copy the `chunks` chunks on `subject` into `view` in order; the hex SHA-256 of what was read.

    SerializationError if there are fewer or they overflow `view`; NaqConnectionError on a timeout.
    """
    sink = _ChunkSink(subject, view, chunks)
    if len(view) <= DIRECT_READ_MAX_BYTES:
        await _read_direct(conn, sink)
    else:
        await _read_streamed(conn, sink)
    return sink.digest()


async def _read_direct(conn: Connection, sink: _ChunkSink) -> None:
    last_seq = await direct_get.read_subject(conn, PAYLOAD_STREAM_NAME, sink.subject, sink.chunks, sink.add,
                                             transfer_timeout_s(len(sink.view)))
    while not sink.complete:  # a replica behind the leader, or a bucket without direct gets: the rest, one by one
        try:
            async with nats_errors(conn.settings):
                msg = await conn.js.get_msg(PAYLOAD_STREAM_NAME, seq=last_seq + 1, subject=sink.subject, next=True)
        except nats.js.errors.NotFoundError:
            return
        sink.add(msg.data or b"")
        last_seq = msg.seq or last_seq + 1


async def _read_streamed(conn: Connection, sink: _ChunkSink) -> None:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_chunk(msg: Msg) -> None:
        if done.done():
            return
        try:
            sink.add(msg.data)
        except SerializationError as e:
            done.set_exception(e)
            return
        if sink.complete or msg.metadata.num_pending == 0:  # all there, or the last one on the subject came
            done.set_result(None)

    async with nats_errors(conn.settings):
        sub = await conn.js.subscribe(sink.subject, stream=PAYLOAD_STREAM_NAME, cb=on_chunk, ordered_consumer=True,
                                      pending_msgs_limit=-1, pending_bytes_limit=-1)  # stream named: no lookup
    try:
        await asyncio.wait_for(done, transfer_timeout_s(len(sink.view)))
    except TimeoutError:
        raise NaqConnectionError(f"reading payload chunks {sink.subject} timed out "
                                 f"({sink.pos:,} of {len(sink.view):,} bytes)") from None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
