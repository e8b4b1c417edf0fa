"""A durable pull consumer's messages handed over one by one as they arrive, for pull requests of any size.

nats-py's `fetch` waits for each message of a batch with its own task and timer and returns the
batch only when it is complete or timed out. Here one subscription takes the replies of every
pull request and hands each job message to `on_message` at once; a pull ends when its batch is
delivered, when the server says it expired (408) or had nothing (404), or when it is cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.js import api

from naq_ipy.errors import NaqConnectionError
from naq_ipy.wire.connection import Connection

ANSWER_GRACE_S = 1.0  # how long past its expiry a pull may go unanswered (a lost connection) before it ends
_DONE_STATUSES = {"404", "408"}  # no messages / request expired: the pull simply ends
_HEARTBEAT_STATUS = "100"


class PullFeed:
    """Pulls of the durable consumer `durable` on `stream`; every job message goes to `on_message`."""

    def __init__(self, conn: Connection, stream: str, durable: str, on_message: Callable[[Msg], None]) -> None:
        self._conn = conn
        self._subject = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._on_message = on_message
        self._inbox = conn.nc.new_inbox()
        self._tokens = itertools.count()
        self._token = ""  # of the pull in progress
        self._wanted = self._received = 0
        self._ended: asyncio.Future[str | None] | None = None
        self._sub: object | None = None

    async def pull(self, batch: int, expires_s: float) -> int:
        """Ask for up to `batch` messages, waiting at most `expires_s` for them; how many came (each was
        handed over as it came). NaqConnectionError when the server refuses the pull (a deleted consumer)."""
        if self._sub is None:
            self._sub = await self._conn.nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        loop = asyncio.get_running_loop()
        self._token, self._wanted, self._received = str(next(self._tokens)), batch, 0
        self._ended = ended = loop.create_future()
        request = json.dumps({"batch": batch, "expires": int(expires_s * 1e9)}).encode()
        await self._conn.nc.publish(self._subject, request, reply=f"{self._inbox}.{self._token}")
        try:
            problem = await asyncio.wait_for(ended, expires_s + ANSWER_GRACE_S)
        except TimeoutError:
            problem = None  # unanswered (a reconnect lost the request): the next pull asks again
        finally:
            self._token = ""
        if problem:
            raise NaqConnectionError(f"pull from {self._subject} refused: {problem}")
        return self._received

    def cancel(self) -> None:
        """End the pull in progress now (a stop); messages still arriving are handed over all the same."""
        self._end(None)

    async def close(self) -> None:
        """Stop taking replies."""
        self.cancel()
        if self._sub is not None:
            await self._sub.unsubscribe()  # type: ignore[attr-defined]
            self._sub = None

    def _end(self, problem: str | None) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(problem)

    async def _on_reply(self, msg: Msg) -> None:
        status = msg.headers.get(api.Header.STATUS) if msg.headers else None
        if status is None:  # a job message (its subject is its queue's): counted for the pull in progress
            self._on_message(msg)  # handed over even after its pull ended: it is ours to settle
            self._received += 1
            if self._received >= self._wanted:
                self._end(None)
        elif status != _HEARTBEAT_STATUS and self._token and msg.subject == f"{self._inbox}.{self._token}":
            description = msg.headers.get(api.Header.DESCRIPTION, "") if msg.headers else ""
            self._end(None if status in _DONE_STATUSES else f"{status} {description}".strip())
