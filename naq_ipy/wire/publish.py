"""Publish many messages to JetStream pipelined, their acks collected on one inbox subscription.

nats-py's `publish_async` spends most of its time per message on a semaphore, a future, a token
and a done-callback. Here every message carries a reply subject `<inbox>.<index>` and one
wildcard subscription counts the acks into a list: one task for the whole batch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

import nats.js.errors
from nats.aio.client import NO_RESPONDERS_STATUS
from nats.aio.msg import Msg
from nats.js import api

from naq_ipy.errors import NaqConnectionError, RefusedError
from naq_ipy.wire.connection import (
    PUBLISH_TIMEOUT_S,
    Connection,
    check_payload,
    message_headers,
    nats_errors,
)

WINDOW = 4096  # publishes awaiting their ack at most (nats-py's publish_async allows 4000)

Message = tuple[str, bytes, str | None, dict[str, str] | None]


async def publish_many(conn: Connection, messages: Iterable[Message], timeout_s: float | None = None,
                       window: int = WINDOW) -> None:
    """Publish many (subject, data, msg_id, headers), pipelined; returns when every one is acked.

    Every payload is size-checked before the first is sent. A stream deleted under us is
    recreated once and the whole batch re-sent: message ids make the re-sent duplicates no-ops.
    Messages the server refused to store raise RefusedError with their indexes; the others are stored.
    `timeout_s`: for the whole batch (default: 5 s plus 1 ms per message); `window`: unacked messages at most.
    """
    batch = [(subject, data, message_headers(msg_id, headers)) for subject, data, msg_id, headers in messages]
    for _, data, hdrs in batch:
        check_payload(conn, data, headers=hdrs)
    if not batch:
        return
    async with nats_errors(conn.settings):
        try:
            await _AckedBatch(conn, batch, timeout_s, window).send()
        except nats.js.errors.NoStreamResponseError:
            if not await conn.recreate_stream_for(batch[0][0]):
                raise
            await _AckedBatch(conn, batch, timeout_s, window).send()


class _AckedBatch:
    """One pipelined send: at most `window` messages in flight; refusals raised once all were answered."""

    def __init__(self, conn: Connection, batch: list[tuple[str, bytes, dict[str, str] | None]],
                 timeout_s: float | None = None, window: int = WINDOW) -> None:
        self.conn = conn
        self.batch = batch
        self.window = window
        # the whole batch has one deadline, as long as its slowest part may need
        self.timeout_s = PUBLISH_TIMEOUT_S + len(batch) / 1000 if timeout_s is None else timeout_s
        self.inbox = conn.nc.new_inbox()
        self.acked = 0
        self.refused: dict[int, str] = {}
        self.no_stream = False
        self.wakeup: asyncio.Future[None] | None = None
        self.wake_at = 0

    async def send(self) -> None:
        nc = self.conn.nc
        sub = await nc.subscribe(f"{self.inbox}.*", cb=self._on_ack)
        try:
            async with asyncio.timeout(self.timeout_s):
                for index, (subject, data, hdrs) in enumerate(self.batch):
                    if index - self.acked >= self.window:
                        await self._acked_up_to(index - self.window // 2)
                    if self.no_stream:
                        break
                    await nc.publish(subject, data, reply=f"{self.inbox}.{index}", headers=hdrs)
                await self._acked_up_to(len(self.batch))
        except TimeoutError:
            raise NaqConnectionError(f"NATS at {self.conn.settings.safe_url} did not ack "
                                     f"{len(self.batch) - self.acked} of {len(self.batch)} messages in time") from None
        finally:
            await sub.unsubscribe()
        if self.no_stream:
            raise nats.js.errors.NoStreamResponseError
        if self.refused:
            first = self.refused[min(self.refused)]
            raise RefusedError(f"NATS at {self.conn.settings.safe_url} refused {len(self.refused)} of "
                               f"{len(self.batch)} messages ({first})",
                               refused=sorted(self.refused))

    async def _acked_up_to(self, count: int) -> None:
        """Wait until `count` acks arrived (or the batch failed)."""
        if self.acked >= count or self.no_stream:
            return
        self.wake_at = count
        self.wakeup = asyncio.get_running_loop().create_future()
        await self.wakeup

    async def _on_ack(self, msg: Msg) -> None:
        if msg.headers and msg.headers.get(api.Header.STATUS) == NO_RESPONDERS_STATUS:
            self.no_stream = True
        elif b'"error"' in msg.data:
            error = json.loads(msg.data).get("error") or {}
            self.refused[int(msg.subject[len(self.inbox) + 1:])] = error.get("description") or str(error)
        self.acked += 1
        if self.wakeup is not None and not self.wakeup.done() and (self.acked >= self.wake_at or self.no_stream):
            self.wakeup.set_result(None)
