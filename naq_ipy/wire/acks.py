"""JetStream publish acks of one connection on one wildcard subscription: a future per publish, no timer each.

nats-py's `js.publish` is a request: a new token, a future, a `wait_for` timer and a dataclass
parse of the ack per message, which is most of a worker's cost per status write. Here each
publish carries the reply subject `<inbox>.<n>`, one subscription resolves the futures, and one
sweep a second fails those waiting longer than their timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import OrderedDict

import nats.errors
import nats.js.errors
from nats.aio.client import NO_RESPONDERS_STATUS, Client
from nats.aio.msg import Msg
from nats.js import api

SWEEP_S = 1.0


class AckInbox:
    """Publishes to JetStream and waits for each ack; made lazily on the connection's own loop."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._tokens = itertools.count()
        self._waiting: OrderedDict[str, tuple[asyncio.Future[api.PubAck], float]] = OrderedDict()
        self._subscribed: asyncio.Future[None] | None = None
        self._sweep: asyncio.TimerHandle | None = None

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None, timeout_s: float) -> api.PubAck:
        """Publish and return the stream's ack; APIError (or NoStreamResponseError) as `js.publish` raises them,
        nats.errors.TimeoutError after `timeout_s`."""
        failed = self._subscribed is not None and self._subscribed.done() and (
            self._subscribed.cancelled() or self._subscribed.exception() is not None)
        if self._subscribed is None or failed:  # a subscribe that failed (a closed connection) is tried again
            self._subscribed = asyncio.ensure_future(self._subscribe())
        if not self._subscribed.done():  # shielded: a first publish cancelled here must not cancel it for all
            await asyncio.shield(self._subscribed)
        loop = asyncio.get_running_loop()
        token = str(next(self._tokens))
        future: asyncio.Future[api.PubAck] = loop.create_future()
        self._waiting[token] = (future, loop.time() + timeout_s)
        if self._sweep is None:
            self._sweep = loop.call_later(SWEEP_S, self._expire)
        try:
            await self._nc.publish(subject, data, reply=f"{self._prefix}.{token}", headers=headers)
            return await future
        finally:
            self._waiting.pop(token, None)

    async def _subscribe(self) -> None:
        await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject[len(self._prefix) + 1:], None)
        if entry is None or entry[0].done():
            return
        future = entry[0]
        if msg.headers and msg.headers.get(api.Header.STATUS) == NO_RESPONDERS_STATUS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            ack = json.loads(msg.data)
            if "error" in ack:
                nats.js.errors.APIError.from_error(ack["error"])  # raises the matching APIError
            future.set_result(api.PubAck(stream=ack["stream"], seq=ack["seq"], domain=ack.get("domain"),
                                         duplicate=ack.get("duplicate")))
        except (nats.js.errors.APIError, ValueError, KeyError, TypeError) as e:
            future.set_exception(e if isinstance(e, nats.js.errors.APIError) else nats.js.errors.APIError(
                description=f"unreadable publish ack: {msg.data[:200]!r}"))

    def _expire(self) -> None:
        """Fail the publishes past their deadline (oldest first), then look again in a second while any wait."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for token, (future, deadline) in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[token]
                if not future.done():
                    future.set_exception(nats.errors.TimeoutError())
        if self._waiting:
            self._sweep = loop.call_later(SWEEP_S, self._expire)
