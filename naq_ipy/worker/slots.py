"""A worker's execution slots: taken in order, handed straight to the next waiter, refused once stopping.

An `asyncio.Semaphore` raced against the stop event costs two tasks per wait; a waiter here is one
future, and `close()` fails every waiter at once.
"""

from __future__ import annotations

import asyncio
from collections import deque


class SlotsClosed(Exception):
    """The worker began to stop while a job waited for a slot."""


class Slots:
    """`size` execution slots."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.taken = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def take(self) -> None:
        """Take a slot, waiting in line for one; SlotsClosed once `close()` was called."""
        if self._closed:
            raise SlotsClosed
        if self.taken < self.size and not self._waiters:
            self.taken += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # `release` hands its slot over: `taken` stays as it is
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # handed over just as this waiter was cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter, else to the free ones."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.taken -= 1

    def close(self) -> None:
        """Refuse every waiter and every later `take` (SlotsClosed); slots held stay held until released."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(SlotsClosed())
